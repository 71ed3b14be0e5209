"""Scores of generated reports: caption metrics (BLEU, METEOR, ROUGE-L, CIDEr), CIDEr-D as reward and utility, clinical
correctness, the paired bootstrap."""
