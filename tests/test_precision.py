"""Encoder precisions: bf16 and int8 builds (OpenVINO, int8 calibrated on real images) match fp32 on other real
images; `radcap optimize-encoder` registers a build that `radcap features --precision` loads from the registry;
features at another precision are stored under their own key, never mixed with fp32's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.realdata


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def xrays(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[:48]


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_each_precision_matches_fp32_on_real_images(precision, xrays, tmp_path):
    from radcap.encoders import resolve_encoder
    from radcap.imaging import prepare
    from radcap.models.encoder import uint8_feature_model
    from radcap.precision import OptimizedMeta, convert, openvino_forward, quantize_int8, save_optimized

    encoder = resolve_encoder("random:0")
    calibration = np.stack([prepare(p, 224) for p in xrays[:32]])
    held_out = np.stack([prepare(p, 224) for p in xrays[32:]])  # never seen by the calibration
    model = convert(uint8_feature_model(encoder.model, 224), 224)
    if precision == "int8":
        model = quantize_int8(model, calibration)
    folder = save_optimized(model, OptimizedMeta(precision, encoder.version, encoder.spec, 224, 32), tmp_path / "ir")
    assert {p.name for p in folder.iterdir()} == {"encoder.xml", "encoder.bin", "optimized.json"}

    reference_pooled, reference_grid = encoder.forward_fn()(held_out)
    pooled, grid = openvino_forward(folder, precision)(held_out)
    assert pooled.shape == reference_pooled.shape and grid.shape == reference_grid.shape
    assert cosine(pooled, reference_pooled).mean() >= 0.99
    flat, reference_flat = grid.reshape(len(grid) * 49, -1), reference_grid.reshape(len(grid) * 49, -1)
    assert np.nanmean(cosine(flat, reference_flat)) >= 0.98


@pytest.fixture(scope="module")
def int8_data(xrays, tmp_path_factory, prefect_api) -> Path:
    """A phantom data directory with features at fp32 and int8 (the int8 build calibrated on other phantoms)."""
    root = tmp_path_factory.mktemp("precision")
    # Calibration phantoms of another seed than the data's: no image is both calibrated on and measured.
    assert run_cli("sample", "--out", str(root / "calibration"), "--studies", "12",
                   env={"RADCAP_SAMPLE__SEED": "11"}).returncode == 0
    done = run_cli("optimize-encoder", "--encoder", "random:0", "--precision", "bf16")
    assert done.returncode == 0, done.stderr[-3000:]  # a bf16 build exists; the int8 lookup must not take it
    missing = run_cli("optimize-encoder", "--encoder", "random:0", "--precision", "int8")
    assert missing.returncode == 2 and "--calibration" in missing.stderr and "Traceback" not in missing.stderr

    assert run_cli("sample", "--out", str(root / "sample"), "--studies", "6").returncode == 0
    data = root / "data"
    done = run_cli("ingest", "--format", "iu-xml", "--source", str(root / "sample" / "ecgen-radiology"),
                   "--images", str(root / "sample" / "images"), "--views",
                   str(root / "sample" / "indiana_projections.csv"), "--out", str(data))
    assert done.returncode == 0, done.stderr
    # No int8 build of this encoder yet: one line saying how to make it.
    done = run_cli("features", "--data", str(data), "--encoder", "random:0", "--precision", "int8")
    assert done.returncode == 2 and "radcap optimize-encoder" in done.stderr and "Traceback" not in done.stderr

    calibration = root / "calibration" / "images"
    (calibration / "notes.txt").write_text("not an image")  # skipped, not fatal
    done = run_cli("--json", "optimize-encoder", "--encoder", "random:0", "--precision", "int8",
                   "--calibration", str(calibration), "--images", "20", "--out", str(root / "int8"))
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads(done.stdout.strip().splitlines()[-1])
    assert built["registered"].startswith("models:/radcap-encoder-optimized/") and built["calibration_images"] == 20
    return data


def test_features_at_int8_are_stored_apart_from_fp32(int8_data: Path):
    data = int8_data
    done = run_cli("--json", "features", "--data", str(data), "--encoder", "random:0", "--precision", "int8")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["precision"] == "int8" and summary["store_version"] == "random-seed0@int8"
    images = len(pd.read_parquet(data / "images.parquet"))
    assert summary["encoded"] == images

    # fp32 features are their own rows: none of the int8 ones is taken for them, and vice versa.
    done = run_cli("--json", "features", "--data", str(data), "--encoder", "random:0")
    assert done.returncode == 0, done.stderr[-3000:]
    fp32 = json.loads(done.stdout.strip().splitlines()[-1])
    assert fp32["encoded"] == images and fp32["already_stored"] == 0
    from radcap.features import FeatureStore

    store = FeatureStore(data / "features")
    int8, reference = store.load("random-seed0@int8"), store.load("random-seed0")
    assert len(int8["image_id"]) == len(reference["image_id"]) == images
    order = [int8["image_id"].index(i) for i in reference["image_id"]]
    # The same images' features (an untrained encoder on phantoms stays just under the 0.99 bound that trained
    # encoders on real images meet, tested above; the check below refuses it for exactly that).
    assert cosine(int8["pooled"][order], reference["pooled"]).mean() >= 0.98


def test_a_captioner_reads_lower_precision_features_only_after_passing_the_check(
        int8_data: Path, parrot_captioner: Path, tmp_path: Path):
    import mlflow

    from radcap.registry import register_captioner

    data = int8_data
    for precision in ("fp32", "bf16", "int8"):  # resumable: nothing is encoded twice after the test above
        done = run_cli("features", "--data", str(data), "--encoder", "random:0", "--precision", precision)
        assert done.returncode == 0, done.stderr[-3000:]
    mlflow.set_experiment("radcap-precision-test")
    with mlflow.start_run():
        version = register_captioner(parrot_captioner, "radcap-captioner-precision-test", {})
    uri = f"models:/radcap-captioner-precision-test/{version}"
    images = data.parent / "sample" / "images"

    refused = run_cli("caption", "--input", str(images), "--out", str(tmp_path / "c"), "--model", uri,
                      "--precision", "bf16")
    assert refused.returncode == 2 and "radcap check-precision" in refused.stderr and "Traceback" not in refused.stderr

    split = pd.read_parquet(data / "reports.parquet")["split"].value_counts().index[0]

    def check(precision: str) -> tuple[int, dict]:
        done = run_cli("--json", "check-precision", "--model", uri, "--data", str(data), "--precision", precision,
                       "--split", split, "--no-meteor")
        assert done.returncode in (0, 1), done.stderr[-3000:]
        return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])

    code, passed = check("bf16")
    assert code == 0 and passed["passed"] and passed["cosine_mean"] >= 0.99 and passed["identical_reports"] == 1.0
    assert passed["accepted_precisions"] == ["fp32", "bf16"] and passed["metrics"]["CIDEr"]["relative_change"] == 0
    assert json.loads((data / "precision-check-bf16.json").read_text())["studies"] == passed["studies"] > 0

    done = run_cli("caption", "--input", str(images), "--out", str(tmp_path / "c"), "--model", uri,
                   "--precision", "bf16")
    assert done.returncode in (0, 1), done.stderr[-3000:]
    captions = pd.read_parquet(tmp_path / "c" / "captions.parquet")
    assert len(captions) and set(captions["encoder_version"]) == {"random-seed0@bf16"}
    assert set(captions["caption"]) == {"left pleural effusion."}
    still_refused = run_cli("caption", "--input", str(images), "--out", str(tmp_path / "d"), "--model", uri,
                            "--precision", "int8")
    assert still_refused.returncode == 2


def test_the_check_refuses_features_that_drift_or_reports_that_change(parrot_captioner: Path):
    from radcap.caption_data import CaptionSet
    from radcap.captioner_bundle import load_bundle
    from radcap.precision import fidelity_check

    bundle = load_bundle(parrot_captioner)
    rng = np.random.default_rng(0)
    n, dim = 6, bundle.config.feature_dim
    pooled = rng.random((n, 2, dim), np.float32) * 0.2
    grid = (rng.random((n, 2, 49, dim), np.float32) * 0.2).astype(np.float16)
    ids, texts = [f"r{i}" for i in range(n)], ["left pleural effusion."] * 3 + ["no acute disease."] * 3
    reference = CaptionSet(ids, texts, pooled, np.ones((n, 2), np.float32), grid)
    same = CaptionSet(ids[::-1], texts[::-1], pooled[::-1].copy(), np.ones((n, 2), np.float32), grid[::-1].copy())
    check = fidelity_check(bundle, reference, same, "int8", meteor=False)  # matched by report id, not position
    assert check["passed"] and check["cosine_mean"] == pytest.approx(1.0) and check["identical_reports"] == 1.0

    drifted = CaptionSet(ids, texts, pooled + rng.normal(0, 0.05, pooled.shape).astype(np.float32),
                         np.ones((n, 2), np.float32), grid)
    check = fidelity_check(bundle, reference, drifted, "int8", meteor=False)
    assert not check["passed"] and check["cosine_mean"] < 0.99 and any("cosine" in f for f in check["failures"])

    class Muted:  # the same features, but reports that lose their last word at the lower precision
        def __init__(self):
            self.calls = 0

        def report(self, features):
            self.calls += 1
            reports = bundle.report(features)
            return reports if self.calls == 1 else [r.rsplit(" ", 1)[0] for r in reports]

    check = fidelity_check(Muted(), reference, reference, "int8", meteor=False)
    assert not check["passed"] and check["identical_reports"] == 0.0
    assert any(f.startswith("CIDEr") for f in check["failures"])
