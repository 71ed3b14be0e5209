"""The encoder's training loop (nanoGPT-style: one config, plain loop), kept apart from Prefect and MLflow.

Images are decoded once into a uint8 memory-mapped array beside the run's outputs, so epochs re-read
pixels from disk instead of decoding again, and RAM stays bounded whatever the number of images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from radcap.core.settings import EncoderSettings
from radcap.core.training import EarlyStopping, EpochRecord, FitResult, fit
from radcap.imaging.decode import ImageRejected, prepare
from radcap.imaging.labels import EXCLUSIVE, LabelSpace


def decode_images(paths: list[str], size: int, target: Path, workers: int = 2) -> tuple[np.ndarray, list[str | None]]:
    """Letterbox every file into `target` (.npy memmap, N x size x size uint8); the reject reason per file."""
    from tqdm import tqdm

    pixels = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
    reasons: list[str | None] = [None] * len(paths)

    def one(i: int) -> None:
        try:
            pixels[i] = prepare(Path(paths[i]), size)
        except ImageRejected as exc:
            reasons[i] = str(exc)

    with ThreadPoolExecutor(workers) as pool:
        list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc="decode", unit="img"))
    pixels.flush()
    return pixels, reasons


def learning_rate_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor_ratio: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to `peak * floor_ratio` at `total_steps` (as nanoGPT).

    Why not CheXNet's divide-by-10-on-plateau: from scratch, the first epochs' val loss jumps with the
    BatchNorm running statistics, not with the weights, and the plateau rule then cut the rate to 1e-5 after
    three epochs (measured: 6-epoch run, issue 3), leaving the encoder barely better than random.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (floor_ratio + (1.0 - floor_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def namespace_scores(space: LabelSpace, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy for exclusive namespaces (modality, region...), mean ROC AUC for multi-label ones."""
    from sklearn.metrics import roc_auc_score

    owner = space.namespace_of()
    scores = {}
    for namespace in space.namespaces:
        units = owner == namespace
        rows = mask[:, units].all(axis=1)
        if rows.sum() == 0:
            continue
        p, t = probs[rows][:, units], targets[rows][:, units]
        if namespace in EXCLUSIVE:
            labelled = t.sum(axis=1) > 0
            if labelled.any():
                scores[f"{namespace}_accuracy"] = float((p[labelled].argmax(1) == t[labelled].argmax(1)).mean())
        else:
            aucs = [roc_auc_score(t[:, k], p[:, k]) for k in range(t.shape[1]) if 0 < t[:, k].sum() < len(t)]
            if aucs:
                scores[f"{namespace}_mean_auc"] = float(np.mean(aucs))
    return scores


# Below this many train steps a run goes eagerly: tracing the step costs about as much as 22 eager steps
# (models/pretrain.py, measured on this 2-core CPU at 64 px).
COMPILE_FROM_STEPS = 25


def train_encoder(
    model,
    space: LabelSpace,
    train: tuple[np.ndarray, pd.DataFrame],
    val: tuple[np.ndarray, pd.DataFrame] | None,
    cfg: EncoderSettings,
    on_epoch: Callable[[EpochRecord], None] = lambda record: None,
) -> FitResult:
    """Train `model` in place; on return it holds the weights of the epoch with the best val loss (train loss
    without a val set). The learning rate follows `learning_rate_at`, step by step."""
    from tqdm import tqdm

    from radcap.models.pretrain import EncoderTrainer, augmenter

    train_pixels, train_rows = train
    targets, mask = space.encode(train_rows)
    pos_weight, neg_weight = space.class_weights(targets, mask)
    rng, bs = np.random.default_rng(cfg.seed), cfg.pretrain_batch_size
    steps_per_epoch = max(1, len(train_rows) // bs)
    trainer = EncoderTrainer(
        model,
        pos_weight,
        neg_weight,
        cfg.learning_rate,
        augmenter(cfg.rotation_degrees, cfg.zoom, cfg.shift, cfg.seed),
        compiled=cfg.epochs * steps_per_epoch >= COMPILE_FROM_STEPS,
    )
    has_val = val is not None and len(val[1]) > 0
    if val is not None and has_val:
        val_pixels, val_rows = val
        val_targets, val_mask = space.encode(val_rows)
    schedule = partial(
        learning_rate_at,
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=max(1, round(cfg.warmup_epochs * steps_per_epoch)),
        peak=cfg.learning_rate,
        floor_ratio=cfg.min_lr_ratio,
    )
    step = 0

    def run_epoch(epoch: int) -> dict[str, float]:
        nonlocal step
        order, losses, lr = rng.permutation(len(train_rows)), [], cfg.learning_rate
        # Full batches only (one compiled shape; the few images left over are drawn in the next epochs).
        # Sorted indices: memmap reads go forward through the file.
        batches = [np.sort(order[i : i + bs]) for i in range(0, steps_per_epoch * bs, bs)]
        for idx in tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False):
            lr = schedule(step)
            trainer.set_learning_rate(lr)
            losses.append(float(trainer.train_step(train_pixels[idx], targets[idx], mask[idx])))
            step += 1
        metrics = {"train_loss": float(np.mean(losses)), "learning_rate": lr}
        if has_val:
            val_loss, probs = _evaluate(trainer, val_pixels, val_targets, val_mask, bs * 2)
            metrics["val_loss"] = val_loss
            metrics.update({f"val_{k}": v for k, v in namespace_scores(space, probs, val_targets, val_mask).items()})
        return metrics

    stopping = EarlyStopping("val_loss" if has_val else "train_loss", "min", cfg.early_stop_patience, 1, 1e-4)
    return fit(model, cfg.epochs, run_epoch, stopping, on_epoch)


def _evaluate(trainer, pixels: np.ndarray, targets: np.ndarray, mask: np.ndarray, batch: int):
    losses, weights, probs = [], [], []
    for i in range(0, len(pixels), batch):
        x, t, m = pixels[i : i + batch], targets[i : i + batch], mask[i : i + batch]
        n = len(x)
        if n < batch and len(pixels) > batch:  # pad the last batch (masked out): no retracing
            pad = batch - n
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            t, m = (np.concatenate([a, np.zeros((pad, a.shape[1]), a.dtype)]) for a in (t, m))
        loss, p = trainer.eval_step(x, t, m)
        losses.append(float(loss))
        weights.append(float(m.sum()))
        probs.append(p.numpy()[:n])
    total = max(sum(weights), 1.0)
    return float(np.dot(losses, weights) / total), np.concatenate(probs)
