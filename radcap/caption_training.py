"""The decoder's epoch: teacher-forced batches, then validation loss and greedy captions scored with the
caption metrics; early stopping on the selection metric (`radcap.training.fit`)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from radcap.caption_data import CaptionSet
from radcap.captioner_bundle import CaptionerBundle, build_model
from radcap.metrics import caption_metrics
from radcap.model_config import CaptionerConfig
from radcap.settings import DecoderSettings
from radcap.training import EarlyStopping, EpochRecord, FitResult, fit
from radcap.vocab import Vocabulary


@dataclass
class CaptionTraining:
    bundle: CaptionerBundle
    fit: FitResult


def model_config(cfg: DecoderSettings, **extra) -> CaptionerConfig:
    keys = ("architecture", "embed_dim", "units", "attention_units", "dropout", "max_views")
    return CaptionerConfig(**{k: getattr(cfg, k) for k in keys}, **extra)


def token_matrix(data: CaptionSet, vocab: Vocabulary) -> np.ndarray:
    tokens = data.tokens(vocab)
    longest = int((tokens != 0).sum(axis=1).max()) if len(tokens) else 2
    return tokens[:, :longest]  # one shape for the whole run: no padding to max_length, no retracing


def validation_scores(bundle: CaptionerBundle, val: CaptionSet) -> dict[str, float]:
    hyps = bundle.caption(val.features(slice(None)))
    ids = [str(i) for i in range(len(val))]
    return caption_metrics({i: [t] for i, t in zip(ids, val.texts)}, dict(zip(ids, hyps)), meteor=False)


def train_captioner(train: CaptionSet, val: CaptionSet, vocab: Vocabulary, cfg: DecoderSettings,
                    config_extra: dict | None = None,
                    on_epoch: Callable[[EpochRecord], None] = lambda e: None) -> CaptionTraining:
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from radcap.models.captioner import make_eval_step, make_train_step

    keras.utils.set_random_seed(cfg.seed)
    config = model_config(cfg, **(config_extra or {}))
    model = build_model(config, len(vocab))
    mean, std = train.feature_statistics(model.attention)
    model.feature_mean.assign(mean)
    model.feature_std.assign(std)
    bundle = CaptionerBundle(model, vocab, config)
    train_step = make_train_step(model, keras.optimizers.Adam(cfg.learning_rate), cfg.clip_norm)
    eval_step = make_eval_step(model)
    train_tokens, val_tokens = token_matrix(train, vocab), token_matrix(val, vocab)
    rng, bs = np.random.default_rng(cfg.seed), min(cfg.batch_size, len(train))

    def tensors(data: CaptionSet, index) -> dict:
        # float16 grids are stored compactly; the network gets float32 (this CPU has no fast half-precision ops)
        return {k: tf.constant(v.astype(np.float32) if k == "grid" else v) for k, v in data.features(index).items()
                if k != "grid" or model.attention}

    def run_epoch(epoch: int) -> dict[str, float]:
        start, order, losses = time.perf_counter(), rng.permutation(len(train)), []
        for i in tqdm(range(0, len(order) - bs + 1, bs), desc=f"epoch {epoch}", unit="batch", leave=False):
            index = np.sort(order[i: i + bs])
            losses.append(float(train_step(tensors(train, index), tf.constant(train_tokens[index]))))
        train_seconds = time.perf_counter() - start
        val_losses = [float(eval_step(tensors(val, slice(i, i + bs)), tf.constant(val_tokens[i: i + bs])))
                      for i in range(0, len(val), bs)]
        scores = {f"val_{k}": v for k, v in validation_scores(bundle, val).items() if v is not None}
        return {"train_loss": float(np.mean(losses)), "val_loss": float(np.mean(val_losses)), **scores,
                "train_seconds": train_seconds, "batches": len(losses)}

    by_loss = cfg.selection_metric == "val_loss"
    stopping = EarlyStopping("val_loss" if by_loss else f"val_{cfg.selection_metric}", "min" if by_loss else "max",
                             cfg.patience, cfg.min_epochs, 0.0 if by_loss else 1e-6)
    return CaptionTraining(bundle, fit(model, cfg.epochs, run_epoch, stopping, on_epoch))


def training_key(data_version: str, encoder_version: str, settings: dict) -> str:
    """Same data version, encoder and settings -> same key: what a cached training result is found by."""
    payload = json.dumps([data_version, encoder_version, settings], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def choose_length_penalty(bundle: CaptionerBundle, val: CaptionSet, cfg: DecoderSettings) -> dict[float, float]:
    """Beam search favours short captions; how much to correct depends on the data (IU impressions are short,
    MedPix captions long). Score each penalty of `cfg.length_penalty_grid` on the validation reports by the
    selection metric, keep the best in the bundle's decoding config, return every penalty's score."""
    bundle.config.decoding = bundle.config.decoding.model_copy(update={
        "beam_width": cfg.beam_width, "length_penalty": cfg.length_penalty, "no_repeat_ngram": cfg.no_repeat_ngram})
    if not cfg.length_penalty_grid or cfg.beam_width <= 1:
        return {}
    metric = "CIDEr" if cfg.selection_metric == "val_loss" else cfg.selection_metric
    references = {rid: [text] for rid, text in zip(val.report_ids, val.texts)}
    scores = {}
    for penalty in cfg.length_penalty_grid:
        captions = bundle.caption(val.features(slice(None)), beam_width=cfg.beam_width, length_penalty=penalty,
                                  no_repeat_ngram=cfg.no_repeat_ngram)
        scores[penalty] = caption_metrics(references, dict(zip(val.report_ids, captions)), meteor=False)[metric]
    best = max(scores, key=lambda p: (scores[p], -abs(p - cfg.length_penalty)))
    bundle.config.decoding = bundle.config.decoding.model_copy(update={"length_penalty": best})
    return scores
