"""Outputs that grow: the captions table is a Parquet dataset whose consolidation writes the new rows and
rewrites only the files holding rows they replace, survives a crash at any point of its commit, and reads back
as one table; the feature store writes large parts batch by batch, never rewriting them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from radcap.captioning.bulk import CaptionStore
from radcap.data_contracts import CAPTION_REJECTS, CAPTIONS

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rows(paths: list[str], study: str, caption: str, minutes: int) -> pd.DataFrame:
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
            "model_version": "1",
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


def run(store: CaptionStore, captions: pd.DataFrame, rejects: pd.DataFrame | None = None) -> dict:
    store.write_batch(
        captions, rejects if rejects is not None else CAPTION_REJECTS.empty(), f"run{len(store.segments()):03d}", 0
    )
    return store.consolidate()


def as_one_table(store: CaptionStore) -> pd.DataFrame:
    table = pd.read_parquet(store.captions)  # what any reader of the dataset sees
    return table.sort_values("source_path").reset_index(drop=True)


def test_consolidation_rewrites_only_the_segments_it_changes(tmp_path):
    store = CaptionStore(tmp_path)
    run(store, rows(["a1", "a2"], "A", "old A", 0))
    run(store, rows(["b1", "b2"], "B", "old B", 1))
    segments = {f.name: f.stat().st_mtime_ns for f in store.segments()}
    assert len(segments) == 2

    run(store, rows(["c1"], "C", "new C", 2))  # new study only: one new file, nothing rewritten
    after = {f.name: f.stat().st_mtime_ns for f in store.segments()}
    assert len(after) == 3 and all(after[name] == t for name, t in segments.items())

    # A lateral joins study A (re-captioned from both earlier views plus the new one) and b2 becomes a reject.
    totals = run(store, rows(["a1", "a2", "a3"], "A", "new A", 3), reject("b2", 3))
    table = as_one_table(store)
    assert table["source_path"].tolist() == ["a1", "a2", "a3", "b1", "c1"]  # one row per input, b2 gone
    assert set(table.loc[table["study_id"] == "A", "caption"]) == {"new A"}
    assert pd.read_parquet(store.rejects)["source_path"].tolist() == ["b2"]
    captions, _rejects = store.current()
    pd.testing.assert_frame_equal(captions.sort_values("source_path").reset_index(drop=True), table, check_dtype=False)
    assert totals == {"captioned_total": 5, "rejected_total": 1, "segments": len(store.segments())}
    # The segment of study C was not touched by the A/B changes.
    c_segment = [f for f in store.segments() if "C" in set(pd.read_parquet(f)["study_id"])]
    assert c_segment and all(f.name in after and f.stat().st_mtime_ns == after[f.name] for f in c_segment)
    # The run's export holds the studies it captioned.
    assert sorted(pd.read_csv(store.captions_csv)["source_path"]) == ["a1", "a2", "a3"]


def test_a_crash_anywhere_in_the_commit_loses_and_doubles_nothing(tmp_path, monkeypatch):
    store = CaptionStore(tmp_path)
    run(store, rows(["a1", "a2"], "A", "old A", 0))
    store.write_batch(rows(["a2"], "A", "new A", 1), CAPTION_REJECTS.empty(), "run-crash", 0)

    import radcap.captioning.bulk as captioning

    real_move = captioning._move

    def crash_after_first_rename(src, dst):
        real_move(src, dst)
        raise KeyboardInterrupt  # the process dies right after one file of the commit is in place

    monkeypatch.setattr(captioning, "_move", crash_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        store.consolidate()
    monkeypatch.setattr(captioning, "_move", real_move)
    assert (store.captions / "_commit.json").exists()  # the journal says how to finish
    # radcap's next access finishes the commit: both rows of study A carry the new report, each once.
    CaptionStore(tmp_path).segments()
    table = as_one_table(store)
    assert table["source_path"].tolist() == ["a1", "a2"] and set(table["caption"]) == {"new A"}
    assert not (store.captions / "_commit.json").exists() and not list(store.parts_dir.glob("*.parquet"))

    # A crash before the journal: the pending files are dropped, the parts stay for the next consolidation.
    store.write_batch(rows(["a1"], "A", "newest A", 2), CAPTION_REJECTS.empty(), "run-crash2", 0)
    monkeypatch.setattr(captioning, "write_json", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.consolidate()
    monkeypatch.undo()
    CaptionStore(tmp_path).segments()
    assert as_one_table(store)["caption"].tolist() == ["new A", "new A"]
    assert not list(store.captions.glob(".pending-*"))
    store.consolidate()
    assert as_one_table(store)["caption"].tolist() == ["newest A", "newest A"]


def test_small_segments_are_merged_and_a_single_file_table_is_adopted(tmp_path):
    legacy = tmp_path / "captions.parquet"
    rows(["old1"], "O", "from before datasets", 0).to_parquet(legacy)
    store = CaptionStore(tmp_path)
    for k in range(6):
        run(store, rows([f"s{k}"], f"S{k}", f"study {k}", k + 1))
    assert legacy.is_dir() and len(store.segments()) == 7
    merged = store.merge_small_segments(max_segments=3)
    assert merged == 5 and len(store.segments()) == 3
    table = as_one_table(store)
    assert table["source_path"].tolist() == ["old1"] + [f"s{k}" for k in range(6)]


def test_feature_parts_are_large_without_rewrites_and_a_crash_loses_only_the_open_one(tmp_path):
    from PIL import Image

    from radcap.imaging.decode import file_sha256
    from radcap.imaging.features import FeatureStore, ImageItem, extract_features

    rng = np.random.default_rng(0)
    items = []
    for k in range(12):
        path = tmp_path / "images" / f"i{k:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
        items.append(ImageItem(path.stem, str(path), file_sha256(path)))

    def forward(batch):
        n = len(batch)
        return batch.reshape(n, -1)[:, :1024].astype(np.float32), np.ones((n, 7, 7, 1024), np.float32)

    store = FeatureStore(tmp_path / "features")
    done = extract_features(
        items, forward, store, "enc", "v1", batch_size=2, input_size=64, progress=False, part_rows=5
    )
    assert done.encoded == 12
    # Batches of 2 appended to parts of up to 5 rows: 6, 6 (two batches past 5 close a part) and nothing left open.
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in store.parts()]
    assert sum(sizes) == 12 and all(n <= 6 for n in sizes) and len(sizes) == 2
    assert not list(store.root.glob(".writing-*"))
    assert sorted(store.load("v1")["image_id"]) == [i.image_id for i in items]
    assert ds.dataset(store.root, format="parquet").count_rows() == 12  # the folder reads as one table

    # A run that dies while a part is open: the closed parts are there, the open one is invisible to readers
    # and to the planner, which encodes those images again.
    calls = {"n": 0}

    def dying(batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return forward(batch)

    crashed = FeatureStore(tmp_path / "crashed")
    with pytest.raises(KeyboardInterrupt):
        extract_features(items, dying, crashed, "enc", "v1", batch_size=2, input_size=64, progress=False, part_rows=6)
    assert [pq.ParquetFile(p).metadata.num_rows for p in crashed.parts()] == [6]  # 4 batches: one part closed
    assert len(list(crashed.root.glob(".writing-*"))) == 1  # the open one, hidden
    assert ds.dataset(crashed.root, format="parquet").count_rows() == 6
    images = pd.DataFrame({"image_id": [i.image_id for i in items], "path": [i.path for i in items]})
    todo, stored, _ = crashed.plan(images, "v1")
    assert stored == 6 and len(todo) == 6
    extract_features(todo, forward, crashed, "enc", "v1", batch_size=2, input_size=64, progress=False)
    assert sorted(crashed.load("v1")["image_id"]) == [i.image_id for i in items]


def test_tables_read_by_older_readers_still_work(tmp_path):
    """`captions.parquet` read as a path by pandas and pyarrow, whatever its files."""
    store = CaptionStore(tmp_path)
    run(store, rows(["a"], "A", "x", 0))
    run(store, rows(["b"], "B", "y", 1))
    assert len(pd.read_parquet(tmp_path / "captions.parquet")) == 2
    assert ds.dataset(tmp_path / "captions.parquet", format="parquet").count_rows() == 2
    json.dumps(store.consolidate())  # nothing new: nothing written, totals still right
    assert store.consolidate()["captioned_total"] == 2
