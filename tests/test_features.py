"""The feature store: streaming extraction, rejects, resumability after a crash, re-encoding edited files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radcap.imaging.decode import file_sha256
from radcap.imaging.features import FeatureStore, ImageItem, extract_features

pytestmark = pytest.mark.realdata


def fake_forward(calls: list, fail_on_call: int | None = None):
    """A stand-in for the network that is cheap and content-dependent: pooled[0] = mean pixel."""

    def forward(batch: np.ndarray):
        calls.append(len(batch))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise KeyboardInterrupt("killed mid-run")
        pooled = np.zeros((len(batch), 1024), np.float32)
        pooled[:, 0] = batch.reshape(len(batch), -1).mean(axis=1)
        early = np.repeat(pooled[:, :1], 1536, axis=1)
        return pooled, np.zeros((len(batch), 7, 7, 1024), np.float32), early

    return forward


@pytest.fixture()
def images(tmp_path: Path, shared_data: Path) -> list[ImageItem]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for source in sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[:10]:
        shutil.copy(source, folder / source.name)
    (folder / "zero.png").write_bytes(b"")
    (folder / "report.png").write_text("not an image")
    return [ImageItem(p.stem, str(p), file_sha256(p)) for p in sorted(folder.iterdir())]


def test_extract_streams_batches_and_rejects_bad_files(tmp_path, images):
    store, calls = FeatureStore(tmp_path / "features"), []
    result = extract_features(
        images, fake_forward(calls), store, "fake", "v1", batch_size=4, input_size=64, progress=False
    )
    assert result.encoded == 10 and len(result.rejects) == 2
    reasons = {r["item"]: r["reason"] for r in result.rejects}
    assert "0 bytes" in reasons["zero"] and "not a PNG, JPEG or DICOM" in reasons["report"]
    assert calls == [4, 4, 4]  # every batch padded to one shape
    loaded = store.load("v1")
    assert sorted(loaded["image_id"]) == sorted(i.image_id for i in images if i.image_id not in ("zero", "report"))
    assert loaded["pooled"].shape == (10, 1024) and np.all(loaded["pooled"][:, 0] > 0)
    assert store.load("other-version")["pooled"].shape == (0, 1024)


def test_a_crash_loses_at_most_the_part_being_filled(tmp_path, images):
    """Parts of one batch here (`part_rows=3`): the two batches written before the crash are kept."""
    from radcap.tasks.features import plan_features

    store = FeatureStore(tmp_path / "features")
    good = [i for i in images if i.image_id not in ("zero", "report")]
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            good,
            fake_forward([], fail_on_call=3),
            store,
            "fake",
            "v1",
            batch_size=3,
            input_size=64,
            progress=False,
            part_rows=3,
        )
    assert not list(store.root.glob("*.tmp")) and not list(store.root.glob(".*"))  # no half-written part
    stored = store.index()
    assert len(stored) == 6  # the two batches before the crash, each complete
    # Re-running plans only what is missing, and ends with every image exactly once.
    data = tmp_path
    pd.DataFrame({"image_id": [i.image_id for i in good], "path": [i.path for i in good]}).pipe(
        _write_images_table, data
    )
    todo, skipped, rejects = plan_features.fn(data, "v1")
    assert skipped == 6 and len(todo) == 4 and not rejects
    extract_features(todo, fake_forward([]), store, "fake", "v1", batch_size=3, input_size=64, progress=False)
    index = store.index()
    assert len(index) == 10 and index["image_id"].is_unique


def test_an_edited_file_is_encoded_again_and_wins(tmp_path, images):
    from radcap.tasks.features import plan_features

    good = [i for i in images if i.image_id not in ("zero", "report")][:3]
    store = FeatureStore(tmp_path / "features")
    extract_features(good, fake_forward([]), store, "fake", "v1", batch_size=4, input_size=64, progress=False)
    before = dict(zip(*store.load("v1").values()))
    edited = Path(good[0].path)
    from PIL import Image

    Image.new("L", (100, 100), 255).save(edited)  # a different picture under the same name
    pd.DataFrame({"image_id": [i.image_id for i in good], "path": [i.path for i in good]}).pipe(
        _write_images_table, tmp_path
    )
    todo, skipped, _ = plan_features.fn(tmp_path, "v1")
    assert [t.image_id for t in todo] == [good[0].image_id] and skipped == 2
    extract_features(todo, fake_forward([]), store, "fake", "v1", batch_size=4, input_size=64, progress=False)
    after = dict(zip(*store.load("v1").values()))
    assert len(after) == 3 and after[good[0].image_id][0] > before[good[0].image_id][0]  # white image: brighter


def _write_images_table(frame: pd.DataFrame, data_dir: Path) -> None:
    from radcap.core.io import write_table
    from radcap.data_contracts import IMAGES

    n = len(frame)
    full = frame.assign(
        report_id=frame["image_id"],
        study_id=frame["image_id"],
        dataset="manifest",
        split="train",
        view="unknown",
        modality=None,
        plane=None,
        location=None,
        location_category=None,
        labels=[[] for _ in range(n)],
    )
    write_table(full[IMAGES.column_names], data_dir / "images.parquet", IMAGES)


def test_content_a_b_a_reads_a_vector_again(tmp_path, images):
    """load() returns the row of the file's current content, not the newest row of the image."""
    from PIL import Image

    from radcap.imaging.features import current_sha256

    item = next(i for i in images if i.image_id not in ("zero", "report"))
    path, store = Path(item.path), FeatureStore(tmp_path / "features")
    original = path.read_bytes()
    extract_features([item], fake_forward([]), store, "fake", "v1", batch_size=2, input_size=64, progress=False)
    vector_a = store.load("v1", {item.image_id: current_sha256(item.path)})["pooled"][0, 0]
    Image.new("L", (100, 100), 255).save(path)  # content B
    extract_features(
        [ImageItem(item.image_id, item.path, "")],
        fake_forward([]),
        store,
        "fake",
        "v1",
        batch_size=2,
        input_size=64,
        progress=False,
    )
    vector_b = store.load("v1", {item.image_id: current_sha256(item.path)})["pooled"][0, 0]
    path.write_bytes(original)  # back to A: the newest row is B's, but A's row is what the file holds
    now = store.load("v1", {item.image_id: current_sha256(item.path)})
    assert vector_b == 255 and vector_a < 255 and now["pooled"][0, 0] == vector_a
    assert store.load("v1", {item.image_id: None})["pooled"][0, 0] == vector_b  # file gone: newest row
    assert store.load("v1", {item.image_id: "f" * 64})["image_id"] == []  # content never encoded: no row


def test_rows_carry_the_hash_of_the_bytes_decoded(tmp_path, images):
    from PIL import Image

    from radcap.imaging.decode import file_sha256

    item = next(i for i in images if i.image_id not in ("zero", "report"))
    Image.new("L", (80, 80), 7).save(item.path)  # edited after planning: the plan's hash is stale
    store = FeatureStore(tmp_path / "features")
    extract_features([item], fake_forward([]), store, "fake", "v1", batch_size=2, input_size=64, progress=False)
    assert store.index()["sha256"].tolist() == [file_sha256(Path(item.path))] != [item.sha256]


def test_an_image_that_breaks_the_encoder_is_its_own_reject(tmp_path, images):
    """The batch is retried image by image; only the culprit is rejected. A model that fails on every
    image is a fault of the model, and stops the run."""

    from PIL import Image

    good = [i for i in images if i.image_id not in ("zero", "report")][:4]
    Image.new("L", (100, 100), 255).save(good[2].path)
    white = ImageItem(good[2].image_id, good[2].path, file_sha256(Path(good[2].path)))
    store = FeatureStore(tmp_path / "features")

    def forward(batch: np.ndarray):
        if any(b.mean() > 250 for b in batch):
            raise ValueError("cannot encode this one")
        return fake_forward([])(batch)

    result = extract_features(
        [*good[:2], white, good[3]], forward, store, "fake", "v1", batch_size=4, input_size=64, progress=False
    )
    assert result.encoded == 3 and [r["item"] for r in result.rejects] == [white.image_id]
    assert "encoder failed on this image (ValueError)" in result.rejects[0]["reason"]

    def broken(batch: np.ndarray):
        raise RuntimeError("model is broken")

    with pytest.raises(RuntimeError, match="model is broken"):
        extract_features(
            good[:2],
            broken,
            FeatureStore(tmp_path / "other"),
            "fake",
            "v1",
            batch_size=4,
            input_size=64,
            progress=False,
        )


def test_rows_stored_before_the_early_layer_statistics_are_encoded_again_once(tmp_path, images):
    """A store written before radcap 0.4 (parts without the `early` column): reading asks for early-layer
    statistics and gets NaN rows, not an error; the next features run encodes those images again, once, and
    reading then gives each image's new row; a forward pass without early outputs (an optimized build from
    before them) cannot write rows the guard would miss."""
    import pyarrow.parquet as pq

    from radcap.core.errors import RadcapError
    from radcap.data_contracts import FEATURES

    good = [i for i in images if i.image_id not in ("zero", "report")]
    store = FeatureStore(tmp_path / "features")
    extract_features(good[:4], fake_forward([]), store, "fake", "v1", batch_size=4, input_size=64, progress=False)
    (part,) = store.parts()
    old = pq.read_table(part).drop_columns(["early"])  # as radcap 0.3 wrote it
    assert "early" in FEATURES.column_names and "early" not in old.column_names
    part.unlink()
    pq.write_table(old, part.with_name("part-00000000000000000001-old-00000.parquet"))

    loaded = store.load("v1", early=True)
    assert loaded["early"].shape == (4, 1536) and np.isnan(loaded["early"]).all()
    todo, skipped, _ = store.plan(
        pd.DataFrame({"image_id": [i.image_id for i in good], "path": [i.path for i in good]}), "v1"
    )
    assert skipped == 0 and len(todo) == len(good)  # old rows count as not stored

    extract_features(todo, fake_forward([]), store, "fake", "v1", batch_size=4, input_size=64, progress=False)
    loaded = store.load("v1", {i.image_id: i.sha256 for i in good}, early=True)
    assert len(loaded["image_id"]) == len(good) and not np.isnan(loaded["early"]).any()
    np.testing.assert_allclose(loaded["early"][:, 0], loaded["pooled"][:, 0])  # each image's own row
    todo, skipped, _ = store.plan(
        pd.DataFrame({"image_id": [i.image_id for i in good], "path": [i.path for i in good]}), "v1"
    )
    assert skipped == len(good) and not todo

    def two_outputs(batch):
        return fake_forward([])(batch)[:2]

    with pytest.raises(RadcapError, match="optimize-encoder"):
        extract_features(good[:2], two_outputs, FeatureStore(tmp_path / "other"), "fake", "v2", 2, 64, progress=False)
