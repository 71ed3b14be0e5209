"""Self-critical training's parts: the CIDEr-D reward, sampling, the policy-gradient step, the keep-or-restore
rule; and the repetition measures reported beside the metrics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radcap.metrics.scores import CiderD, repeats_ngram, score_reports, stutters

REPORTS = [
    "no acute cardiopulmonary abnormality.",
    "left lower lobe consolidation.",
    "right pleural effusion.",
    "heart size is normal. lungs are clear.",
    "mild cardiomegaly without edema.",
    "no pneumothorax.",
    "right upper lobe mass concerning for malignancy.",
    "left pleural effusion with atelectasis.",
    "clear lungs. no effusion.",
    "stable postoperative changes of the chest.",
]


def test_cider_d_with_corpus_frequencies_is_pycocoevalcaps_cider_on_that_corpus():
    from radcap.metrics.scores import _prepare

    hypotheses = REPORTS[3:] + REPORTS[:3]
    ids = [f"{i:02d}" for i in range(len(REPORTS))]
    expected = score_reports(dict(zip(ids, REPORTS)), dict(zip(ids, hypotheses)), meteor=False).cider
    tokens = lambda texts: [t.split() for t in _prepare({"x": texts})["x"]]  # noqa: E731
    cider = CiderD(tokens(REPORTS))
    got = [cider.score(h, r) for h, r in zip(tokens(hypotheses), tokens(REPORTS))]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert cider.score(tokens(REPORTS[:1])[0], cider.vector(tokens(REPORTS[:1])[0])) == pytest.approx(
        cider.score(tokens(REPORTS[:1])[0], tokens(REPORTS[:1])[0])
    )
    # fixed frequencies: a batch of one is scored as it is within the corpus (pycocoevalcap's would not be)
    assert cider.score(tokens(hypotheses[:1])[0], tokens(REPORTS[:1])[0]) == pytest.approx(expected[0])


def test_repetition_measures():
    assert repeats_ngram(["a", "b", "c", "d", "a", "b", "c"], 3) and not repeats_ngram(
        ["a", "b", "c", "d", "a", "b"], 3
    )
    assert stutters(["left", "lobe", "consolidation", "lobe", "consolidation"])
    assert stutters(["no", "no", "effusion"]) and not stutters(["no", "effusion", ".", "no", "pneumothorax"])
    assert not repeats_ngram(["lobe", "consolidation", "lobe", "consolidation"], 3)  # why stutters exist
    ids = ["1", "2", "3", "4"]
    hypotheses = ["left lobe consolidation lobe consolidation.", "a b c a b c.", "no effusion.", "clear lungs."]
    scores = score_reports(dict(zip(ids, ["no effusion."] * 4)), dict(zip(ids, hypotheses)), meteor=False)
    assert scores.metric("repetition_rate") == 0.25 and scores.metric("stutter_rate") == 0.5
    assert scores.summary()["repetition_rate"] == 0.25
    assert scores.metric("repetition_rate", np.array([1, 1])) == 1.0


def _tiny_model(vocab_size: int = 6, seed: int = 0):
    import keras

    from radcap.models.captioner import ShowAndTell

    keras.utils.set_random_seed(seed)
    model = ShowAndTell(vocab_size, max_views=1, feature_dim=1024, embed_dim=8, units=16, dropout=0.0)
    features = {
        "pooled": np.random.default_rng(seed).random((4, 1, 1024)).astype(np.float32),
        "view_mask": np.ones((4, 1), np.float32),
    }
    model.teacher_forced(features, np.ones((4, 2), np.int32))
    return model, features


def _sequence_logp(model, features, tokens, banned):
    import tensorflow as tf

    logits, _ = model.teacher_forced(features, tokens[:, :-1])
    penalty = np.array([-1e9 if i in banned else 0.0 for i in range(model.vocab_size)], np.float32)
    logp = tf.nn.log_softmax(logits + penalty).numpy()
    targets = tokens[:, 1:]
    taken = np.take_along_axis(logp, targets[..., None], axis=2)[..., 0]
    return (taken * (targets != 0)).sum(axis=1)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_scst_step_moves_a_sampled_caption_by_the_sign_of_its_advantage(sign):
    import keras
    import tensorflow as tf

    from radcap.models.captioner import make_scst_step

    model, features = _tiny_model()
    banned = (0, 1, 3)
    tokens = np.array([[1, 4, 5, 2, 0]] * 4, np.int32)  # <start> 4 5 <end> <pad>
    before = _sequence_logp(model, features, tokens, banned)
    step = make_scst_step(model, keras.optimizers.SGD(0.1), banned)
    step({k: tf.constant(v) for k, v in features.items()}, tf.constant(tokens), tf.constant([sign] * 4, tf.float32))
    after = _sequence_logp(model, features, tokens, banned)
    assert (np.sign(after - before) == sign).all()
    zero = make_scst_step(model, keras.optimizers.SGD(0.1), banned)
    weights = [w.copy() for w in model.get_weights()]
    zero({k: tf.constant(v) for k, v in features.items()}, tf.constant(tokens), tf.constant([0.0] * 4, tf.float32))
    for a, b in zip(weights, model.get_weights()):  # no advantage, no change
        np.testing.assert_array_equal(a, b)


def test_the_mixed_objective_pulls_towards_the_report_when_no_sample_is_better():
    """With every advantage 0 only the cross-entropy term acts: the study's own report becomes more likely."""
    import keras
    import tensorflow as tf

    from radcap.models.captioner import make_scst_step

    model, features = _tiny_model()
    banned = (0, 1, 3)
    sampled = np.array([[1, 4, 5, 2, 0]] * 4, np.int32)
    truth = np.array([[1, 5, 4, 4, 2]] * 4, np.int32)
    before = _sequence_logp(model, features, truth, banned)
    step = make_scst_step(model, keras.optimizers.SGD(0.1), banned, xe_weight=1.0)
    tensors = {k: tf.constant(v) for k, v in features.items()}
    step(tensors, tf.constant(sampled), tf.constant([0.0] * 4, tf.float32), tensors, tf.constant(truth))
    assert (_sequence_logp(model, features, truth, banned) > before).all()


def test_top_k_sampling_draws_only_the_k_most_probable_words():
    from radcap.models.decoding import Decoder

    model, features = _tiny_model()
    model.logits.set_weights([np.zeros_like(model.logits.get_weights()[0]), np.array([9.0, 9.0, 0.0, 9.0, 2.0, 1.0])])
    decoder = Decoder(model, start_id=1, end_id=2, max_length=8, banned=(3,))
    ids = decoder.sample(features, np.random.default_rng(0), samples=300, top_k=2)
    assert set(np.unique(ids)) <= {0, 4, 5}  # <end> (logit 0) is third: never drawn, captions run to max length
    first = ids[:, 0]
    np.testing.assert_allclose(np.mean(first == 4), np.e / (np.e + 1), atol=0.04)


def test_sampling_follows_the_model_and_never_writes_banned_tokens():
    from radcap.models.decoding import Decoder

    model, features = _tiny_model()
    # word 4 with probability e^2/(e^2+e^1+1) at every step, then 5, then <end> (2); 0, 1, 3 banned
    model.logits.set_weights([np.zeros_like(model.logits.get_weights()[0]), np.array([9.0, 9.0, 0.0, 9.0, 2.0, 1.0])])
    decoder = Decoder(model, start_id=1, end_id=2, max_length=8, banned=(3,))
    ids = decoder.sample(features, np.random.default_rng(0), samples=500)
    assert ids.shape[0] == 4 * 500 and not np.isin(ids, [1, 3]).any()
    first = ids[:, 0]
    p = np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum()
    np.testing.assert_allclose([np.mean(first == 4), np.mean(first == 5), np.mean(first == 2)], p, atol=0.03)
    for row in ids:  # pad, and only pad, after <end>
        ends = np.flatnonzero(row == 2)
        if len(ends):
            assert (row[ends[0] + 1 :] == 0).all()
        assert (row[: ends[0] if len(ends) else len(row)] != 0).all()
    again = decoder.sample(features, np.random.default_rng(0), samples=500)
    np.testing.assert_array_equal(ids, again)  # the generator decides


@pytest.mark.slow
def test_self_critical_restores_the_cross_entropy_weights_when_its_steps_make_things_worse():
    """A cross-entropy model that has learnt something, then SCST steps far too large for it: every SCST epoch
    moves the weights and scores worse on the selection set, so the bundle ends with the cross-entropy weights,
    bit for bit, and the result says so."""
    from radcap.captioning.data import CaptionSet
    from radcap.captioning.training import self_critical, train_captioner
    from radcap.core.settings import DecoderSettings
    from radcap.text.vocab import Vocabulary

    rng = np.random.default_rng(0)
    kinds = [i % 4 for i in range(32)]  # four reports, each told by its own block of feature channels
    texts = [REPORTS[k] for k in kinds]
    pooled = rng.random((32, 2, 1024), np.float32) * 0.1
    for i, k in enumerate(kinds):
        pooled[i, :, k * 256 : (k + 1) * 256] += 1.0
    data = CaptionSet([str(i) for i in range(32)], texts, pooled, np.ones((32, 2), np.float32))
    cfg = DecoderSettings(
        architecture="show-tell",
        embed_dim=16,
        units=32,
        dropout=0.0,
        epochs=12,
        min_epochs=12,
        min_count=1,
        batch_size=8,
        learning_rate=1e-2,
        scst_epochs=2,
        scst_samples=2,
        scst_learning_rate=1.0,
    )
    vocab = Vocabulary.build(texts, 1, 16)
    trained = train_captioner(data, data, vocab, cfg, {"encoder_version": "test"})
    model = trained.bundle.model
    cross_entropy = [w.copy() for w in model.get_weights()]
    moved: list[bool] = []

    def weights_moved(_record) -> None:
        moved.append(any(not np.array_equal(a, b) for a, b in zip(cross_entropy, model.get_weights())))

    result = self_critical(trained.bundle, data, data, cfg, weights_moved)
    assert moved == [True, True]  # each SCST epoch changed the weights
    scst_best = max(record.metrics["val_CIDEr"] for record in result.fit.history)
    assert result.before["val_CIDEr"] > 0.5 > scst_best  # worse on the selection set
    assert not result.kept
    assert {"scst_loss", "train_sample_reward", "train_baseline_reward", "val_CIDEr"} <= set(
        result.fit.history[0].metrics
    )
    for a, b in zip(cross_entropy, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert self_critical(trained.bundle, data, data, cfg.model_copy(update={"scst_epochs": 0})) is None
    greedy = self_critical(
        trained.bundle, data, data, cfg.model_copy(update={"scst_baseline": "greedy", "scst_epochs": 1})
    )
    assert not greedy.kept and greedy.fit.history[0]["train_baseline_reward"] >= 0


def test_cider_d_against_several_references_is_each_ones_score():
    cider = CiderD([r.split() for r in REPORTS])
    hypothesis = ["left", "pleural", "effusion."]
    got = cider.scores(hypothesis, [r.split() for r in REPORTS[:4]] + [cider.vector(REPORTS[7].split())])
    assert got == pytest.approx([cider.score(hypothesis, r.split()) for r in [*REPORTS[:4], REPORTS[7]]])


def _caption_set(vectors: np.ndarray, groups: list[str], texts: list[str] | None = None):
    from radcap.captioning.data import CaptionSet

    n = len(vectors)
    return CaptionSet(
        [f"r{i}" for i in range(n)],
        texts or ["x."] * n,
        vectors[:, None, :].astype(np.float32),
        np.ones((n, 1), np.float32),
        group_ids=groups,
    )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 12).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 4), min_size=n, max_size=n), st.integers(1, 6), st.integers(0, 2**16)
        )
    )
)
def test_similar_studies_are_the_most_similar_of_other_groups(case):
    """Property: each study's neighbours are, most similar first, exactly the k studies of other groups with the
    highest pooled cosine; never itself, never its own patient or case (a new image comes from a new patient)."""
    from radcap.captioning.data import mean_view
    from radcap.captioning.training import similar_studies

    group_of, k, seed = case
    vectors = np.random.default_rng(seed).normal(size=(len(group_of), 8))
    data = _caption_set(vectors, [f"g{g}" for g in group_of])
    unit = mean_view(data.pooled, data.view_mask)
    for i, row in enumerate(similar_studies(data, k)):
        others = [j for j in range(len(group_of)) if group_of[j] != group_of[i]]
        assert len(row) == min(k, len(others)) and all(group_of[j] != group_of[i] for j in row)
        cosine = unit[row] @ unit[i]
        assert (np.diff(cosine) <= 1e-6).all()
        if len(row) < len(others):  # nothing left out is more similar than the last one kept
            left = [j for j in others if j not in set(row)]
            assert (unit[left] @ unit[i]).max() <= cosine[-1] + 1e-6


def test_the_neighbour_reward_prefers_what_similar_studies_of_other_patients_say():
    """Study 0's own report says one thing, the two studies most like it (other patients) another, and its
    own patient's second study is the most similar of all but must not count. With the neighbours' weight at 1
    a caption of the neighbours' words earns more than the own report's; at 0 the own report wins, as plain SCST."""
    from radcap.captioning.training import SampleReward
    from radcap.core.settings import DecoderSettings
    from radcap.text.vocab import Vocabulary

    texts = [
        "right upper lobe mass.",
        "right upper lobe mass.",
        "left pleural effusion.",
        "left pleural effusion.",
        "no pneumothorax.",
        "clear lungs. no effusion.",
    ]
    vectors = np.array([[1, 0, 0], [1, 0.01, 0], [0.9, 0.1, 0], [0.9, 0, 0.1], [0, 1, 0], [0, 0, 1]], float)
    data = _caption_set(vectors, ["p0", "p0", "p1", "p2", "p3", "p4"], texts)
    vocab = Vocabulary.build(texts, 1, 16)
    ids = np.array(vocab.encode_padded(["right upper lobe mass.", "left pleural effusion."]))[:, 1:]
    rows = np.array([0, 0])
    neighbours = DecoderSettings(scst_neighbours=2, scst_neighbour_weight=1.0)
    own_only = neighbours.model_copy(update={"scst_neighbours": 0})
    as_own, as_neighbours = SampleReward(data, vocab, neighbours)(ids, rows)
    assert as_neighbours > as_own
    as_own, as_neighbours = SampleReward(data, vocab, own_only)(ids, rows)
    assert as_own > as_neighbours
    half = SampleReward(data, vocab, neighbours.model_copy(update={"scst_neighbour_weight": 0.5}))(ids, rows)
    full, plain = SampleReward(data, vocab, neighbours)(ids, rows), SampleReward(data, vocab, own_only)(ids, rows)
    np.testing.assert_allclose(half, (full + plain) / 2)
