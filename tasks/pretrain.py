"""Encoder pretraining tasks: gather labelled images, decode them once, train, log and register in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect.logging import get_run_logger

from radcap.core.catalog import DataCatalog, RunFolder
from radcap.core.errors import RadcapError
from radcap.core.io import read_table, write_json, write_rejects, write_table
from radcap.core.reporting import curves_figure
from radcap.core.settings import EncoderSettings, SplitRules
from radcap.core.training import FitResult
from radcap.data_contracts import IMAGES, LABELLED_IMAGES, REPORTS
from radcap.imaging.labels import LabelSpace, labelled_images
from radcap.imaging.pretraining import decode_images, train_encoder
from radcap.ingestion.splits import selection_mask
from radcap.registry import store as registry
from radcap.registry import tracking
from radcap.tasks import registry_task, uncached


@uncached
def gather_labelled_images(data_dirs: list[Path], out: Path) -> pd.DataFrame:
    """Labels of every image of every data directory (see radcap.imaging.labels), written to
    `out/labelled_images.parquet`."""
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
    write_table(frame, RunFolder(out).labelled_images, LABELLED_IMAGES)
    get_run_logger().info("%d labelled images (%s)", len(frame), frame["split"].value_counts().to_dict())
    return frame


SELECTION = "selection"


@uncached
def mark_selection(frame: pd.DataFrame, rules: SplitRules) -> pd.DataFrame:
    """Mark as split 'selection' the images the best epoch and early stopping are chosen on: with
    `rules.select_on == "carve"` (the default) the train images of the carved groups, as `radcap train` carves
    them, so the val and test images never steer the encoder whose features are later scored there; with
    "val", the val split."""
    chosen = pd.Series(selection_mask(frame["split"], frame["group_id"], rules), index=frame.index, dtype=bool)
    get_run_logger().info(
        "best epoch chosen on %d %s images", int(chosen.sum()), "val" if rules.select_on == "val" else "carved train"
    )
    return frame.assign(split=frame["split"].where(~chosen, SELECTION))


@uncached
def decode_split(frame: pd.DataFrame, split: str, out: Path, size: int) -> tuple[np.ndarray, pd.DataFrame, list[dict]]:
    """Pixels (memmap) and rows of one split's decodable images, and the rejects of the others."""
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        return np.zeros((0, size, size), np.uint8), rows, []
    pixels, reasons = decode_images(rows["path"].tolist(), size, RunFolder(out).decoded_pixels(split, size))
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
    from radcap.models.encoder import build_chexnet

    model = build_chexnet(n_outputs=len(space.labels), input_size=None, seed=cfg.seed)
    return model, train_encoder(model, space, train_set, val_set, cfg, on_epoch=tracking.epoch_logger(get_run_logger()))


@registry_task
def register_encoder(
    model, space: LabelSpace, result: FitResult, out: Path, cfg: EncoderSettings, counts: dict, rejects: list[dict]
) -> dict:
    """Save the encoder (.keras, safe-mode loadable), log it with its labels and curve, register a version."""
    run = RunFolder(out)
    write_rejects(rejects, run.rejects)
    model.save(run.encoder_model)
    write_json(space.to_json(), run.labels)
    best = result.best
    scores = {k: v for k, v in best.metrics.items() if k.startswith("val_") and k != "val_loss"}
    tracking.log_dict(space.to_json(), "labels.json")
    tracking.log_figure(
        curves_figure(
            result,
            {"train_loss": "train", "val_loss": "val"},
            {k: k for k in scores},
            "masked weighted BCE",
            "validation",
        ),
        "loss_curve.png",
    )
    tags = {
        "best_epoch": result.best_epoch,
        "labels": len(space.labels),
        **counts,
        **{k: f"{v:.4f}" for k, v in scores.items()},
    }
    version = registry.register_keras(model, cfg.registered_name, tags)
    summary = {
        "registered": f"models:/{cfg.registered_name}/{version}",
        "run_id": tracking.active_run_id(),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_loss": round(best["train_loss"], 4),
        "val_loss": None if best.metrics.get("val_loss") is None else round(best["val_loss"], 4),
        **{k: round(v, 4) for k, v in scores.items()},
        **counts,
        "rejected": len(rejects),
        "output_units": len(space.labels),
    }
    write_json(summary, run.pretrain_summary)
    get_run_logger().info("encoder registered: %s", json.dumps(summary))
    return summary
