"""The captions tables are Delta Lake tables: a run's rows are one commit, a reader (radcap's, DuckDB's,
Polars') sees a whole version while writers commit, a re-captioned study keeps its earlier report in the
history, a killed commit loses nothing, and a folder written before Delta tables migrates in one command."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from radcap import duckdb_connection, read_caption_rejects, read_captions
from radcap.captioning.store import CaptionStore, migrate, study_history
from radcap.core import delta
from radcap.core.errors import RadcapError
from radcap.core.io import exclusive_lock
from radcap.data_contracts import CAPTION_REJECTS, CAPTIONS
from tests.conftest import run_cli_here

FIXTURE = Path(__file__).parent / "fixtures" / "captions-written-by-0.x"

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rows(paths: list[str], study: str, caption: str, minutes: int, version: str = "1") -> pd.DataFrame:
    frame = CAPTIONS.empty()
    records = [
        {
            "study_id": study,
            "image_id": p,
            "view": "frontal",
            "source_path": p,
            "sha256": f"sha-{p}-{minutes}",
            "caption": caption,
            "model": "m",
            "model_version": version,
            "encoder_version": "e",
            "captioned_at": T0 + timedelta(minutes=minutes),
            "ood_score": 0.5,
            "in_domain": True,
            "ood_reason": None,
        }
        for p in paths
    ]
    return pd.concat([frame, pd.DataFrame(records)], ignore_index=True).astype(frame.dtypes.to_dict())


def reject(path: str, minutes: int) -> pd.DataFrame:
    frame = CAPTION_REJECTS.empty()
    record = dict.fromkeys(frame.columns) | {
        "source_path": path,
        "sha256": "bad",
        "reason": "broken",
        "rejected_at": T0 + timedelta(minutes=minutes),
    }
    return pd.concat([frame, pd.DataFrame([record])], ignore_index=True).astype(frame.dtypes.to_dict())


def run(store: CaptionStore, captions: pd.DataFrame, rejects: pd.DataFrame | None = None, name: str = "run") -> dict:
    with store.writing(30):
        store.write_batch(captions, rejects if rejects is not None else CAPTION_REJECTS.empty(), name, 0)
        return store.consolidate()


def every_input_once(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    captions, rejects = read_captions(out), read_caption_rejects(out)
    assert captions["source_path"].is_unique and rejects["source_path"].is_unique
    assert not set(captions["source_path"]) & set(rejects["source_path"])
    return captions, rejects


def test_a_recaptioned_study_is_one_merge_and_its_earlier_report_stays_in_the_history(tmp_path, prefect_api):
    store = CaptionStore(tmp_path)
    first = run(store, rows(["a1", "a2"], "A", "old A", 0))
    run(store, rows(["b1", "b2"], "B", "old B", 1))
    # A lateral joins study A (captioned again from all three views) and b2 becomes a reject: one run.
    totals = run(store, rows(["a1", "a2", "a3"], "A", "new A", 3, version="2"), reject("b2", 3))
    captions, rejects = every_input_once(tmp_path)
    assert captions["source_path"].tolist() == ["a1", "a2", "a3", "b1"] and rejects["source_path"].tolist() == ["b2"]
    assert set(captions.loc[captions["study_id"] == "A", "caption"]) == {"new A"}
    assert totals["captioned_total"] == 4 and totals["rejected_total"] == 1
    assert sorted(pd.read_csv(store.captions_csv)["source_path"]) == ["a1", "a2", "a3"]  # this run's export

    # The table as the first run left it; the history of A with both reports, their models and versions.
    then = read_captions(tmp_path, as_of=first["table_version"])
    assert then["source_path"].tolist() == ["a1", "a2"] and set(then["caption"]) == {"old A"}
    history = study_history(tmp_path, "A")
    assert history["caption"].tolist() == ["old A", "new A"] and history["model_version"].tolist() == ["1", "2"]
    assert history["images"].tolist() == [2, 3] and history["table_version"].is_monotonic_increasing
    shown = run_cli_here("--json", "history", "--out", str(tmp_path), "--study", "A")
    assert shown.returncode == 0, shown.stderr
    assert [r["caption"] for r in pd.read_json(__import__("io").StringIO(shown.stdout)).to_dict("records")] == [
        "old A",
        "new A",
    ]
    missing = run_cli_here("history", "--out", str(tmp_path), "--study", "Z")
    assert missing.returncode == 2 and "no report was ever given to study Z" in missing.stderr
    # A time before the table existed is a clear error, not an empty table.
    with pytest.raises(RadcapError, match="cannot read the table as of"):
        read_captions(tmp_path, as_of="2000-01-01")


def test_other_readers_see_the_same_table_and_a_plain_parquet_read_fails_loudly(tmp_path):
    import polars as pl

    store = CaptionStore(tmp_path)
    run(store, rows(["a1", "a2"], "A", "old A", 0))
    run(store, rows(["a1", "a2"], "A", "new A", 1))  # replaced rows: their old file is still in the folder
    ours = read_captions(tmp_path)
    by_duckdb = duckdb_connection().sql(f"SELECT * FROM delta_scan('{tmp_path / 'captions'}')").df()
    by_polars = pl.read_delta(str(tmp_path / "captions")).to_pandas()
    for frame in (by_duckdb, by_polars):
        frame = frame.sort_values("source_path", ignore_index=True)
        assert frame["source_path"].tolist() == ["a1", "a2"] and set(frame["caption"]) == {"new A"}
    assert len(ours) == 2
    with pytest.raises(Exception, match="READ_ME_IS_DELTA_NOT_PARQUET"):
        pd.read_parquet(tmp_path / "captions")  # would otherwise return the replaced rows too


def test_compaction_past_the_file_count_and_vacuum_after_the_retention(tmp_path):
    store = CaptionStore(tmp_path, retention_days=0, compact_files=3)
    for k in range(3):  # new studies only: each commit adds a file, the others untouched
        totals = run(store, rows([f"s{k}"], f"S{k}", f"report {k}", k))
        assert delta.file_count(store.captions) == k + 1 and totals["compacted_files"] == 0
    totals = run(store, rows(["s3"], "S3", "report 3", 3))  # a fourth file: past the threshold
    assert totals["compacted_files"] == 4 and totals["vacuumed_files"] >= 4 and delta.file_count(store.captions) == 1
    captions, _ = every_input_once(tmp_path)
    assert captions["source_path"].tolist() == ["s0", "s1", "s2", "s3"]
    assert (tmp_path / "captions" / "READ_ME_IS_DELTA_NOT_PARQUET.parquet").exists()  # kept after vacuum
    assert len(study_history(tmp_path, "S3")) == 1  # the history is never vacuumed of rows


def test_a_commit_interrupted_between_its_tables_loses_nothing_and_the_next_run_finishes_it(tmp_path, monkeypatch):
    import radcap.captioning.store as store_module

    store = CaptionStore(tmp_path)
    run(store, rows(["a1", "a2"], "A", "old A", 0), reject("b1", 0))
    real_merge = store_module._merge
    calls = {"n": 0}

    def dies_after_the_captions_commit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the captions commit is in, the rejects commit never happens
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(store_module, "_merge", dies_after_the_captions_commit)
    with pytest.raises(KeyboardInterrupt):
        run(store, rows(["b1"], "B", "b repaired", 1))  # b1 moves from the rejects to the captions
    monkeypatch.undo()
    captions, rejects = read_captions(tmp_path), read_caption_rejects(tmp_path)
    assert "b1" in set(captions["source_path"])  # in both for now: never in neither
    assert list(store.parts_dir.glob("*.parquet"))  # the parts wait for the next run
    run(store, CAPTIONS.empty(), name="next")
    captions, rejects = every_input_once(tmp_path)
    assert captions["source_path"].tolist() == ["a1", "a2", "b1"] and rejects.empty
    assert study_history(tmp_path, "B")["caption"].tolist() == ["b repaired"]  # re-applied, counted once


def test_a_folder_written_by_the_previous_release_migrates_once_losing_nothing(tmp_path, prefect_api):
    out = tmp_path / "out"
    shutil.copytree(FIXTURE, out)
    before_c, before_r = CaptionStore(out).current()  # the old layout, as its reader saw it (parts included)
    assert len(before_c) == 15 and len(before_r) == 1
    done = run_cli_here("--json", "migrate-captions", "--out", str(out))
    assert done.returncode == 0, done.stderr
    captions, rejects = every_input_once(out)
    pd.testing.assert_frame_equal(
        captions, before_c.sort_values(["study_id", "source_path"], ignore_index=True), check_dtype=False
    )
    assert rejects["source_path"].tolist() == before_r["source_path"].tolist()
    assert study_history(out, "1.2.826.0.1.2")["caption"].tolist() == ["small left effusion 2"]
    kept = list(out.glob(".pre-delta-*"))
    assert len(kept) == 1 and (kept[0] / "captions.parquet").is_dir() and (kept[0] / ".parts").is_dir()
    assert migrate(out)["migrated"] is False  # again: nothing to do
    # A caption run on an unmigrated folder migrates it first (as the flow does: its lock, parts, consolidate).
    other = tmp_path / "other"
    shutil.copytree(FIXTURE, other)
    store = CaptionStore(other)
    with exclusive_lock(other / ".lock", 10, "test"):
        assert len(store.done()[0]) == 15  # read as the old reader did, before the migration
        store.write_batch(rows(["new/1.dcm"], "N", "new study", 60 * 24 * 400), CAPTION_REJECTS.empty(), "r", 0)
        store.consolidate()
    assert len(read_captions(other)) == 16 and not (other / "captions.parquet").exists()


# -- concurrency: a reader while a writer commits; a writer killed in its commit -----------------------------

STUDIES = 200


def _two_view_rows(studies: range, round_: int) -> pd.DataFrame:
    frames = [rows([f"s{s:03d}/f.dcm", f"s{s:03d}/l.dcm"], f"S{s:03d}", f"round {round_}", round_) for s in studies]
    return pd.concat(frames, ignore_index=True)


def _recaptioning_writer(out: str, rounds: int, seed: int, ready: str) -> None:
    """Re-captions 20 random studies per round, one run (one commit) each."""
    rng = random.Random(seed)
    store = CaptionStore(Path(out))
    Path(ready).touch()
    for r in range(1, rounds + 1):
        chosen = sorted(rng.sample(range(STUDIES), 20))
        frames = [rows([f"s{s:03d}/f.dcm", f"s{s:03d}/l.dcm"], f"S{s:03d}", f"round {r}", r) for s in chosen]
        with store.writing(60):
            store.write_batch(pd.concat(frames, ignore_index=True), CAPTION_REJECTS.empty(), f"r{r:04d}", 0)
            store.consolidate()


def _whole(frame: pd.DataFrame) -> bool:
    """400 rows, one per file, and each study's two rows carry one report."""
    return (
        len(frame) == 2 * STUDIES
        and frame["source_path"].is_unique
        and bool((frame.groupby("study_id")["caption"].nunique() == 1).all())
    )


@pytest.mark.slow
def test_readers_never_see_half_a_commit_while_a_writer_recaptions(tmp_path):
    run(CaptionStore(tmp_path), _two_view_rows(range(STUDIES), 0))
    ctx = multiprocessing.get_context("spawn")
    ready = tmp_path / "writer-started"
    writer = ctx.Process(target=_recaptioning_writer, args=(str(tmp_path), 100, 0, str(ready)))
    writer.start()
    connection = duckdb_connection()
    scan = f"SELECT * FROM delta_scan('{tmp_path / 'captions'}')"
    reads, bad, versions = 0, [], set()
    while not ready.exists():
        time.sleep(0.01)
    while writer.is_alive() or reads < 1000:
        for how in ("radcap", "duckdb"):
            try:
                frame = read_captions(tmp_path) if how == "radcap" else connection.sql(scan).df()
                ok = _whole(frame)
                versions.add(tuple(sorted(frame["caption"].unique())))
            except Exception as exc:  # an unreadable table counts as a bad read
                ok, frame = False, repr(exc)
            reads += 1
            if not ok:
                bad.append((how, frame if isinstance(frame, str) else len(frame)))
    writer.join(300)
    assert writer.exitcode == 0
    assert reads >= 1000 and not bad, f"{len(bad)} bad reads of {reads}: {bad[:5]}"
    assert len(versions) > 10  # the reads saw many versions, not one
    history = study_history(tmp_path, "S000")
    assert len(read_captions(tmp_path, as_of=1)) == 400 and len(history) >= 1


def _killable_commit(out: str, round_: int, started: str) -> None:
    store = CaptionStore(Path(out))
    with store.writing(60):
        # Half the studies re-captioned; ten files move between the tables each round: unreadable in odd
        # rounds (captions -> rejects), repaired in even ones (rejects -> captions).
        captions = _two_view_rows(range(0, 40, 2), round_)
        moving = captions["source_path"].str.startswith("s01") & captions["source_path"].str.endswith("f.dcm")
        rejects = pd.concat([reject(p, round_) for p in captions.loc[moving, "source_path"]], ignore_index=True)
        if round_ % 2:
            captions = captions[~moving]
        else:
            rejects = rejects.iloc[:0]
        store.write_batch(captions, CAPTION_REJECTS.empty(), f"r{round_:03d}", 0)
        store.write_batch(CAPTIONS.empty(), rejects, f"r{round_:03d}", 1)
        Path(started).touch()
        store.consolidate()


@pytest.mark.slow
def test_a_writer_killed_anywhere_in_its_commit_leaves_a_readable_table_and_loses_no_input(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    out = tmp_path / "out"
    run(CaptionStore(out), _two_view_rows(range(40), 0))
    inputs = set(read_captions(out)["source_path"])
    # How long one commit takes here, so the kills land inside it.
    started = tmp_path / "started"
    probe = ctx.Process(target=_killable_commit, args=(str(out), 1, str(started)))
    probe.start()
    while not started.exists() and probe.is_alive():
        time.sleep(0.002)
    t0 = time.monotonic()
    probe.join(120)
    commit_seconds = time.monotonic() - t0
    rng = random.Random(0)
    outcomes = []
    for trial in range(20):
        started.unlink(missing_ok=True)
        writer = ctx.Process(target=_killable_commit, args=(str(out), 2 + trial, str(started)))
        writer.start()
        while not started.exists() and writer.is_alive():
            time.sleep(0.002)
        time.sleep(rng.uniform(0, commit_seconds))
        if writer.is_alive():
            os.kill(writer.pid, signal.SIGKILL)
        writer.join(60)
        outcomes.append(writer.exitcode)
        # Readable at once, and no input in neither table.
        captions, rejects = read_captions(out), read_caption_rejects(out)
        assert captions["source_path"].is_unique and rejects["source_path"].is_unique
        assert set(captions["source_path"]) | set(rejects["source_path"]) == inputs
        # The next writer finishes what the killed one began: every input in exactly one table.
        run(CaptionStore(out), CAPTIONS.empty(), name=f"after-{trial}")
        captions, rejects = every_input_once(out)
        assert set(captions["source_path"]) | set(rejects["source_path"]) == inputs
    assert outcomes.count(-signal.SIGKILL) >= 10, outcomes  # most trials were killed in the commit
