"""Keras models and decoding; free of Prefect."""
