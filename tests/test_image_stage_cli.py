"""The image stage as a user runs it: pretrain a tiny encoder, register it, extract features with it,
re-run (nothing recomputed), and a broken image file as a reject with exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, prefect_api) -> Path:
    root = tmp_path_factory.mktemp("stage")
    assert run_cli("sample", "--out", str(root / "sample"), "--studies", "16").returncode == 0
    done = run_cli(
        "ingest", "--format", "iu-xml", "--source", str(root / "sample" / "ecgen-radiology"),
        "--images", str(root / "sample" / "images"), "--views", str(root / "sample" / "indiana_projections.csv"),
        "--out", str(root / "data"),
    )
    assert done.returncode == 0, done.stderr
    return root / "data"


def test_pretrain_register_and_extract(data_dir: Path):
    env = {"RADCAP_ENCODER__MIN_LABEL_COUNT": "2"}
    done = run_cli("pretrain-encoder", "--data", str(data_dir), "--epochs", "1", "--image-size", "64",
                   "--batch-size", "8", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((data_dir / "encoder" / "pretrain.json").read_text())
    assert summary["registered"].startswith("models:/radcap-encoder/") and summary["output_units"] >= 2
    assert summary["train_images"] > 0 and summary["rejected"] == 0
    assert (data_dir / "encoder" / "encoder.keras").exists()
    labels = json.loads((data_dir / "encoder" / "labels.json").read_text())
    assert any(label.startswith("cxr14:") for label in labels["labels"])

    # No --encoder: the latest registered version is used and named in the store.
    images = pd.read_parquet(data_dir / "images.parquet")
    broken = Path(images["path"].iloc[0])
    broken.write_bytes(broken.read_bytes()[:200])  # truncated after ingestion
    done = run_cli("features", "--data", str(data_dir), "--batch-size", "8")
    assert done.returncode == 1, done.stderr[-3000:]  # finished, one input rejected
    first = json.loads((data_dir / "features" / "features.json").read_text())
    version = summary["registered"].removeprefix("models:/")
    assert first["encoder_version"] == version
    assert first["encoded"] == len(images) - 1 and first["rejected"] == 1
    rejects = pd.read_parquet(data_dir / "features" / "rejects.parquet")
    assert rejects["source"].tolist() == [str(broken)] and "cannot decode" in rejects["reason"].iloc[0]

    from radcap.features import FeatureStore

    stored = FeatureStore(data_dir / "features").load(version, grid=True)
    assert len(stored["image_id"]) == len(images) - 1
    assert stored["grid"].shape == (len(images) - 1, 7, 7, 1024) and stored["grid"].dtype.name == "float16"
    assert stored["pooled"].std(axis=0).max() > 0  # images differ, so do their features

    again = run_cli("features", "--data", str(data_dir), "--encoder", summary["registered"], "--batch-size", "8")
    assert again.returncode == 1
    second = json.loads((data_dir / "features" / "features.json").read_text())
    assert second["encoded"] == 0 and second["already_stored"] == len(images) - 1 and second["rejected"] == 1
    assert len(FeatureStore(data_dir / "features").index()) == len(images) - 1  # nothing duplicated


def test_unknown_encoder_is_a_usage_error(data_dir: Path):
    done = run_cli("features", "--data", str(data_dir), "--encoder", str(data_dir / "nope.h5"))
    assert done.returncode == 2 and "encoder file not found" in done.stderr and "Traceback" not in done.stderr
