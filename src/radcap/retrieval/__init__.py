"""Contrastive image-report retrieval: the dual encoder, its training, the embedding index, recall, search."""
