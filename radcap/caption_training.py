"""The decoder's training loop: teacher forcing, validation decoding, early stopping on a caption metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from radcap.caption_data import CaptionSet
from radcap.captioner_bundle import CaptionerBundle, build_model
from radcap.metrics import caption_metrics
from radcap.settings import CaptionerSettings
from radcap.vocab import Vocabulary


@dataclass
class CaptionEpoch:
    epoch: int
    train_loss: float
    val_loss: float
    val_scores: dict[str, float]
    seconds: float
    train_seconds: float = 0.0  # the teacher-forced batches alone (benchmarks/train_speed.py)
    batches: int = 0


@dataclass
class CaptionTraining:
    bundle: CaptionerBundle
    history: list[CaptionEpoch] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def model_config(cfg: CaptionerSettings, **extra) -> dict:
    keys = ("architecture", "embed_dim", "units", "attention_units", "dropout", "max_views")
    return {**{k: getattr(cfg, k) for k in keys}, **extra}


def feature_statistics(data: CaptionSet, attention: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over the training images (grid cells for attention, pooled vectors else)."""
    present = data.view_mask.reshape(-1) > 0
    if attention:
        values = data.grid.reshape(-1, data.grid.shape[2], data.grid.shape[3])[present].astype(np.float32)
        values = values.reshape(-1, values.shape[-1])
    else:
        values = data.pooled.reshape(-1, data.pooled.shape[-1])[present]
    return values.mean(axis=0), np.maximum(values.std(axis=0), 1e-3)


def _token_matrix(data: CaptionSet, vocab: Vocabulary) -> np.ndarray:
    tokens = data.tokens(vocab)
    longest = int((tokens != 0).sum(axis=1).max()) if len(tokens) else 2
    return tokens[:, :longest]  # one shape for the whole run: no padding to max_length, no retracing


def validation_scores(bundle: CaptionerBundle, val: CaptionSet) -> dict[str, float]:
    hyps = bundle.caption(val.features(slice(None)))
    ids = [str(i) for i in range(len(val))]
    return caption_metrics({i: [t] for i, t in zip(ids, val.texts)}, dict(zip(ids, hyps)), meteor=False)


def train_captioner(train: CaptionSet, val: CaptionSet, vocab: Vocabulary, cfg: CaptionerSettings,
                    config_extra: dict | None = None,
                    on_epoch: Callable[[CaptionEpoch], None] = lambda e: None) -> CaptionTraining:
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from models.captioner import make_eval_step, make_train_step

    keras.utils.set_random_seed(cfg.seed)
    config = model_config(cfg, **(config_extra or {}))
    model = build_model(config, len(vocab))
    mean, std = feature_statistics(train, model.attention)
    model.feature_mean.assign(mean)
    model.feature_std.assign(std)
    bundle = CaptionerBundle(model, vocab, config)
    train_step = make_train_step(model, keras.optimizers.Adam(cfg.learning_rate), cfg.clip_norm)
    eval_step = make_eval_step(model)
    train_tokens, val_tokens = _token_matrix(train, vocab), _token_matrix(val, vocab)
    rng = np.random.default_rng(cfg.seed)
    result = CaptionTraining(bundle)
    best, best_weights, since_best = -np.inf, None, 0
    bs = min(cfg.batch_size, len(train))

    def tensors(data: CaptionSet, index) -> dict:
        return {k: tf.constant(v) for k, v in data.features(index).items() if k != "grid" or model.attention}

    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(train))
        losses = []
        for i in tqdm(range(0, len(order) - bs + 1, bs), desc=f"epoch {epoch}", unit="batch", leave=False):
            index = np.sort(order[i: i + bs])
            losses.append(float(train_step(tensors(train, index), tf.constant(train_tokens[index]))))
        train_seconds = time.perf_counter() - start
        val_losses = [float(eval_step(tensors(val, slice(i, i + bs)), tf.constant(val_tokens[i: i + bs])))
                      for i in range(0, len(val), bs)]
        scores = validation_scores(bundle, val)
        stats = CaptionEpoch(epoch, float(np.mean(losses)), float(np.mean(val_losses)), scores,
                             time.perf_counter() - start, train_seconds, len(losses))
        result.history.append(stats)
        on_epoch(stats)
        current = -stats.val_loss if cfg.selection_metric == "val_loss" else scores[cfg.selection_metric]
        if current > best + 1e-6:
            best, best_weights, since_best, result.best_epoch = current, model.get_weights(), 0, epoch
        else:
            since_best += 1
            if since_best >= cfg.patience and epoch >= cfg.min_epochs:
                result.stopped_early = True
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return result
