"""Prefect flows: each composes tasks from `radcap.tasks` and nothing else."""

# One name per file: this folder installs as radcap.flows (pyproject.toml); run from the repository root it would
# also import as `flows`, a second copy of every module in it.
if __name__ != "radcap.flows":
    raise ImportError(f"import radcap.flows, not {__name__} (the folder installs under radcap's namespace)")

