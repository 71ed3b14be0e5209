"""Knowing what a model does not know: the out-of-domain guard a captioner or retriever carries."""
