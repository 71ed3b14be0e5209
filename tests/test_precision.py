"""Encoder precisions: bf16 and int8 builds (OpenVINO, int8 calibrated on real images) match fp32 on other real
images; `radcap optimize-encoder` registers a build that `radcap features --precision` loads from the registry;
features at another precision are stored under their own key, never mixed with fp32's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radcap import read_captions
from tests.conftest import ingested_sample, run_cli_here

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


CALIBRATION = 20  # the first real X-rays calibrate the int8 build; the others measure it


@pytest.fixture(scope="module")
def xrays(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[:48]


@pytest.fixture(scope="module")
def int8_data(xrays, tmp_path_factory, prefect_api) -> Path:
    """A phantom data directory, and bf16 and int8 builds of the random:0 encoder registered (the int8 build
    calibrated on the first 20 real X-rays: no image is both calibrated on and measured)."""
    root = tmp_path_factory.mktemp("precision")
    calibration = root / "calibration"
    calibration.mkdir()
    for path in xrays[:CALIBRATION]:
        (calibration / path.name).write_bytes(path.read_bytes())
    done = run_cli_here("optimize-encoder", "--encoder", "random:0", "--precision", "bf16")
    assert done.returncode == 0, done.stderr[-3000:]  # a bf16 build exists; the int8 lookup must not take it
    missing = run_cli_here("optimize-encoder", "--encoder", "random:0", "--precision", "int8")
    assert missing.returncode == 2 and "--calibration" in missing.stderr and "Traceback" not in missing.stderr

    data = ingested_sample(root)
    # No int8 build of this encoder yet: one line saying how to make it.
    done = run_cli_here("features", "--data", str(data), "--encoder", "random:0", "--precision", "int8")
    assert done.returncode == 2 and "radcap optimize-encoder" in done.stderr and "Traceback" not in done.stderr

    (calibration / "notes.txt").write_text("not an image")  # skipped, not fatal
    done = run_cli_here(
        "--json",
        "optimize-encoder",
        "--encoder",
        "random:0",
        "--precision",
        "int8",
        "--calibration",
        str(calibration),
        "--images",
        str(CALIBRATION),
        "--out",
        str(root / "int8"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    built = json.loads(done.stdout.strip().splitlines()[-1])
    assert built["registered"].startswith("models:/radcap-encoder-optimized/")
    assert built["calibration_images"] == CALIBRATION
    return data


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_each_precision_matches_fp32_on_real_images(precision, int8_data, xrays):
    """The builds `radcap optimize-encoder` registered (int8 calibrated on 20 real X-rays) against the fp32
    encoder, on 16 other real X-rays no calibration saw."""
    from radcap.imaging.decode import prepare
    from radcap.imaging.encoders import resolve_encoder
    from radcap.imaging.precision import find_optimized_encoder, openvino_forward

    encoder = resolve_encoder("random:0")
    found = find_optimized_encoder(encoder.version, precision)
    assert found is not None
    _, folder = found
    assert {p.name for p in folder.iterdir()} == {"encoder.xml", "encoder.bin", "optimized.json"}
    held_out = np.stack([prepare(p, 224) for p in xrays[CALIBRATION:]])
    reference_pooled, reference_grid, reference_early = encoder.forward_fn()(held_out)
    pooled, grid, early = openvino_forward(folder, precision)(held_out)
    assert pooled.shape == reference_pooled.shape and grid.shape == reference_grid.shape
    assert early is not None and early.shape == reference_early.shape == (len(held_out), 1536)
    assert cosine(pooled, reference_pooled).mean() >= 0.99
    assert cosine(early, reference_early).mean() >= 0.99
    flat, reference_flat = grid.reshape(len(grid) * 49, -1), reference_grid.reshape(len(grid) * 49, -1)
    assert np.nanmean(cosine(flat, reference_flat)) >= 0.98


def test_features_at_int8_are_stored_apart_from_fp32(int8_data: Path):
    data = int8_data
    done = run_cli_here("--json", "features", "--data", str(data), "--encoder", "random:0", "--precision", "int8")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["precision"] == "int8" and summary["store_version"] == "random-seed0@int8"
    images = len(pd.read_parquet(data / "images.parquet"))
    assert summary["encoded"] == images

    # fp32 features are their own rows: none of the int8 ones is taken for them, and vice versa.
    done = run_cli_here("--json", "features", "--data", str(data), "--encoder", "random:0")
    assert done.returncode == 0, done.stderr[-3000:]
    fp32 = json.loads(done.stdout.strip().splitlines()[-1])
    assert fp32["encoded"] == images and fp32["already_stored"] == 0
    from radcap.imaging.features import FeatureStore

    store = FeatureStore(data / "features")
    int8, reference = store.load("random-seed0@int8"), store.load("random-seed0")
    assert len(int8["image_id"]) == len(reference["image_id"]) == images
    order = [int8["image_id"].index(i) for i in reference["image_id"]]
    # The same images' features (an untrained encoder on phantoms stays just under the 0.99 bound that trained
    # encoders on real images meet, tested above; the check below refuses it for exactly that).
    assert cosine(int8["pooled"][order], reference["pooled"]).mean() >= 0.98


@pytest.fixture(scope="module")
def xray_data(int8_data: Path, xrays: list[Path], tmp_path_factory) -> Path:
    """24 real chest X-rays (one study each) ingested from a manifest, with features at fp32 and bf16 (the bf16
    build `int8_data` registered): images that differ enough for a captioner to tell them apart, which the
    phantoms, near copies of one another to an untrained encoder, do not."""
    root = tmp_path_factory.mktemp("xray-precision")
    (root / "xrays").mkdir()
    chosen = xrays[CALIBRATION : CALIBRATION + 24]
    for path in chosen:
        (root / "xrays" / path.name).write_bytes(path.read_bytes())
    rows = [{"image": f"xrays/{p.name}", "caption": "no acute disease.", "split": "train"} for p in chosen]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    from radcap.flows.features import extract_features_flow
    from radcap.flows.ingest import ingest_reports

    data = root / "data"
    ingest_reports("manifest", root / "manifest.csv", data)
    for precision in ("fp32", "bf16"):
        assert not extract_features_flow(data, "random:0", 32, precision)["rejected"]
    return data


def test_a_captioner_reads_lower_precision_features_only_after_passing_the_check(xray_data: Path, tmp_path: Path):
    """With a captioner whose reports tell the studies apart (a teller trained on the data's fp32 features): the
    check passes at bf16 with every report the same, and `radcap caption --precision bf16` then writes, image by
    image, the reports fp32 features give."""
    import mlflow

    from radcap.captioning.data import load_caption_sets
    from radcap.registry.store import register_captioner
    from tests.conftest import make_teller_captioner

    data = xray_data
    make_teller_captioner(tmp_path / "teller", load_caption_sets(data, "random-seed0", ("train",), 2)["train"])
    mlflow.set_experiment("radcap-precision-test")
    with mlflow.start_run():
        version = register_captioner(tmp_path / "teller", "radcap-captioner-precision-test", {})
    uri = f"models:/radcap-captioner-precision-test/{version}"
    images = data.parent / "xrays"

    refused = run_cli_here(
        "caption", "--input", str(images), "--out", str(tmp_path / "c"), "--model", uri, "--precision", "bf16"
    )
    assert refused.returncode == 2 and "radcap check-precision" in refused.stderr and "Traceback" not in refused.stderr

    split = pd.read_parquet(data / "reports.parquet")["split"].value_counts().index[0]

    def check(precision: str) -> tuple[int, dict]:
        done = run_cli_here(
            "--json",
            "check-precision",
            "--model",
            uri,
            "--data",
            str(data),
            "--precision",
            precision,
            "--split",
            split,
            "--no-meteor",
        )
        assert done.returncode in (0, 1), done.stderr[-3000:]
        return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])

    code, passed = check("bf16")
    assert code == 0 and passed["passed"] and passed["cosine_mean"] >= 0.99 and passed["identical_reports"] == 1.0
    assert passed["accepted_precisions"] == ["fp32", "bf16"] and passed["metrics"]["CIDEr"]["relative_change"] == 0
    assert json.loads((data / "precision-check-bf16.json").read_text())["studies"] == passed["studies"] > 0

    captions = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"c-{precision}"
        done = run_cli_here(
            "caption", "--input", str(images), "--out", str(out), "--model", uri, "--precision", precision
        )
        assert done.returncode in (0, 1), done.stderr[-3000:]
        captions[precision] = read_captions(out).sort_values("source_path", ignore_index=True)
    assert set(captions["bf16"]["encoder_version"]) == {"random-seed0@bf16"}
    assert captions["fp32"]["caption"].nunique() >= 3  # reports that depend on the images
    assert captions["bf16"]["source_path"].tolist() == captions["fp32"]["source_path"].tolist()
    assert captions["bf16"]["caption"].tolist() == captions["fp32"]["caption"].tolist()
    still_refused = run_cli_here(
        "caption", "--input", str(images), "--out", str(tmp_path / "d"), "--model", uri, "--precision", "int8"
    )
    assert still_refused.returncode == 2


def test_the_check_refuses_features_that_drift_or_reports_that_change(tmp_path: Path):
    from radcap.captioning.bundle import load_bundle
    from radcap.captioning.data import CaptionSet
    from radcap.evaluation.fidelity import fidelity_check
    from tests.conftest import make_teller_captioner

    rng = np.random.default_rng(0)
    n, dim = 6, 1024
    pooled = rng.random((n, 2, dim), np.float32) * 0.2
    grid = (rng.random((n, 2, 49, dim), np.float32) * 0.2).astype(np.float16)
    ids, texts = [f"r{i}" for i in range(n)], ["left pleural effusion."] * 3 + ["no acute disease."] * 3
    reference = CaptionSet(ids, texts, pooled, np.ones((n, 2), np.float32), grid)
    make_teller_captioner(tmp_path / "teller", reference)  # its reports differ between these studies
    bundle = load_bundle(tmp_path / "teller")
    same = CaptionSet(ids[::-1], texts[::-1], pooled[::-1].copy(), np.ones((n, 2), np.float32), grid[::-1].copy())
    check = fidelity_check(bundle, reference, same, "int8", meteor=False)  # matched by report id, not position
    assert check["passed"] and check["cosine_mean"] == pytest.approx(1.0) and check["identical_reports"] == 1.0

    drifted = CaptionSet(
        ids, texts, pooled + rng.normal(0, 0.05, pooled.shape).astype(np.float32), np.ones((n, 2), np.float32), grid
    )
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


@pytest.fixture(scope="module")
def retriever_uri(int8_data: Path, tmp_path_factory) -> str:
    """A tiny contrastive retriever trained and registered on the fp32 features of `int8_data`: trained to fit
    them (40 epochs, no early stop), so that its first answers are not near ties that bf16 rounding or another
    batch composition could flip (2 epochs left them so: on a CPU with bf16 instructions, R@1 moved by 14%)."""
    tiny = {
        "RADCAP_RETRIEVAL__DIM": "16",
        "RADCAP_RETRIEVAL__EMBED_DIM": "16",
        "RADCAP_RETRIEVAL__TEXT_UNITS": "16",
        "RADCAP_RETRIEVAL__HIDDEN": "32",
        "RADCAP_RETRIEVAL__BATCH_SIZE": "8",
        "RADCAP_RETRIEVAL__MIN_COUNT": "1",
        "RADCAP_RETRIEVAL__DROPOUT": "0",
        "RADCAP_RETRIEVAL__LEARNING_RATE": "1e-2",
        "RADCAP_RETRIEVAL__PATIENCE": "100",
        "RADCAP_RETRIEVAL__REGISTERED_NAME": "radcap-retriever-precision-test",
    }
    from radcap.flows.features import extract_features_flow

    for precision in ("fp32", "bf16"):
        assert not extract_features_flow(int8_data, "random:0", 32, precision)["rejected"]
    done = run_cli_here(
        "--json",
        "train-retrieval",
        "--data",
        str(int8_data),
        "--epochs",
        "40",
        "--no-meteor",
        "--out",
        str(tmp_path_factory.mktemp("retriever")),
        env=tiny,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["registered"]


def assert_same_answers(results: pd.DataFrame, reference: pd.DataFrame, atol: float) -> None:
    """Each query's first answer (`results`, top 1) is the reference's first (`reference`, top 5 per query), or one
    the reference scores within `atol` of it: a tie that a rounding may break either way. Its score agrees within
    `atol` too."""
    for query, answer in results.groupby("query", sort=False):
        ranked = reference[reference["query"] == query].sort_values("rank")
        best = ranked["score"].iloc[0]
        tied = ranked[ranked["score"] >= best - atol]
        item, score = answer["item_id"].iloc[0], answer["score"].iloc[0]
        assert item in set(tied["item_id"]), (query, item, ranked[["item_id", "score"]].to_dict("records"))
        assert abs(score - best) <= atol, (query, score, best)


def test_a_retriever_retrieves_at_lower_precision_only_after_passing_the_check(
    int8_data: Path, retriever_uri: str, tmp_path: Path, dask_scheduler: str
):
    data, uri = int8_data, retriever_uri
    images = data.parent / "sample" / "images"

    refused = run_cli_here(
        "retrieve", "--input", str(images), "--out", str(tmp_path / "r"), "--model", uri, "--precision", "bf16"
    )
    assert refused.returncode == 2 and "radcap check-precision" in refused.stderr and "Traceback" not in refused.stderr

    split = pd.read_parquet(data / "reports.parquet")["split"].value_counts().index[0]
    done = run_cli_here(
        "--json", "check-precision", "--model", uri, "--data", str(data), "--precision", "bf16", "--split", split
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    check = json.loads(done.stdout.strip().splitlines()[-1])
    assert check["passed"] and check["studies"] > 0 and check["identical_top1"] == 1.0
    assert set(check["metrics"]) == {
        "image_to_report_R@1",
        "image_to_report_R@5",
        "image_to_report_R@10",
        "mean_recall",
    }
    assert check["accepted_precisions"] == ["fp32", "bf16"]

    results = {}
    for precision, top_k in (("fp32", "5"), ("bf16", "1")):
        done = run_cli_here(
            "retrieve",
            "--input",
            str(images),
            "--out",
            str(tmp_path / precision),
            "--model",
            uri,
            "--precision",
            precision,
            "--top-k",
            top_k,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results[precision] = pd.read_parquet(tmp_path / precision / "results.parquet")
    fp32, bf16 = results["fp32"], results["bf16"]
    assert set(fp32["encoder_version"]) == {"random-seed0"} and set(bf16["encoder_version"]) == {"random-seed0@bf16"}
    assert fp32[fp32["rank"] == 1]["item_id"].nunique() >= 2  # answers that depend on the images
    assert bf16["query"].tolist() == fp32[fp32["rank"] == 1]["query"].tolist()
    assert_same_answers(bf16, fp32, atol=0.01)  # bf16 rounding of the features

    # The same retrieval across a 2-process Dask cluster (tasks of 4 images): the same answers, in the same order.
    done = run_cli_here(
        "retrieve",
        "--input",
        str(images),
        "--out",
        str(tmp_path / "cluster"),
        "--model",
        uri,
        "--top-k",
        "1",
        "--cluster",
        dask_scheduler,
        env={"RADCAP_CLUSTER_TASK_IMAGES": "4", "RADCAP_CAPTION__BATCH_SIZE": "4"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    spread = pd.read_parquet(tmp_path / "cluster" / "results.parquet")
    assert spread["query"].tolist() == fp32[fp32["rank"] == 1]["query"].tolist()
    assert_same_answers(spread, fp32, atol=1e-4)  # only the batch composition differs


def test_the_retrieval_check_refuses_rankings_that_change(int8_data: Path, retriever_uri: str):
    """On a trained retriever: the same features pass with every first answer kept; features of other
    studies (a build that scrambles images) fail on recall."""
    from radcap.captioning.data import load_caption_sets
    from radcap.evaluation.fidelity import retrieval_fidelity_check
    from radcap.retrieval.retriever import load_retriever

    loaded = load_retriever(retriever_uri)
    split = pd.read_parquet(int8_data / "reports.parquet")["split"].value_counts().index[0]
    reference = load_caption_sets(int8_data, "random-seed0", (split,), 2)[split]
    check = retrieval_fidelity_check(loaded.bundle, loaded.index, reference, reference, "bf16")
    assert check["passed"] and check["identical_top1"] == 1.0 and check["cosine_mean"] == pytest.approx(1.0)

    from radcap.captioning.data import CaptionSet

    order = np.roll(np.arange(len(reference)), 1)
    scrambled = CaptionSet(reference.report_ids, reference.texts, reference.pooled[order], reference.view_mask[order])
    check = retrieval_fidelity_check(loaded.bundle, loaded.index, reference, scrambled, "bf16")
    assert not check["passed"] and check["identical_top1"] < 1.0
    assert any(f.startswith(("image_to_report_R@1", "mean_recall")) for f in check["failures"])
