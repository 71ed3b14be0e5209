"""Encoder pretraining tasks: gather labelled images, decode them once, train, log and register in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect.logging import get_run_logger

from data_contracts import IMAGES, LABELLED_IMAGES, REPORTS
from radcap.catalog import DataCatalog
from radcap.errors import RadcapError
from radcap.io import read_table, write_json, write_rejects, write_table
from radcap.labels import LabelSpace, labelled_images
from radcap.pretraining import EpochStats, TrainResult, decode_images, train_encoder
from radcap.settings import EncoderSettings
from tasks import uncached


@uncached
def gather_labelled_images(data_dirs: list[Path], out: Path) -> pd.DataFrame:
    """Labels of every image of every data directory (see radcap.labels), written to `out/labelled_images.parquet`."""
    frames = []
    for data_dir in data_dirs:
        catalog = DataCatalog(data_dir)
        images, reports = read_table(catalog.images, IMAGES), read_table(catalog.reports, REPORTS)
        frames.append(labelled_images(images, reports))
    frame = pd.concat(frames, ignore_index=True)
    duplicated = frame["image_id"][frame["image_id"].duplicated()]
    if len(duplicated):
        raise RadcapError(f"image id '{duplicated.iloc[0]}' occurs in more than one data directory; ingest them apart")
    if frame.empty:
        raise RadcapError(f"no labelled images with files in {', '.join(map(str, data_dirs))}")
    write_table(frame, out / "labelled_images.parquet", LABELLED_IMAGES)
    get_run_logger().info("%d labelled images (%s)", len(frame), frame["split"].value_counts().to_dict())
    return frame


@uncached
def decode_split(frame: pd.DataFrame, split: str, out: Path, size: int) -> tuple[np.ndarray, pd.DataFrame, list[dict]]:
    """Pixels (memmap) and rows of one split's decodable images, and the rejects of the others."""
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        return np.zeros((0, size, size), np.uint8), rows, []
    pixels, reasons = decode_images(rows["path"].tolist(), size, out / f"pixels-{split}-{size}.npy")
    ok = np.array([reason is None for reason in reasons], dtype=bool)
    rejects = [
        {"source": path, "item": image_id, "kind": "image", "stage": "pretrain-encoder", "reason": reason}
        for path, image_id, reason in zip(rows["path"], rows["image_id"], reasons)
        if reason is not None
    ]
    if ok.all():
        return pixels, rows, rejects
    return pixels[ok], rows[ok].reset_index(drop=True), rejects  # fancy indexing copies only the good ones


@uncached
def fit_label_space(train_rows: pd.DataFrame, cfg: EncoderSettings) -> LabelSpace:
    space = LabelSpace.fit(train_rows, cfg.min_label_count)
    if not space.labels:
        raise RadcapError(
            f"no label has {cfg.min_label_count} positive training images; lower encoder.min_label_count "
            "or add labelled data (MeSH terms, MedPix metadata or a manifest `labels` column)"
        )
    get_run_logger().info("%d output units over namespaces %s", len(space.labels), space.namespaces)
    return space


@uncached
def train(space: LabelSpace, train_set: tuple, val_set: tuple | None, cfg: EncoderSettings):
    """Build CheXNet with one sigmoid per label and train it, logging each epoch to the active MLflow run."""
    import mlflow

    from models.encoder import build_chexnet

    logger = get_run_logger()
    model = build_chexnet(n_outputs=len(space.labels), input_size=None, seed=cfg.seed)

    def log_epoch(stats: EpochStats) -> None:
        metrics = {"train_loss": stats.train_loss, "learning_rate": stats.learning_rate, "epoch_seconds": stats.seconds}
        if stats.val_loss is not None:
            metrics["val_loss"] = stats.val_loss
        metrics.update({f"val_{k}": v for k, v in stats.val_scores.items()})
        mlflow.log_metrics(metrics, step=stats.epoch)
        logger.info("epoch %d: %s", stats.epoch, {k: round(v, 4) for k, v in metrics.items()})

    result = train_encoder(model, space, train_set, val_set, cfg, on_epoch=log_epoch)
    return model, result


def _loss_curve(result: TrainResult):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [s.epoch for s in result.history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [s.train_loss for s in result.history], marker="o", label="train")
    if any(s.val_loss is not None for s in result.history):
        ax.plot(epochs, [s.val_loss for s in result.history], marker="o", label="val")
    ax.axvline(result.best_epoch, color="grey", linestyle=":", label=f"kept (epoch {result.best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked weighted BCE")
    ax.set_title("CheXNet encoder pretraining")
    ax.legend()
    fig.tight_layout()
    return fig


@uncached
def register_encoder(model, space: LabelSpace, result: TrainResult, out: Path, cfg: EncoderSettings,
                     counts: dict, rejects: list[dict]) -> dict:
    """Save the encoder (.keras, safe-mode loadable), log it with its labels and curve, register a version."""
    import matplotlib.pyplot as plt
    import mlflow

    write_rejects(rejects, out / "rejects.parquet")
    model.save(out / "encoder.keras")
    write_json(space.to_json(), out / "labels.json")
    best = next(s for s in result.history if s.epoch == result.best_epoch)
    mlflow.log_dict(space.to_json(), "labels.json")
    fig = _loss_curve(result)
    mlflow.log_figure(fig, "loss_curve.png")
    plt.close(fig)
    info = mlflow.tensorflow.log_model(model, name="encoder", registered_model_name=cfg.registered_name)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    tags = {"best_epoch": str(result.best_epoch), "labels": str(len(space.labels)), **{k: str(v) for k, v in counts.items()}}
    for key, value in {**tags, **{k: f"{v:.4f}" for k, v in best.val_scores.items()}}.items():
        client.set_model_version_tag(cfg.registered_name, version, key, value)
    summary = {
        "registered": f"models:/{cfg.registered_name}/{version}",
        "run_id": mlflow.active_run().info.run_id,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_loss": round(best.train_loss, 4),
        "val_loss": None if best.val_loss is None else round(best.val_loss, 4),
        **{f"val_{k}": round(v, 4) for k, v in best.val_scores.items()},
        **counts,
        "rejected": len(rejects),
        "output_units": len(space.labels),
    }
    write_json(summary, out / "pretrain.json")
    get_run_logger().info("encoder registered: %s", json.dumps(summary))
    return summary
