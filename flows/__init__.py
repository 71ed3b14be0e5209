"""Prefect flows: each composes tasks from `tasks/` and nothing else."""

import radcap  # noqa: F401  (applies the offline defaults before Prefect is imported)
