"""Outputs that grow: the feature store writes large parts batch by batch, never rewriting them, and a crash
loses only the part that was open (the captions tables: tests/test_delta_captions.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest


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
        pooled = batch.reshape(n, -1)[:, :1024].astype(np.float32)
        return pooled, np.ones((n, 7, 7, 1024), np.float32), np.tile(pooled[:, :768], 2)

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
