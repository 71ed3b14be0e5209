"""Prefect flows: each composes tasks from `radcap.tasks` and nothing else."""

# One name per file: this folder installs as radcap.flows (pyproject.toml); imported as
# `flows` from the repository root, every module in it would load again under a second name.
if __name__ != "radcap.flows":
    raise ImportError(f"import radcap.flows, not {__name__} (the folder installs under radcap's namespace)")
