"""Decoders through their real code paths on tiny configs: learning, greedy vs beam, multi-view masks."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from radcap.models.captioner import ARCHITECTURES, make_eval_step, make_train_step
from radcap.models.decoding import Decoder

START, END, VOCAB, T = 1, 2, 12, 8


def tiny_batch(n: int = 8, seed: int = 0):
    """Two classes of 'images' and their captions: the decoder must learn which caption goes with which."""
    rng = np.random.default_rng(seed)
    cls = np.arange(n) % 2
    pooled = rng.normal(size=(n, 2, 1024)).astype(np.float32) * 0.1
    pooled[:, :, 0] += np.where(cls == 1, 3.0, -3.0)[:, None]
    grid = np.repeat(pooled[:, :, None, :], 49, axis=2).astype(np.float16)
    view_mask = np.ones((n, 2), np.float32)
    view_mask[::4, 1] = 0  # some studies have one view only
    captions = np.where(cls[:, None] == 1, [START, 4, 5, 6, END, 0, 0, 0], [START, 7, 8, END, 0, 0, 0, 0])
    features = {"pooled": tf.constant(pooled), "grid": tf.constant(grid), "view_mask": tf.constant(view_mask)}
    return features, tf.constant(captions.astype(np.int32)), captions


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_tiny_model_learns_and_decodes(arch):
    tf.keras.utils.set_random_seed(0)
    model = ARCHITECTURES[arch](VOCAB, max_views=2, feature_dim=1024, embed_dim=16, units=32, dropout=0.0)
    features, tokens, captions = tiny_batch()
    train_step = make_train_step(model, tf.keras.optimizers.Adam(1e-2))
    eval_step = make_eval_step(model)
    first = float(eval_step(features, tokens))
    for _ in range(60):
        train_step(features, tokens)
    last = float(eval_step(features, tokens))
    assert last < first * 0.2, (first, last)

    decoder = Decoder(model, START, END, max_length=T)
    greedy, attention = decoder.greedy(features)
    for row, caption in zip(greedy, captions):  # the model says what it was taught for each class
        expected = caption[1:][: list(caption[1:]).index(END) + 1]
        assert row[: len(expected)].tolist() == expected.tolist()
    beam1 = decoder.beam(features, width=1)
    assert _trim(beam1) == _trim(greedy)
    beam3 = decoder.beam(features, width=3, no_repeat_ngram=2)
    assert _trim(beam3) == _trim(greedy)  # an easy task: every search agrees
    if model.attention:
        assert attention.shape[:2] == greedy.shape and attention.shape[2] == 98
        np.testing.assert_allclose(attention.sum(-1)[:, 0], 1.0, rtol=1e-4)
        assert np.all(attention[::4, :, 49:] < 1e-6)  # a missing view gets no attention
    else:
        assert attention is None


def test_no_repeat_ngram_blocks_repeats():
    from radcap.models.decoding import _block_repeats

    logp = np.zeros((1, 1, 6))
    sequences = np.array([[[3, 4, 3]]])
    _block_repeats(logp, sequences, 2, np.zeros((1, 1), bool))
    # 4 would repeat the bigram (3, 4); 3 would repeat the word just written ("3 3")
    assert np.isinf(logp[0, 0, [3, 4]]).all() and np.isfinite(logp[0, 0, [0, 1, 2, 5]]).all()


def test_no_repeat_ngram_blocks_stutters_that_3gram_blocking_lets_through():
    """'lobe consolidation lobe consolidation' repeats no 3-gram, yet no report should say it."""
    from radcap.models.decoding import _block_repeats

    lobe, consolidation, left, upper = 5, 6, 7, 8
    logp = np.zeros((1, 1, 10))
    _block_repeats(logp, np.array([[[left, upper, lobe, consolidation, lobe]]]), 3, np.zeros((1, 1), bool))
    blocked = set(np.flatnonzero(np.isinf(logp[0, 0])))
    assert blocked == {consolidation, lobe}  # "... lobe consolidation" again, or "lobe lobe"
    logp = np.zeros((1, 1, 10))
    _block_repeats(logp, np.array([[[left, upper, lobe, consolidation, lobe]]]), 3, np.ones((1, 1), bool))
    assert np.isfinite(logp).all()  # a finished beam is left alone
    logp = np.zeros((1, 1, 10))
    _block_repeats(logp, np.array([[[left, upper, lobe, consolidation, lobe]]]), 0, np.zeros((1, 1), bool))
    assert np.isfinite(logp).all()  # 0: no blocking


def _trim(ids: np.ndarray) -> list[list[int]]:
    out = []
    for row in ids:
        row = row.tolist()
        out.append(row[: row.index(END) + 1] if END in row else row)
    return out


@pytest.mark.slow
def test_the_reported_splits_never_influence_selection(tmp_path, prefect_api):
    """Train twice through the real flow, once with the val and test reports' texts replaced: the same model
    (weights, chosen length penalty, guard threshold), since selection happens on a set carved from train;
    self-critical training included (its rewards and its selection read only the train split)."""
    import shutil

    import pandas as pd

    from radcap.captioning.bundle import load_bundle
    from radcap.core.settings import get_settings
    from radcap.flows.features import extract_features_flow
    from radcap.flows.train import train_flow
    from tests.conftest import ingested_sample

    settings = get_settings()
    ingested_sample(tmp_path, studies=40, image_size=64, data="a")
    extract_features_flow(tmp_path / "a", "random:0", 8)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    reports = pd.read_parquet(tmp_path / "b" / "reports.parquet")
    held_out = reports["split"].isin(["val", "test"])
    assert held_out.sum() > 0
    reports.loc[held_out, "target"] = "something else entirely."
    reports.to_parquet(tmp_path / "b" / "reports.parquet")
    cfg = settings.captioner.model_copy(
        update={
            "architecture": "show-tell",
            "embed_dim": 8,
            "units": 16,
            "epochs": 3,
            "min_epochs": 1,
            "min_count": 1,
            "beam_width": 2,
            "scst_epochs": 2,
            "scst_samples": 2,
            "scst_learning_rate": 1e-2,
            "registered_name": "radcap-selection-test",
        }
    )
    bundles, summaries = [], []
    for name in ("a", "b"):
        summaries.append(train_flow(tmp_path / name, tmp_path / f"run-{name}", cfg, "random-seed0"))
        bundles.append(load_bundle(tmp_path / f"run-{name}" / "captioner"))
    assert summaries[0]["scst_epochs_run"] == summaries[1]["scst_epochs_run"] >= 1
    assert summaries[0]["scst_kept"] == summaries[1]["scst_kept"]
    first, second = bundles
    for w1, w2 in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    assert first.config.decoding == second.config.decoding and first.vocab == second.vocab
    assert first.cider.to_json() == second.cider.to_json()  # consensus decoding's weights: train reports only
    assert first.domain.threshold == second.domain.threshold


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**16))
def test_top_k_is_the_stable_argsorts_first_k(rows, columns, k, seed):
    """Property: beam search's partial ranking equals a full stable sort's first k, ties (and -inf, which a
    finished beam or a banned word gives) broken by position."""
    from radcap.models.decoding import top_k

    rng = np.random.default_rng(seed)
    values = rng.integers(-3, 3, (rows, columns)).astype(float)  # many ties
    values[rng.random(values.shape) < 0.3] = -np.inf
    np.testing.assert_array_equal(top_k(values, k), np.argsort(-values, axis=1, kind="stable")[:, :k])


def _block_repeats_loop(logp, sequences, n, finished):
    """The per-beam Python loop `_block_repeats` replaced (radcap 0.3), kept as the reference it must equal."""
    if n < 1:
        return
    batch, width, length = sequences.shape
    for b in range(batch):
        for k in range(width):
            if finished[b, k]:
                continue
            seq = sequences[b, k].tolist()
            prefix = tuple(seq[length - n + 1 :]) if n > 1 else ()
            for i in range(length - n + 1):
                if tuple(seq[i : i + n - 1]) == prefix:
                    logp[b, k, seq[i + n - 1]] = -np.inf
            for size in range(1, n):
                if length >= 2 * size - 1 and seq[length - 2 * size + 1 : length - size] == seq[length - size + 1 :]:
                    logp[b, k, seq[length - size]] = -np.inf


@settings(max_examples=300, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(0, 12)),
    vocab=st.integers(2, 6),
    n=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_vectorized_repeat_blocking_bans_exactly_what_the_loop_did(shape, vocab, n, seed):
    from radcap.models.decoding import _block_repeats

    rng = np.random.default_rng(seed)
    sequences = rng.integers(0, vocab, shape)  # a small vocabulary: many repeats to find
    finished = rng.random(shape[:2]) < 0.3
    expected, got = np.zeros((*shape[:2], vocab)), np.zeros((*shape[:2], vocab))
    _block_repeats_loop(expected, sequences, n, finished)
    _block_repeats(got, sequences, n, finished)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
