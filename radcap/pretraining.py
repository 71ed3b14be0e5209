"""The encoder's training loop (nanoGPT-style: one config, plain loop), kept apart from Prefect and MLflow.

Images are decoded once into a uint8 memory-mapped array beside the run's outputs, so epochs re-read
pixels from disk instead of decoding again, and RAM stays bounded whatever the number of images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from radcap.imaging import ImageRejected, prepare
from radcap.labels import EXCLUSIVE, LabelSpace
from radcap.settings import EncoderSettings


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


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float | None
    val_scores: dict[str, float]
    learning_rate: float
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


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


def train_encoder(
    model,
    space: LabelSpace,
    train: tuple[np.ndarray, pd.DataFrame],
    val: tuple[np.ndarray, pd.DataFrame] | None,
    cfg: EncoderSettings,
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
) -> TrainResult:
    """Train `model` in place; on return it holds the weights of the epoch with the best val loss."""
    from tqdm import tqdm

    from models.pretrain import EncoderTrainer, augmenter

    train_pixels, train_rows = train
    targets, mask = space.encode(train_rows)
    pos_weight, neg_weight = space.class_weights(targets, mask)
    trainer = EncoderTrainer(
        model, pos_weight, neg_weight, cfg.learning_rate,
        augmenter(cfg.rotation_degrees, cfg.zoom, cfg.shift, cfg.seed),
    )
    if val is not None:
        val_pixels, val_rows = val
        val_targets, val_mask = space.encode(val_rows)
    rng = np.random.default_rng(cfg.seed)
    result, best_loss, best_weights, since_best = TrainResult(), np.inf, None, 0
    bs = cfg.pretrain_batch_size
    steps_per_epoch = max(1, len(train_rows) // bs)
    schedule = dict(total_steps=cfg.epochs * steps_per_epoch, warmup_steps=max(1, round(cfg.warmup_epochs * steps_per_epoch)),
                    peak=cfg.learning_rate, floor_ratio=cfg.min_lr_ratio)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(train_rows))
        losses = []
        # Full batches only (one compiled shape; the few images left over are drawn in the next epochs).
        # Sorted indices: memmap reads go forward through the file.
        batches = [np.sort(order[i: i + bs]) for i in range(0, steps_per_epoch * bs, bs)]
        for idx in tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False):
            lr = learning_rate_at(step, **schedule)
            trainer.set_learning_rate(lr)
            losses.append(float(trainer.train_step(train_pixels[idx], targets[idx], mask[idx])))
            step += 1
        val_loss, scores = None, {}
        if val is not None and len(val_rows):
            val_loss, probs = _evaluate(trainer, val_pixels, val_targets, val_mask, bs * 2)
            scores = namespace_scores(space, probs, val_targets, val_mask)
        stats = EpochStats(epoch, float(np.mean(losses)), val_loss, scores, lr, time.perf_counter() - start)
        result.history.append(stats)
        on_epoch(stats)
        monitored = val_loss if val_loss is not None else stats.train_loss
        if monitored < best_loss - 1e-4:
            best_loss, best_weights, since_best, result.best_epoch = monitored, model.get_weights(), 0, epoch
        else:
            since_best += 1
            if since_best >= cfg.early_stop_patience:
                result.stopped_early = True
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return result


def _evaluate(trainer, pixels: np.ndarray, targets: np.ndarray, mask: np.ndarray, batch: int):
    losses, weights, probs = [], [], []
    for i in range(0, len(pixels), batch):
        x, t, m = pixels[i: i + batch], targets[i: i + batch], mask[i: i + batch]
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
