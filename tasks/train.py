"""Decoder training tasks: assemble examples, build the vocabulary, train, log to MLflow, register."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect.logging import get_run_logger

from data_contracts import IMAGES, REPORTS
from radcap.caption_data import CaptionSet, build_caption_set
from radcap.caption_training import CaptionTraining, train_captioner
from radcap.catalog import DataCatalog
from radcap.errors import RadcapError
from radcap.features import FeatureStore
from radcap.io import read_table, write_rejects
from radcap.settings import CaptionerSettings
from radcap.vocab import Vocabulary
from tasks import uncached


def encoder_spec(data_dir: Path, version: str) -> str | None:
    """The spec that reloads a feature-store encoder version exactly (a file encoder's recorded path)."""
    from radcap.encoders import spec_for_version

    return FeatureStore(DataCatalog(data_dir).features).encoder_specs().get(version) or spec_for_version(version)


@uncached
def training_key(data_dir: Path, encoder_version: str, cfg: CaptionerSettings) -> str:
    """Same data version, encoder and settings -> same key: what a cached training result is found by."""
    import hashlib

    data_version = json.loads(DataCatalog(data_dir).ingest_summary.read_text())["data_version"]
    payload = json.dumps([data_version, encoder_version, cfg.model_dump()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@uncached
def find_trained(name: str, key: str) -> dict | None:
    import mlflow

    versions = [v for v in mlflow.MlflowClient().search_model_versions(f"name='{name}'")
                if v.tags.get("training_key") == key]
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    get_run_logger().info("inputs unchanged since %s version %s (training key %s): not retrained", name, newest.version, key)
    return {"registered": f"models:/{name}/{newest.version}", "reused": True, "rejected": 0,
            "architecture": newest.tags.get("architecture"), "training_key": key}


@uncached
def stored_encoder_version(data_dir: Path, requested: str | None) -> str:
    catalog = DataCatalog(data_dir)
    if requested:
        return requested
    if not catalog.feature_summary.exists():
        raise RadcapError(f"{catalog.features}: no features yet; run `radcap features --data {data_dir}` first")
    return json.loads(catalog.feature_summary.read_text())["encoder_version"]


@uncached
def caption_sets(data_dir: Path, encoder_version: str, cfg: CaptionerSettings, splits: tuple[str, ...]) -> dict[str, CaptionSet]:
    catalog = DataCatalog(data_dir)
    reports, images = read_table(catalog.reports, REPORTS), read_table(catalog.images, IMAGES)
    store = FeatureStore(catalog.features)
    grid = cfg.architecture == "show-attend-tell"
    sets = {s: build_caption_set(reports, images, store, encoder_version, s, cfg.max_views, grid) for s in splits}
    for split, data in sets.items():
        if len(data) == 0:
            raise RadcapError(f"{data_dir}: no '{split}' reports have features for encoder {encoder_version}")
    get_run_logger().info("examples: %s; without features: %s",
                          {s: len(d) for s, d in sets.items()}, {s: len(d.rejects) for s, d in sets.items()})
    return sets


@uncached
def build_vocabulary(train: CaptionSet, cfg: CaptionerSettings) -> Vocabulary:
    vocab = Vocabulary.build(train.texts, cfg.min_count, cfg.max_length)
    get_run_logger().info("vocabulary: %d tokens (min count %d, max length %d)", len(vocab), cfg.min_count, cfg.max_length)
    return vocab


@uncached
def fit_captioner(train: CaptionSet, val: CaptionSet, vocab: Vocabulary, cfg: CaptionerSettings, extra: dict) -> CaptionTraining:
    import mlflow

    logger = get_run_logger()

    def log_epoch(e) -> None:
        metrics = {"train_loss": e.train_loss, "val_loss": e.val_loss, "epoch_seconds": e.seconds,
                   **{f"val_{k}": v for k, v in e.val_scores.items()}}
        mlflow.log_metrics({k.replace("-", "_"): v for k, v in metrics.items()}, step=e.epoch)
        logger.info("epoch %d: %s", e.epoch, {k: round(v, 4) for k, v in metrics.items()})

    return train_captioner(train, val, vocab, cfg, extra, on_epoch=log_epoch)


@uncached
def tune_decoding(result: CaptionTraining, val: CaptionSet, cfg: CaptionerSettings) -> dict:
    """Choose the beam-search length penalty on the validation reports and store it in the bundle's config."""
    import mlflow

    from radcap.metrics import caption_metrics

    decoding = result.bundle.config.setdefault("decoding", {})
    if not cfg.length_penalty_grid or cfg.beam_width <= 1:
        return decoding
    metric = "CIDEr" if cfg.selection_metric == "val_loss" else cfg.selection_metric
    references = {rid: [text] for rid, text in zip(val.report_ids, val.texts)}
    scores = {}
    for penalty in cfg.length_penalty_grid:
        captions = result.bundle.caption(val.features(slice(None)), beam_width=cfg.beam_width, length_penalty=penalty,
                                         no_repeat_ngram=cfg.no_repeat_ngram)
        scores[penalty] = caption_metrics(references, dict(zip(val.report_ids, captions)), meteor=False)[metric]
    best = max(scores, key=lambda p: (scores[p], -abs(p - cfg.length_penalty)))
    decoding["length_penalty"] = best
    mlflow.log_params({"decoding_length_penalty": best})
    mlflow.log_dict({str(p): s for p, s in scores.items()}, "length_penalty_selection.json")
    get_run_logger().info("length penalty %s chosen on val by beam-%d %s: %s", best, cfg.beam_width, metric,
                          {p: round(s, 4) for p, s in scores.items()})
    return decoding


def _loss_figure(result: CaptionTraining, metric: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e.epoch for e in result.history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [e.train_loss for e in result.history], marker="o", label="train")
    left.plot(epochs, [e.val_loss for e in result.history], marker="o", label="val")
    left.set(xlabel="epoch", ylabel="masked cross-entropy", title="loss")
    left.legend()
    for name in ("CIDEr", "BLEU-4", "ROUGE-L"):
        right.plot(epochs, [e.val_scores[name] for e in result.history], marker="o", label=name)
    right.axvline(result.best_epoch, color="grey", linestyle=":", label=f"kept (epoch {result.best_epoch})")
    right.set(xlabel="epoch", title=f"validation (selection: {metric})")
    right.legend()
    fig.tight_layout()
    return fig


def _attention_figure(bundle, data: CaptionSet, image_paths: dict[str, str], count: int = 2):
    """The words of greedy captions with their attention drawn over the study's first image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from radcap.imaging import prepare

    index = np.arange(min(count, len(data)))
    ids, attention = bundle.decoder.greedy(data.features(index))
    words_per_row = 6
    fig, axes = plt.subplots(len(index), words_per_row, figsize=(2.2 * words_per_row, 2.4 * len(index)), squeeze=False)
    for r, i in enumerate(index):
        path = image_paths.get(data.image_ids[i][0])
        image = prepare(Path(path), 224) if path else np.zeros((224, 224), np.uint8)
        tokens = [bundle.vocab.tokens[t] for t in ids[r]]
        for c in range(words_per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(tokens):
                continue
            ax.imshow(image, cmap="gray")
            heat = attention[r, c, :49].reshape(7, 7)  # the first view's cells
            ax.imshow(np.kron(heat, np.ones((32, 32))), cmap="jet", alpha=0.4, extent=(0, 224, 224, 0))
            ax.set_title(tokens[c], fontsize=9)
    fig.tight_layout()
    return fig


@uncached
def log_and_register(result: CaptionTraining, sets: dict[str, CaptionSet], data_dir: Path, out: Path,
                     cfg: CaptionerSettings, tags: dict) -> dict:
    """Bundle to `out/`, artifacts and plots to MLflow, and a `radcap-captioner` version (pyfunc, as code)."""
    import matplotlib.pyplot as plt
    import mlflow

    bundle = result.bundle
    bundle.save(out / "captioner")
    rejects = [r for s in sets.values() for r in s.rejects]
    write_rejects(rejects, out / "rejects.parquet")
    fig = _loss_figure(result, cfg.selection_metric)
    mlflow.log_figure(fig, "loss_curve.png")
    plt.close(fig)
    val = sets["val"]
    samples = bundle.caption(val.features(slice(0, 8)))
    table = pd.DataFrame({"report_id": val.report_ids[:8], "reference": val.texts[:8], "generated": samples})
    mlflow.log_text(markdown_table(table), "samples.md")
    if bundle.model.attention:
        images = read_table(DataCatalog(data_dir).images, IMAGES)
        fig = _attention_figure(bundle, val, dict(zip(images["image_id"], images["path"])))
        mlflow.log_figure(fig, "attention_maps.png")
        plt.close(fig)
    mlflow.log_dict(bundle.vocab.to_json(), "vocab.json")
    best = next(e for e in result.history if e.epoch == result.best_epoch)
    version = register_bundle(out / "captioner", cfg, {**tags, "best_epoch": result.best_epoch,
                                                      **{f"val_{k}": f"{v:.4f}" for k, v in best.val_scores.items()}})
    return {
        "registered": f"models:/{cfg.registered_name}/{version}",
        "run_id": mlflow.active_run().info.run_id,
        "architecture": cfg.architecture,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "vocabulary": len(bundle.vocab),
        **{f"val_{k}": round(v, 4) for k, v in best.val_scores.items()},
        "train_examples": len(sets["train"]),
        "val_examples": len(val),
        "rejected": len(rejects),
    }


def register_bundle(folder: Path, cfg: CaptionerSettings, tags: dict) -> str:
    """Log a saved bundle as the pyfunc model (as code) in the active run, register it, tag the version."""
    import mlflow

    info = mlflow.pyfunc.log_model(
        name="captioner",
        python_model=str(Path(__file__).resolve().parents[1] / "models" / "pyfunc_captioner.py"),
        artifacts={"captioner": str(folder)},
        registered_model_name=cfg.registered_name,
        signature=pyfunc_signature(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("decoding", {})),
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in {**tags, "architecture": cfg.architecture}.items():
        client.set_model_version_tag(cfg.registered_name, version, key, str(value))
    return version


def pyfunc_signature(decoding: dict):
    """Image paths (or feature vectors) in, one caption per study out; decoding settings as params, whose
    defaults are the bundle's own (MLflow fills them in when a request gives none: they must be the values
    chosen on validation, not the settings' starting point)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", "image_path", required=False), ColSpec("string", "study_id", required=False),
        ColSpec("string", "view", required=False), ColSpec(Array("double"), "pooled", required=False),
        ColSpec(Array("double"), "grid", required=False),
    ])
    outputs = Schema([ColSpec("string", "study_id"), ColSpec("string", "caption")])
    params = ParamSchema([
        ParamSpec("beam_width", "long", int(decoding.get("beam_width", 1))),
        ParamSpec("length_penalty", "double", float(decoding.get("length_penalty", 0.7))),
        ParamSpec("no_repeat_ngram", "long", int(decoding.get("no_repeat_ngram", 0))),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(value) -> str:
        text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
