"""Delta Lake tables (delta-rs): what every radcap table that others read while radcap writes is built on.

A Delta table is a folder of Parquet files plus `_delta_log/`, whose numbered JSON commits say which files
make up each version. A commit is one atomic file creation, so a reader (radcap, DuckDB, Polars, Spark)
sees a whole version or the one before, never a half-written one; older versions stay readable until
`vacuum` removes their files (time travel, `as_of`).

The folder's Parquet files are not the table: a plain `pd.read_parquet(folder)` would read the files of
replaced versions too. Each table therefore holds a file named `READ_ME_IS_DELTA_NOT_PARQUET.parquet` that is
not Parquet, so such a read fails at once with that name in its message instead of returning stale or doubled
rows. Delta readers never see it (it is in no commit); `vacuum` may delete it, and `keep_guard` writes it back.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from radcap.core.errors import RadcapError
from radcap.data_contracts import Contract

GUARD = "READ_ME_IS_DELTA_NOT_PARQUET.parquet"
GUARD_TEXT = (
    "This folder is a Delta Lake table, not a Parquet dataset: its Parquet files include replaced versions.\n"
    "Read it with radcap.read_captions(OUT), deltalake.DeltaTable(folder).to_pandas(), polars.read_delta(folder)\n"
    "or DuckDB's delta_scan(folder) (see the README, 'Reading the captions').\n"
)


def is_delta(folder: Path) -> bool:
    return (Path(folder) / "_delta_log").is_dir()


def keep_guard(folder: Path) -> None:
    guard = Path(folder) / GUARD
    if not guard.exists():
        tmp = guard.with_name(f".{GUARD}.tmp")
        tmp.write_text(GUARD_TEXT, encoding="utf-8")
        tmp.replace(guard)


def create_table(folder: Path, contract: Contract, retention_days: float) -> None:
    """An empty table with the contract's schema (nothing when it exists). The log keeps `retention_days` of
    versions; files removed from the table are kept as long, so a reader of an older snapshot still finds them."""
    from deltalake import DeltaTable

    if is_delta(folder):
        return
    interval = f"interval {max(int(retention_days * 24 * 3600), 0)} seconds"
    DeltaTable.create(
        str(folder),
        schema=contract.arrow_schema.remove_metadata(),
        mode="ignore",
        name=contract.name,
        description=contract.doc,
        configuration={"delta.logRetentionDuration": interval, "delta.deletedFileRetentionDuration": interval},
    )
    keep_guard(folder)


def open_table(folder: Path, as_of: int | str | datetime | None = None):
    """The DeltaTable at its newest version, or as it stood at version/time `as_of`."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    if not is_delta(folder):
        raise RadcapError(f"{folder}: no Delta table here (run the stage that writes it first)")
    try:
        table = DeltaTable(str(folder))
        if as_of is not None:
            if isinstance(as_of, int):
                table.load_as_version(as_of)
            else:
                moment = _utc(as_of)
                first = min(c["timestamp"] for c in table.history())  # ms; delta-rs would give version 0
                if moment.timestamp() * 1000 < first:
                    raise ValueError("the table did not exist yet then (or that version was vacuumed)")
                table.load_as_version(moment)
    except TableNotFoundError as exc:
        raise RadcapError(f"{folder}: no Delta table here: {exc}") from exc
    except (DeltaError, ValueError, OSError) as exc:
        raise RadcapError(f"{folder}: cannot read the table as of {as_of}: {exc}") from exc
    return table


def _utc(moment: str | datetime) -> datetime:
    stamp = pd.Timestamp(moment)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def read_snapshot(
    folder: Path,
    contract: Contract,
    as_of: int | str | datetime | None = None,
    where: dict[str, list[str]] | None = None,
    columns: list[str] | None = None,
    sort_by: list[str] | None = None,
) -> pd.DataFrame:
    """One version of the table (the newest, or `as_of`) as pandas with the contract's types; with `where`,
    only the rows whose value in any of its columns is in that column's list; sorted by `sort_by` in Arrow
    (four times faster than pandas on 10^6 rows of strings). The contract's values were
    checked when written; a read checks the schema (a full check of 10^6 rows costs seconds)."""
    table = open_table(folder, as_of)
    schema = contract.arrow_schema.remove_metadata()
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    if where is None:
        data = table.to_pyarrow_dataset().to_table(columns=schema.names)
    else:
        data = _rows_where(table.file_uris(), where, schema)
    try:
        data = data.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, KeyError, ValueError) as exc:
        raise RadcapError(f"{folder}: the table no longer matches contract '{contract.name}': {exc}") from exc
    if sort_by:
        data = data.sort_by([(column, "ascending") for column in sort_by])
    return data.to_pandas()


def _rows_where(files: list[str], where: dict[str, list[str]], schema: pa.Schema) -> pa.Table:
    """The rows matching `where`, reading whole only the files holding one (the key columns of the others).
    By hand, not a dataset filter: delta-rs writes strings as string_view, whose Parquet statistics pyarrow
    cannot compare with a filter's strings ("no kernel matching input types (string, string_view)")."""
    wanted = {column: pa.array(sorted(set(values)), pa.string()) for column, values in where.items()}
    pieces = [schema.empty_table()]
    for uri in files:
        path = uri.removeprefix("file://")
        keys = pq.read_table(path, columns=list(wanted))
        mask = None
        for column, values in wanted.items():
            hit = pc.is_in(keys[column].cast(pa.string()), value_set=values)
            mask = hit if mask is None else pc.or_(mask, hit)
        if mask is not None and pc.any(mask).as_py():
            pieces.append(pq.read_table(path, columns=schema.names).cast(schema).filter(mask))
    return pa.concat_tables(pieces)


def file_count(folder: Path) -> int:
    return len(open_table(folder).file_uris())


def compact_and_vacuum(folder: Path, max_files: int, retention_days: float) -> dict[str, int]:
    """Past `max_files` data files, rewrite the small ones into few (`optimize`); then delete the files that no
    version of the last `retention_days` needs (`vacuum`). A reader of a retained version is never broken."""
    table = open_table(folder)
    compacted = removed = 0
    if len(table.file_uris()) > max_files:
        metrics = table.optimize.compact()
        compacted = int(metrics.get("numFilesRemoved", 0))
        table = open_table(folder)
        removed = len(
            table.vacuum(retention_hours=int(retention_days * 24), dry_run=False, enforce_retention_duration=False)
        )
        keep_guard(folder)
    return {"compacted_files": compacted, "vacuumed_files": removed}


def duckdb_connection(database: str = ":memory:"):
    """DuckDB with its Delta extension loaded from the `duckdb-extension-delta` wheel, offline."""
    import duckdb
    import duckdb_extension_delta

    found = sorted(Path(duckdb_extension_delta.__file__).parent.glob("extensions/*/delta.duckdb_extension"))
    if not found:
        raise RadcapError("the duckdb-extension-delta package holds no extension file (reinstall it)")
    connection = duckdb.connect(database)
    connection.sql(f"LOAD '{found[-1]}'")
    return connection
