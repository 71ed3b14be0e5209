"""Prefect tasks, one module per pipeline stage."""

import radcap  # noqa: F401  (applies the offline defaults before Prefect is imported)
from prefect import task
from prefect.cache_policies import NO_CACHE

# Tasks pass in-memory rows, tables, models and arrays: hashing them for a cache key would cost more than
# re-reading the files, and a cache keyed on paths would miss edits to the files.
uncached = task(cache_policy=NO_CACHE)
