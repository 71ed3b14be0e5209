"""radcap: radiology report generation as a Prefect batch pipeline.

Importing radcap does nothing beyond defining code: the offline defaults (project-local Prefect home,
telemetry off, local MLflow store, Keras home) are applied by the entry points that need them, the CLI,
the deployed flows and the MLflow pyfunc loaders, through `radcap.core.runtime.apply_offline_defaults`.
"""

__version__ = "0.4.0"


def read_captions(out, as_of=None):
    """The captions table of a `radcap caption` output folder as one consistent snapshot (pandas): the newest
    version, or the table as it stood at version `as_of` (int) or time `as_of` (datetime or ISO string)."""
    from radcap.captioning.store import read_captions as read

    return read(out, as_of)


def read_caption_rejects(out, as_of=None):
    """The caption rejects table of an output folder, as `read_captions` reads the captions."""
    from radcap.captioning.store import read_caption_rejects as read

    return read(out, as_of)


def duckdb_connection(database: str = ":memory:"):
    """A DuckDB connection with the Delta extension loaded from its wheel (DuckDB would otherwise download it):
    `duckdb_connection().sql("SELECT * FROM delta_scan('OUT/captions')")`."""
    from radcap.core.delta import duckdb_connection as connect

    return connect(database)
