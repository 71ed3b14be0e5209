"""Keras models and decoding; free of Prefect."""

# One name per file: this folder installs as radcap.models (pyproject.toml); imported as
# `models` from the repository root, every module in it would load again under a second name.
if __name__ != "radcap.models":
    raise ImportError(f"import radcap.models, not {__name__} (the folder installs under radcap's namespace)")
