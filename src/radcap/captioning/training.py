"""The decoder's epoch: teacher-forced batches, then validation loss and greedy captions scored with the
caption metrics; early stopping on the selection metric (`radcap.core.training.fit`)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from radcap.captioning.bundle import CaptionerBundle, build_model
from radcap.captioning.data import CaptionSet, mean_view
from radcap.core.model_config import CaptionerConfig
from radcap.core.settings import DecoderSettings
from radcap.core.training import EarlyStopping, EpochRecord, FitResult, fit
from radcap.metrics.scores import CiderD, caption_metrics, clinical_counts
from radcap.text.vocab import START, Vocabulary, tokenize


@dataclass
class CaptionTraining:
    bundle: CaptionerBundle
    fit: FitResult
    self_critical: SelfCritical | None = None


def model_config(cfg: DecoderSettings, **extra) -> CaptionerConfig:
    keys = ("architecture", "embed_dim", "units", "attention_units", "dropout", "max_views")
    return CaptionerConfig(**{k: getattr(cfg, k) for k in keys}, **extra)


def token_matrix(data: CaptionSet, vocab: Vocabulary) -> np.ndarray:
    tokens = data.tokens(vocab)
    longest = int((tokens != 0).sum(axis=1).max()) if len(tokens) else 2
    return tokens[:, :longest]  # one shape for the whole run: no padding to max_length, no retracing


def scores_without_meteor(references: dict[str, list[str]], hypotheses: dict[str, str]) -> dict[str, float]:
    """Caption metrics for choices made during training: no METEOR (a Java process per epoch would dominate)."""
    scores = caption_metrics(references, hypotheses, meteor=False)
    return {name: value for name, value in scores.items() if value is not None}


def validation_scores(bundle: CaptionerBundle, val: CaptionSet) -> dict[str, float]:
    hyps = bundle.caption(val.features(slice(None)))
    ids = [str(i) for i in range(len(val))]
    return scores_without_meteor({i: [t] for i, t in zip(ids, val.texts)}, dict(zip(ids, hyps)))


def train_captioner(
    train: CaptionSet,
    val: CaptionSet,
    vocab: Vocabulary,
    cfg: DecoderSettings,
    config_extra: dict | None = None,
    on_epoch: Callable[[EpochRecord], None] = lambda e: None,
) -> CaptionTraining:
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
    bundle = CaptionerBundle(model, vocab, config, cider=CiderD.of_reports(train.texts))
    train_step = make_train_step(model, keras.optimizers.Adam(cfg.learning_rate), cfg.clip_norm)
    eval_step = make_eval_step(model)
    train_tokens, val_tokens = token_matrix(train, vocab), token_matrix(val, vocab)
    rng, bs = np.random.default_rng(cfg.seed), min(cfg.batch_size, len(train))

    def tensors(data: CaptionSet, index) -> dict:
        # float16 grids are stored compactly; the network gets float32 (this CPU has no fast half-precision ops)
        return {
            k: tf.constant(v.astype(np.float32) if k == "grid" else v)
            for k, v in data.features(index).items()
            if k != "grid" or model.attention
        }

    def run_epoch(epoch: int) -> dict[str, float]:
        start, order, losses = time.perf_counter(), rng.permutation(len(train)), []
        for i in tqdm(range(0, len(order) - bs + 1, bs), desc=f"epoch {epoch}", unit="batch", leave=False):
            index = np.sort(order[i : i + bs])
            losses.append(float(train_step(tensors(train, index), tf.constant(train_tokens[index]))))
        train_seconds = time.perf_counter() - start
        val_losses = [
            float(eval_step(tensors(val, slice(i, i + bs)), tf.constant(val_tokens[i : i + bs])))
            for i in range(0, len(val), bs)
        ]
        scores = {f"val_{k}": v for k, v in validation_scores(bundle, val).items() if v is not None}
        return {
            "train_loss": float(np.mean(losses)),
            "val_loss": float(np.mean(val_losses)),
            **scores,
            "train_seconds": train_seconds,
            "batches": len(losses),
        }

    by_loss = cfg.selection_metric == "val_loss"
    stopping = EarlyStopping(
        "val_loss" if by_loss else f"val_{cfg.selection_metric}",
        "min" if by_loss else "max",
        cfg.patience,
        cfg.min_epochs,
        0.0 if by_loss else 1e-6,
    )
    return CaptionTraining(bundle, fit(model, cfg.epochs, run_epoch, stopping, on_epoch))


def self_critical(
    bundle: CaptionerBundle,
    train: CaptionSet,
    val: CaptionSet,
    cfg: DecoderSettings,
    on_epoch: Callable[[EpochRecord], None] = lambda e: None,
) -> SelfCritical | None:
    """Self-critical sequence training (Rennie et al. 2017) of a cross-entropy-trained bundle, in place: per
    batch of studies, `scst_samples` sampled captions each are rewarded (`SampleReward`: CIDEr-D against the
    study's report, optionally mixed with its similar studies' reports and clinical agreement), minus a
    baseline: the mean of the study's other samples' rewards (Luo 2020, the default; see `scst_baseline`) or the
    greedy caption's (Rennie et al.). Epochs select on the selection set's greedy CIDEr as cross-entropy
    does, and the cross-entropy weights stay when no SCST epoch beats them there. None when `scst_epochs` is 0."""
    if not cfg.scst_epochs:
        return None
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from radcap.models.captioner import make_scst_step

    model, vocab, decoder = bundle.model, bundle.vocab, bundle.decoder
    keras.utils.set_random_seed(cfg.seed + 1)
    # the decoder's banned ids (pad, <start>, <unk>): the step masks exactly what sampling excluded
    step = make_scst_step(
        model,
        keras.optimizers.Adam(cfg.scst_learning_rate),
        tuple(decoder.banned.tolist()),
        cfg.clip_norm,
        cfg.scst_xe_weight,
        cfg.scst_dropout,
    )
    truth = token_matrix(train, vocab) if cfg.scst_xe_weight else None  # the mixed objective's targets
    rewards = SampleReward(train, vocab, cfg)
    rng, bs, k = np.random.default_rng(cfg.seed + 1), min(cfg.batch_size, len(train)), cfg.scst_samples

    def with_start(ids: np.ndarray) -> np.ndarray:
        """<start> + the sampled ids (already pad after <end>), padded to max_length: one shape for every batch,
        so the step is traced once (sampled lengths vary)."""
        out = np.zeros((len(ids), vocab.max_length), np.int32)
        out[:, 0] = vocab.index[START]
        out[:, 1 : ids.shape[1] + 1] = ids
        return out

    def run_epoch(epoch: int) -> dict[str, float]:
        start, order, losses, sampled, baselines = time.perf_counter(), rng.permutation(len(train)), [], [], []
        for i in tqdm(range(0, len(order) - bs + 1, bs), desc=f"scst {epoch}", unit="batch", leave=False):
            index = np.sort(order[i : i + bs])
            features = bundle.model_inputs(train.features(index), slice(None))
            repeated = {key: np.repeat(v, k, axis=0) for key, v in features.items()}  # study b at rows b*k..
            samples = decoder.sample(features, rng, samples=k, top_k=cfg.scst_top_k)
            reward = rewards(samples, np.repeat(index, k))
            if cfg.scst_baseline == "greedy":
                greedy, _ = decoder.greedy(features, cfg.no_repeat_ngram)
                baseline = np.repeat(rewards(greedy, index), k)
            else:  # the mean reward of the study's other samples
                per_study = reward.reshape(-1, k)
                baseline = ((per_study.sum(axis=1, keepdims=True) - per_study) / (k - 1)).ravel()
            advantages = reward - baseline
            mixed = (
                ()
                if truth is None
                else ({key: tf.constant(v) for key, v in features.items()}, tf.constant(truth[index]))
            )
            losses.append(
                float(
                    step(
                        {key: tf.constant(v) for key, v in repeated.items()},
                        tf.constant(with_start(samples)),
                        tf.constant(advantages, tf.float32),
                        *mixed,
                    )
                )
            )
            sampled.append(reward.mean())
            baselines.append(baseline.mean())
        scores = {f"val_{key}": v for key, v in validation_scores(bundle, val).items() if v is not None}
        return {
            "scst_loss": float(np.mean(losses)),
            "train_sample_reward": float(np.mean(sampled)),
            "train_baseline_reward": float(np.mean(baselines)),
            **scores,
            "train_seconds": time.perf_counter() - start,
        }

    before = {f"val_{key}": v for key, v in validation_scores(bundle, val).items() if v is not None}
    cross_entropy_weights = model.get_weights()
    metric = "val_CIDEr" if cfg.selection_metric == "val_loss" else f"val_{cfg.selection_metric}"
    result = fit(model, cfg.scst_epochs, run_epoch, EarlyStopping(metric, "max", cfg.patience, 1, 1e-6), on_epoch)
    kept = result.best[metric] > before[metric]
    if not kept:  # SCST did not beat cross-entropy on the selection set
        model.set_weights(cross_entropy_weights)
    return SelfCritical(result, before, kept)


class SampleReward:
    """What a caption (token ids) written for training study `row` earns in self-critical training: CIDEr-D
    against the study's report with document frequencies of the training reports; with `scst_neighbours`,
    (1 - `scst_neighbour_weight`) x that + the weight x its mean CIDEr-D against the reports of the study's most
    similar studies of other patients or cases (`similar_studies`); plus `scst_clinical_weight` x the finding
    labeler's agreement with the study's report (invented findings lower it)."""

    def __init__(self, train: CaptionSet, vocab: Vocabulary, cfg: DecoderSettings):
        references = [tokenize(t) for t in train.texts]
        self.cider, self.vocab, self.texts, self.cfg = CiderD(references), vocab, train.texts, cfg
        self.vectors = [self.cider.vector(r) for r in references]  # each report is scored many times
        self.neighbours = similar_studies(train, cfg.scst_neighbours) if cfg.scst_neighbours else None

    def cider_d(self, words: list[str], row: int) -> float:
        others = [] if self.neighbours is None else list(self.neighbours[row])
        own, *theirs = self.cider.scores(words, [self.vectors[row], *(self.vectors[j] for j in others)])
        if not theirs:
            return own
        weight = self.cfg.scst_neighbour_weight
        return (1 - weight) * own + weight * float(np.mean(theirs))

    def __call__(self, ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        reward = np.array([self.cider_d(self.vocab.words(caption), r) for caption, r in zip(ids, rows)])
        if self.cfg.scst_clinical_weight:
            counts = clinical_counts([self.texts[r] for r in rows], [self.vocab.decode(caption) for caption in ids])
            tp, fp, fn = counts.sum(axis=2).T.astype(float)  # per report, over the 14 observations
            agreement = np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)
            reward = reward + self.cfg.scst_clinical_weight * agreement
        return reward


def similar_studies(data: CaptionSet, k: int) -> list[np.ndarray]:
    """Each study's k most similar studies of `data` by pooled cosine (the nearest-neighbour baseline's measure),
    most similar first, never the study itself nor one of its own patient or case: a new image comes from a
    patient the model has not seen, and a case's other images share its report's words."""
    vectors = mean_view(data.pooled, data.view_mask)
    similarity = vectors @ vectors.T
    groups = np.asarray(data.group_ids if data.group_ids else data.report_ids)
    similarity[groups[:, None] == groups[None, :]] = -np.inf
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [row[np.isfinite(similarity[i, row])] for i, row in enumerate(order)]


@dataclass
class SelfCritical:
    fit: FitResult  # the SCST epochs
    before: dict[str, float]  # the selection set's scores of the cross-entropy model
    kept: bool  # the bundle holds SCST's best weights (else the cross-entropy ones)


def training_key(data_version: str, encoder_version: str, settings: dict) -> str:
    """Same data version, encoder and settings -> same key: what a cached training result is found by."""
    payload = json.dumps([data_version, encoder_version, settings], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def choose_length_penalty(bundle: CaptionerBundle, val: CaptionSet, cfg: DecoderSettings) -> dict[float, float]:
    """Beam search favours short captions; how much to correct depends on the data (IU impressions are short,
    MedPix captions long). Score each penalty of `cfg.length_penalty_grid` on the validation reports by the
    selection metric, keep the best in the bundle's decoding config, return every penalty's score."""
    bundle.config.decoding = bundle.config.decoding.model_copy(
        update={
            "beam_width": cfg.beam_width,
            "length_penalty": cfg.length_penalty,
            "no_repeat_ngram": cfg.no_repeat_ngram,
            "consensus_samples": cfg.consensus_samples,
        }
    )
    if not cfg.length_penalty_grid or cfg.beam_width <= 1 or cfg.consensus_samples:
        return {}  # (consensus decoding: the beam keeps the same reports whatever the penalty, which only ranks them)
    metric = "CIDEr" if cfg.selection_metric == "val_loss" else cfg.selection_metric
    references = {rid: [text] for rid, text in zip(val.report_ids, val.texts)}
    scores = {}
    for penalty in cfg.length_penalty_grid:
        captions = bundle.caption(
            val.features(slice(None)),
            beam_width=cfg.beam_width,
            length_penalty=penalty,
            no_repeat_ngram=cfg.no_repeat_ngram,
        )
        scores[penalty] = scores_without_meteor(references, dict(zip(val.report_ids, captions)))[metric]
    best = max(scores, key=lambda p: (scores[p], -abs(p - cfg.length_penalty)))
    bundle.config.decoding = bundle.config.decoding.model_copy(update={"length_penalty": best})
    return scores
