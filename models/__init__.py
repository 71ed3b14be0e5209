"""Keras models and decoding; free of Prefect."""

# One name per file: this folder installs as radcap.models (pyproject.toml); run from the repository root it would
# also import as `models`, a second copy of every module in it.
if __name__ != "radcap.models":
    raise ImportError(f"import radcap.models, not {__name__} (the folder installs under radcap's namespace)")

