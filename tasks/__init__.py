"""Prefect tasks, one module per pipeline stage: thin wrappers over the `radcap` library. No task module
imports another; what two stages share lives in the library."""

# One name per file: this folder installs as radcap.tasks (pyproject.toml); imported as
# `tasks` from the repository root, every module in it would load again under a second name.
if __name__ != "radcap.tasks":
    raise ImportError(f"import radcap.tasks, not {__name__} (the folder installs under radcap's namespace)")


from prefect import task
from prefect.cache_policies import NO_CACHE

from radcap.core.errors import RadcapError

# Tasks pass in-memory rows, tables, models and arrays: hashing them for a cache key would cost more than
# re-reading the files, and a cache keyed on paths would miss edits to the files.
uncached = task(cache_policy=NO_CACHE)


def _transient(task, task_run, state) -> bool:
    """Retry a dropped connection, not a user mistake (a RadcapError names something the user must fix)."""
    return not isinstance(getattr(state, "data", None), RadcapError)


# Steps that talk to the MLflow registry (a remote server in production): two more tries, 5 s apart.
registry_task = task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
