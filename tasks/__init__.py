"""Prefect tasks, one module per pipeline stage."""

import radcap  # noqa: F401  (applies the offline defaults before Prefect is imported)
