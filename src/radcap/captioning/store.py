"""Where bulk captioning writes: three Delta Lake tables in the output folder, and the staging between runs.

* `captions/` (CAPTIONS): one row per captioned input file, each study's rows carrying its newest report;
* `caption_rejects/` (CAPTION_REJECTS): the inputs that could not be captioned, with the reason. Every input
  file is in one of the two, keyed by its path relative to the input folder;
* `caption_history/` (CAPTION_HISTORY): one row per report a study was given, appended and never rewritten:
  a re-captioned study's earlier reports stay there (`radcap history`);
* `captions.csv`: this run's export, the rows of the studies it captioned;
* `.parts/`: one atomically written Parquet file per batch while a run is in progress (a Dask worker writes its
  own); a crash loses at most the batch in flight, and the next run finds what the parts hold;
* `.lock`: held by the one run that writes the folder (a second run waits, then stops with one line).

`consolidate` folds the parts into the tables, under the lock: the captions table is one MERGE on the source
path (new rows inserted, a re-captioned study's rows updated), so a run's rows are one commit and a reader,
radcap's or DuckDB's, sees the table before or after it, never between. The two tables cannot share a commit,
so they are committed in the order that never loses an input: a path moving between them is added to its new
table before it is removed from its old one (for a moment it is in both, never in neither), and the parts are
deleted only after the last commit. A crash between commits is finished by the next consolidation: the parts
are still there, and re-applying them is idempotent (MERGE on the key, history rows deduplicated on read).

Studies are captioned whole, also across runs: when a new or changed image joins a study that already has
captioned images, the study is captioned again from all its views, and every row of the study carries its
newest report; the one before stays in the history.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from radcap.core import delta
from radcap.core.io import atomic_path, exclusive_lock, read_table, write_table
from radcap.data_contracts import CAPTION_HISTORY, CAPTION_REJECTS, CAPTIONS

REPORT = [
    "caption",
    "model",
    "model_version",
    "encoder_version",
    "captioned_at",
    "ood_score",
    "in_domain",
    "ood_reason",
]


class CaptionStore:
    def __init__(self, out: Path, retention_days: float | None = None, compact_files: int | None = None):
        from radcap.core.settings import get_settings

        cfg = get_settings().caption
        self.out = Path(out)
        self.parts_dir = self.out / ".parts"
        self.retention_days = cfg.retention_days if retention_days is None else retention_days
        self.compact_files = compact_files or cfg.compact_files

    @property
    def captions(self) -> Path:
        return self.out / "captions"

    @property
    def rejects(self) -> Path:
        return self.out / "caption_rejects"

    @property
    def history(self) -> Path:
        return self.out / "caption_history"

    @property
    def captions_csv(self) -> Path:
        return self.out / "captions.csv"

    @contextmanager
    def writing(self, wait_seconds: float) -> Iterator[CaptionStore]:
        """Hold the folder's lock while writing: one writer per output folder, across processes. A folder
        written before the tables were Delta tables is migrated first (`migrate`)."""
        self.out.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.out / ".lock", wait_seconds, f"{self.out}"):
            self._prepare()
            yield self

    def _prepare(self) -> None:
        """Under the lock: a folder written before Delta tables is migrated, missing tables are created."""
        if legacy_tables(self.out):
            migrate(self.out, locked=True)
        self._create()

    def _create(self) -> None:
        for folder, contract in (
            (self.captions, CAPTIONS),
            (self.rejects, CAPTION_REJECTS),
            (self.history, CAPTION_HISTORY),
        ):
            delta.create_table(folder, contract, self.retention_days)

    # -- reading ------------------------------------------------------------------------------------------

    def _parts(self, table: str) -> list[Path]:
        return sorted(self.parts_dir.glob(f"{table}-*.parquet")) if self.parts_dir.exists() else []

    def _table(self, folder: Path, contract, where: dict[str, list[str]] | None = None) -> pd.DataFrame:
        return delta.read_snapshot(folder, contract, where=where) if delta.is_delta(folder) else contract.empty()

    def current(
        self, paths: list[str] | None = None, studies: list[str] | None = None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(captions, rejects) as they stand, parts included: the newest row per source path wins across both
        tables, and each study's rows carry its newest report. With `paths` and/or `studies`, only the rows of
        those paths and of those studies (whole), read without reading the rest of the table."""
        if legacy_tables(self.out):  # not migrated yet (the next writer does it): read as the old reader did
            return _legacy_current(self.out)
        where_c = where_r = None
        if paths is not None or studies is not None:
            where_c = {"source_path": list(paths or []), "study_id": list(studies or [])}
            where_r = {"source_path": list(paths or [])}
        captions = _concat(
            [self._table(self.captions, CAPTIONS, where_c), *_read(self._parts("captions"), CAPTIONS)], CAPTIONS
        )
        rejects = _concat(
            [self._table(self.rejects, CAPTION_REJECTS, where_r), *_read(self._parts("rejects"), CAPTION_REJECTS)],
            CAPTION_REJECTS,
        )
        return fold(captions, rejects)

    def done(self, paths: list[str] | None = None) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(source_path, sha256) of every input already captioned, and of every one rejected, parts included
        (of `paths` only, when given)."""
        captions, rejects = self.current(paths=paths)
        return set(zip(captions["source_path"], captions["sha256"])), set(
            zip(rejects["source_path"], rejects["sha256"])
        )

    # -- writing ------------------------------------------------------------------------------------------

    def write_batch(self, captions: pd.DataFrame, rejects: pd.DataFrame, run_id: str, number: int | str) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        name = f"{run_id}-{number:06d}.parquet" if isinstance(number, int) else f"{run_id}-{number}.parquet"
        if len(captions):
            write_table(captions, self.parts_dir / f"captions-{name}", CAPTIONS)
        if len(rejects):
            write_table(rejects, self.parts_dir / f"rejects-{name}", CAPTION_REJECTS)

    def consolidate(self) -> dict[str, int]:
        """Fold the parts into the tables (see the module doc); call it holding the lock (`writing`)."""
        self._prepare()
        parts_c, parts_r = self._parts("captions"), self._parts("rejects")
        new_c = _concat(_read(parts_c, CAPTIONS), CAPTIONS)
        new_r = _concat(_read(parts_r, CAPTION_REJECTS), CAPTION_REJECTS)
        summary = {"compacted_files": 0, "vacuumed_files": 0}
        if len(new_c) or len(new_r):
            captions = self._commit(new_c, new_r)
            with atomic_path(self.captions_csv) as tmp:  # this run's export: the studies it captioned
                captions[captions["study_id"].isin(set(new_c["study_id"]))].to_csv(tmp, index=False)
            for table in (self.captions, self.rejects):
                for key, value in delta.compact_and_vacuum(table, self.compact_files, self.retention_days).items():
                    summary[key] += value
        for part in parts_c + parts_r:  # only now: until here a crash leaves them for the next run
            part.unlink(missing_ok=True)
        table = delta.open_table(self.captions)
        return {
            "captioned_total": _count(table),
            "rejected_total": _count(delta.open_table(self.rejects)),
            "table_version": int(table.version()),
            **summary,
        }

    def _commit(self, new_c: pd.DataFrame, new_r: pd.DataFrame) -> pd.DataFrame:
        """Commit the parts' rows (module doc); returns the touched paths' and studies' captions as committed."""
        touched_paths = sorted(set(new_c["source_path"]) | set(new_r["source_path"]))
        touched_studies = sorted(set(new_c["study_id"]))
        # Only the rows of touched paths and studies are read, never the whole table.
        old_c = self._table(
            self.captions,
            CAPTIONS,
            {"source_path": touched_paths, "study_id": touched_studies},
        )
        old_r = self._table(self.rejects, CAPTION_REJECTS, {"source_path": touched_paths})
        captions, rejects = fold(_concat([old_c, new_c], CAPTIONS), _concat([old_r, new_r], CAPTION_REJECTS))
        gone_c = sorted(set(old_c["source_path"]) - set(captions["source_path"]))  # now rejected
        gone_r = sorted(set(old_r["source_path"]) - set(rejects["source_path"]))  # now captioned
        # 1. every new or re-captioned row, one commit; 2. rejects added, and those now captioned removed;
        # 3. captions now rejected removed. A path moving between the tables is in both for a moment, never in none.
        version = _merge(self.captions, CAPTIONS, captions, [])
        _merge(self.rejects, CAPTION_REJECTS, rejects, gone_r)
        if gone_c:
            _merge(self.captions, CAPTIONS, CAPTIONS.empty(), gone_c)
        self._record_history(captions, set(new_c["study_id"]), version)
        return captions

    def _record_history(self, captions: pd.DataFrame, studies: set[str], version: int) -> None:
        """One row per study given a report by this commit (appended; a re-applied commit's duplicate is
        dropped when read)."""
        if not studies:
            return
        from deltalake import write_deltalake

        rows = captions[captions["study_id"].isin(studies)]
        first = rows.drop_duplicates("study_id").set_index("study_id")
        images = rows["study_id"].value_counts().reindex(first.index).astype("int32")
        reports = first[[c for c in REPORT if c in CAPTION_HISTORY.column_names]].assign(images=images)
        reports = reports.reset_index().assign(table_version=version)
        write_deltalake(str(self.history), CAPTION_HISTORY.validate(reports).replace_schema_metadata(), mode="append")


def fold(captions: pd.DataFrame, rejects: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The newest row per source path wins across both tables (by its time); each study's rows then carry the
    study's newest report."""
    both = pd.concat(
        [
            pd.DataFrame(
                {"source_path": captions["source_path"], "time": captions["captioned_at"], "table": "c"}
            ).assign(row=np.arange(len(captions))),
            pd.DataFrame({"source_path": rejects["source_path"], "time": rejects["rejected_at"], "table": "r"}).assign(
                row=np.arange(len(rejects))
            ),
        ],
        ignore_index=True,
    ).sort_values(["time", "table", "row"], kind="stable")
    newest = both.drop_duplicates("source_path", keep="last")
    keep_c = newest.loc[newest["table"] == "c", "row"].sort_values().to_numpy()
    keep_r = newest.loc[newest["table"] == "r", "row"].sort_values().to_numpy()
    captions = captions.iloc[keep_c].reset_index(drop=True)
    rejects = rejects.iloc[keep_r].sort_values("source_path").reset_index(drop=True)
    if len(captions):  # a study's newest report, on every row of the study
        latest = captions.sort_values("captioned_at", kind="stable").drop_duplicates("study_id", keep="last")
        latest = latest.set_index("study_id")[REPORT]
        for column in REPORT:  # column by column: each keeps its type
            captions[column] = latest[column].reindex(captions["study_id"]).to_numpy()
    captions = captions.sort_values(["study_id", "source_path"]).reset_index(drop=True)
    return captions.astype({"captioned_at": CAPTIONS.empty()["captioned_at"].dtype}), rejects


def _merge(folder: Path, contract, upserts: pd.DataFrame, deletions: list[str]) -> int:
    """One commit: rows inserted or replaced by source path, and the `deletions` paths removed. Returns the
    table's version after it."""
    from deltalake import CommitProperties

    if not len(upserts) and not deletions:
        return int(delta.open_table(folder).version())
    schema = pa.schema([f.with_nullable(True) for f in contract.arrow_schema.remove_metadata()])
    rows = contract.validate(upserts).cast(schema)  # the contract's checks, on every write
    gone = pa.table(
        {
            f.name: pa.array(deletions, f.type) if f.name == "source_path" else pa.nulls(len(deletions), f.type)
            for f in schema
        }
    )
    source = pa.concat_tables([rows, gone]).append_column(
        "_delete", pa.array([False] * rows.num_rows + [True] * len(deletions))
    )
    columns = {c: f"s.`{c}`" for c in contract.column_names}
    (
        delta.open_table(folder)
        .merge(
            source,
            predicate="t.source_path = s.source_path",
            source_alias="s",
            target_alias="t",
            streamed_exec=False,  # the source (one run's rows) is small; files it cannot touch are skipped
            commit_properties=CommitProperties(custom_metadata={"writer": "radcap caption"}),
        )
        .when_matched_delete(predicate="s._delete")
        .when_matched_update(updates=columns, predicate="NOT s._delete")
        .when_not_matched_insert(updates=columns, predicate="NOT s._delete")
        .execute()
    )
    return int(delta.open_table(folder).version())


def _read(paths: list[Path], contract) -> list[pd.DataFrame]:
    return [read_table(p, contract) for p in paths]


def _concat(frames: list[pd.DataFrame], contract) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else contract.empty()


def _count(table) -> int:
    return int(table.to_pyarrow_dataset().count_rows())


# -- reading, for users ---------------------------------------------------------------------------------------


def read_captions(out: Path | str, as_of: int | str | datetime | None = None) -> pd.DataFrame:
    """The captions table of output folder `out` as one consistent snapshot: the newest version, or the table
    as it stood at version `as_of` (an int, see `radcap history`) or time `as_of` (a datetime or ISO string)."""
    return delta.read_snapshot(Path(out) / "captions", CAPTIONS, as_of, sort_by=["study_id", "source_path"])


def read_caption_rejects(out: Path | str, as_of: int | str | datetime | None = None) -> pd.DataFrame:
    return delta.read_snapshot(Path(out) / "caption_rejects", CAPTION_REJECTS, as_of, sort_by=["source_path"])


def study_history(out: Path | str, study: str) -> pd.DataFrame:
    """Every report study `study` was given, oldest first (a commit re-applied after a crash counted once)."""
    rows = delta.read_snapshot(Path(out) / "caption_history", CAPTION_HISTORY, where={"study_id": [study]})
    rows = rows.sort_values(["captioned_at", "table_version"], kind="stable")
    return rows.drop_duplicates([c for c in rows.columns if c != "table_version"]).reset_index(drop=True)


def read_caption_history(out: Path | str) -> pd.DataFrame:
    """Every report every study was given (the drafts radiologists saw), oldest first, each once."""
    rows = delta.read_snapshot(Path(out) / "caption_history", CAPTION_HISTORY)
    rows = rows.sort_values(["captioned_at", "table_version", "study_id"], kind="stable")
    return rows.drop_duplicates([c for c in rows.columns if c != "table_version"]).reset_index(drop=True)


# -- migration of a folder written before Delta tables --------------------------------------------------------


def legacy_tables(out: Path) -> bool:
    return (Path(out) / "captions.parquet").exists() or (Path(out) / "rejects.parquet").exists()


def migrate(out: Path | str, locked: bool = False, wait_seconds: float = 10.0) -> dict:
    """Turn `captions.parquet` (a Parquet dataset or file) and `rejects.parquet`, with any parts a crashed run
    left, into the Delta tables; idempotent (a second call finds nothing to do), nothing lost: the new tables
    are committed before the old files are moved to `OUT/.pre-delta-TIME/` (kept, never deleted)."""
    out = Path(out)
    if not locked:
        with exclusive_lock(out / ".lock", wait_seconds, f"{out}"):
            return migrate(out, locked=True)
    if not legacy_tables(out):
        return {"migrated": False, "reason": "nothing written before Delta tables"}
    captions, rejects = _legacy_current(out)
    store = CaptionStore(out)
    from deltalake import write_deltalake

    for folder, contract, rows in ((store.captions, CAPTIONS, captions), (store.rejects, CAPTION_REJECTS, rejects)):
        delta.create_table(folder, contract, store.retention_days)
        # One overwrite commit: a migration interrupted and run again writes the same table again.
        write_deltalake(str(folder), contract.validate(rows).replace_schema_metadata(), mode="overwrite")
    delta.create_table(store.history, CAPTION_HISTORY, store.retention_days)
    if not delta.read_snapshot(store.history, CAPTION_HISTORY, columns=["study_id"]).shape[0]:
        store._record_history(captions, set(captions["study_id"]), int(delta.open_table(store.captions).version()))
    kept = out / f".pre-delta-{time.strftime('%Y%m%dT%H%M%S')}"
    kept.mkdir()
    for name in ("captions.parquet", "rejects.parquet", ".parts", ".captions-single-file.parquet"):
        if (out / name).exists():
            (out / name).rename(kept / name)
    return {"migrated": True, "captions": len(captions), "rejects": len(rejects), "old_files_kept_in": str(kept)}


def _legacy_current(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The old layout's table as its own reader saw it: an interrupted commit finished (its journal), the
    segments, the single-file table before datasets, and the parts of a run that crashed, folded."""
    import json
    import os

    dataset = out / "captions.parquet"
    journal = dataset / "_commit.json"
    if journal.exists():
        plan = json.loads(journal.read_text(encoding="utf-8"))
        for pending, target in plan["renames"].items():
            if Path(pending).exists():
                os.replace(pending, target)
        for path in plan["deletions"]:
            Path(path).unlink(missing_ok=True)
        journal.unlink()
    files = [dataset] if dataset.is_file() else sorted(dataset.glob("segment-*.parquet")) if dataset.is_dir() else []
    single = out / ".captions-single-file.parquet"
    files += [single] if single.exists() else []
    parts = sorted((out / ".parts").glob("captions-*.parquet")) if (out / ".parts").exists() else []
    captions = _concat(_read(files + parts, CAPTIONS), CAPTIONS)
    reject_files = [out / "rejects.parquet"] if (out / "rejects.parquet").exists() else []
    reject_files += sorted((out / ".parts").glob("rejects-*.parquet")) if (out / ".parts").exists() else []
    rejects = _concat(_read(reject_files, CAPTION_REJECTS), CAPTION_REJECTS)
    return fold(captions, rejects)
