"""Batched greedy and beam-search decoding for the captioners in `models.captioner`."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def as_float32(value):
    """Cast in numpy where the value is numpy: a float16 cast inside TensorFlow goes through its half-precision
    kernels (and says so on stderr, once per process, on CPUs without them)."""
    return np.asarray(value, np.float32) if isinstance(value, np.ndarray) else tf.cast(value, tf.float32)


def traced_once(fn):
    """`fn` compiled on its first call, for that call's structure and dtypes with the batch axis open: one trace
    for every batch size (greedy, beam and sampling use different ones). TensorFlow counts traces by the Python
    code, across every model a process decodes with (evaluate, promote, caption in one run), and a second trace
    per model would add up to its "excessive retracing" warning."""
    compiled = None

    def call(*args):
        nonlocal compiled
        if compiled is None:
            signature = tf.nest.map_structure(lambda x: tf.TensorSpec((None, *x.shape[1:]), x.dtype), args)
            compiled = tf.function(fn, input_signature=signature)
        return compiled(*args)

    return call


class Decoder:
    """Wraps a captioner's `start`/`step` in compiled functions; ids follow `radcap.text.vocab` (pad 0)."""

    def __init__(self, model, start_id: int, end_id: int, max_length: int, banned: tuple[int, ...] = ()):
        """`banned`: ids never generated besides pad and <start> (the bundle bans <unk>: a report saying
        "<unk>" is useless to a reader, and the model's next-best word is usually right)."""
        self.model, self.start_id, self.end_id, self.max_length = model, start_id, end_id, max_length
        self.recurrent = getattr(model, "recurrent_state", None)  # state entries each token changes (None: all)
        self.banned = np.array(sorted({0, start_id, *banned}), np.int64)
        start = traced_once(lambda features: model.start(features, training=False))
        # One dtype whatever the caller holds (float16 grids from the store, float64 from pandas).
        self._start = lambda features: start({k: as_float32(v) for k, v in features.items()})
        self._step = traced_once(lambda tokens, state: model.step(tokens, state, training=False))

    def greedy(self, features: dict, no_repeat_ngram: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """(ids (B,T) without <start>, ending at <end> then pad 0; attention (B,T,L) or None).
        `no_repeat_ngram` > 0 forbids repeating any n-gram of that size, as in beam search."""
        state = self._start(features)
        batch = int(tf.shape(next(iter(features.values())))[0])
        tokens = np.full(batch, self.start_id, np.int32)
        done = np.zeros(batch, bool)
        out: list = []
        attention: list = []
        for _ in range(self.max_length - 1):
            logits, state, weights = self._step(tf.constant(tokens), state)
            logits = logits.numpy()
            logits[:, self.banned] = -np.inf
            if no_repeat_ngram and out:  # the same rule as a beam of width 1
                _block_repeats(logits[:, None, :], np.stack(out, 1)[:, None, :], no_repeat_ngram, done[:, None])
            tokens = np.where(done, 0, logits.argmax(-1)).astype(np.int32)
            out.append(tokens)
            if weights is not None:
                attention.append(weights.numpy())
            done |= tokens == self.end_id
            if done.all():
                break
        return np.stack(out, 1), (np.stack(attention, 1) if attention else None)

    def sample(self, features: dict, rng, samples: int = 1, top_k: int = 0) -> np.ndarray:
        """`samples` captions per study drawn from the model's distribution (temperature 1, banned ids excluded;
        `top_k` > 0: from its k most probable words only), study b's at rows b*samples..: ids (B*samples, T)
        without <start>, ending at <end> then pad 0. What self-critical training explores with; no n-gram is
        blocked, so the captions are ones the model itself proposes. `rng`: a numpy Generator for the batch, or
        a list of one per study (a study's samples then do not depend on the batch it is decoded in)."""
        state = self._start(features)  # once per study, then repeated: the image side is the same for its samples
        if samples > 1:
            state = tf.nest.map_structure(lambda s: tf.repeat(s, samples, axis=0), state)
        rows = len(features["view_mask"]) * samples
        tokens = np.full(rows, self.start_id, np.int32)
        done = np.zeros(rows, bool)
        out = []
        for _ in range(self.max_length - 1):
            logits, state, _ = self._step(tf.constant(tokens), state)
            logits = logits.numpy().astype(np.float64)
            logits[:, self.banned] = -np.inf
            if 0 < top_k < logits.shape[1]:
                kth = np.partition(logits, -top_k, axis=1)[:, -top_k, None]
                logits[logits < kth] = -np.inf
            uniform = (
                rng.uniform(1e-12, 1.0, logits.shape)
                if isinstance(rng, np.random.Generator)
                else np.concatenate([g.uniform(1e-12, 1.0, (samples, logits.shape[1])) for g in rng])
            )
            gumbel = -np.log(-np.log(uniform))  # Gumbel-max: one categorical draw
            tokens = np.where(done, 0, (logits + gumbel).argmax(-1)).astype(np.int32)
            out.append(tokens)
            done |= tokens == self.end_id
            if done.all():
                break
        return np.stack(out, 1)

    def attention_of(self, features: dict, ids: np.ndarray) -> np.ndarray | None:
        """The attention weights (B,T,L) with which the model reads given captions `ids` (B,T) (whatever search
        produced them): step t sees the tokens before t, as when it generated them. None without attention."""
        state = self._start(features)
        tokens = np.full(len(ids), self.start_id, np.int32)
        weights = []
        for t in range(ids.shape[1]):
            _, state, w = self._step(tf.constant(tokens), state)
            if w is None:
                return None
            weights.append(w.numpy())
            tokens = ids[:, t].astype(np.int32)
        return np.stack(weights, 1)

    def beam(self, features: dict, width: int = 3, length_penalty: float = 0.7, no_repeat_ngram: int = 0) -> np.ndarray:
        """Beam search: scores are summed log-probabilities divided by length**length_penalty (0: none);
        `no_repeat_ngram` > 0 forbids repeating any n-gram of that size in a caption. Returns ids (B,T)."""
        sequences, scores = self.beam_candidates(features, width, length_penalty, no_repeat_ngram)
        return sequences[np.arange(len(sequences)), scores.argmax(1)]

    def beam_candidates(
        self, features: dict, width: int = 3, length_penalty: float = 0.7, no_repeat_ngram: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every beam at the end of beam search (`beam`'s rules): ids (B,width,T) and their length-normalized
        scores (B,width), -inf for a beam that never had a finite score (width above the captions possible)."""
        state = self._start(features)
        batch = int(tf.shape(next(iter(features.values())))[0])
        order = np.repeat(np.arange(batch), width)  # beam b*width+k belongs to study b
        state = tf.nest.map_structure(lambda s: tf.gather(s, order), state)
        scores = np.tile(np.r_[0.0, np.full(width - 1, -np.inf)], batch).reshape(batch, width)
        sequences = np.zeros((batch, width, 0), np.int32)
        tokens = np.full(batch * width, self.start_id, np.int32)
        finished = np.zeros((batch, width), bool)
        for _ in range(self.max_length - 1):
            logits, state, _ = self._step(tf.constant(tokens), state)
            logp = tf.nn.log_softmax(logits).numpy().reshape(batch, width, -1)
            vocab = logp.shape[-1]
            logp[..., self.banned] = -np.inf
            logp[finished] = -np.inf
            logp[finished, 0] = 0.0  # a finished beam only continues with pad, at no cost
            if no_repeat_ngram:
                _block_repeats(logp, sequences, no_repeat_ngram, finished)
            total = (scores[..., None] + logp).reshape(batch, -1)
            best = top_k(total, width)
            beam_idx, token = best // vocab, (best % vocab).astype(np.int32)
            scores = np.take_along_axis(total, best, axis=1)
            sequences = np.concatenate(
                [np.take_along_axis(sequences, beam_idx[..., None], axis=1), token[..., None]], axis=2
            )
            finished = np.take_along_axis(finished, beam_idx, axis=1) | (token == self.end_id)
            flat = (np.arange(batch)[:, None] * width + beam_idx).ravel()
            # a beam continues a beam of its own study, whose per-study entries (an attention model's memory) are
            # the same rows: only the recurrent ones need reordering
            state = {
                k: tf.gather(v, flat) if self.recurrent is None or k in self.recurrent else v for k, v in state.items()
            }
            tokens = token.ravel()
            if finished.all():
                break
        lengths = np.maximum((sequences != 0).sum(-1), 1)
        return sequences, scores / (lengths**length_penalty if length_penalty else 1.0)


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Each row's k largest values' indices, largest first and ties by position: `np.argsort(-values, axis=1,
    kind="stable")[:, :k]` without sorting whole rows (beam search ranks width x vocabulary scores per step)."""
    if k >= values.shape[1]:
        return np.argsort(-values, axis=1, kind="stable")[:, :k]
    kth = -np.partition(-values, k - 1, axis=1)[:, k - 1]  # each row's k-th largest value
    out = np.empty((len(values), k), np.int64)
    for r, row in enumerate(values):
        index = np.flatnonzero(row >= kth[r])  # at least k, in position order
        out[r] = index[np.argsort(-row[index], kind="stable")[:k]]
    return out


def _block_repeats(logp: np.ndarray, sequences: np.ndarray, n: int, finished: np.ndarray) -> None:
    """Set -inf on tokens that would complete an n-gram already present in the same beam, or repeat the phrase
    of 1..n-1 tokens just written ("lobe consolidation lobe consolidation" has no repeated 3-gram).

    All beams at once: every window of n-1 tokens is compared with the beam's last n-1 (a sliding-window view),
    and the token that followed each matching window is banned; a step costs a few array operations, not a
    Python loop over beams and positions (tests/test_captioner.py checks it against that loop)."""
    if n < 1:
        return
    batch, width, length = sequences.shape
    if length == 0:
        return
    rows = sequences.reshape(batch * width, length)
    live = ~finished.reshape(-1)

    def ban(beam: np.ndarray, token: np.ndarray) -> None:
        logp[beam // width, beam % width, token] = -np.inf

    if n == 1:  # every token already written
        beam, position = np.nonzero(np.broadcast_to(live[:, None], rows.shape))
        ban(beam, rows[beam, position])
        return
    if length >= n:  # windows seq[i:i+n-1] for i in 0..length-n, each followed by seq[i+n-1]
        windows = np.lib.stride_tricks.sliding_window_view(rows[:, : length - 1], n - 1, axis=1)
        match = (windows == rows[:, None, length - n + 1 :]).all(axis=2) & live[:, None]
        beam, start = np.nonzero(match)
        ban(beam, rows[beam, start + n - 1])
    for size in range(1, n):  # phrase seq[-(2size-1):-(size-1)] would be followed by itself
        if length >= 2 * size - 1:
            same = (rows[:, length - 2 * size + 1 : length - size] == rows[:, length - size + 1 :]).all(axis=1) & live
            beam = np.flatnonzero(same)
            ban(beam, rows[beam, length - size])
