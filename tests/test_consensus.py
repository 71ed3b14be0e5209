"""Consensus (minimum Bayes risk) decoding: the CIDEr-D weights a captioner carries, the choice among the beam's
reports, per-study sampling, and the saved table read back (or refused with the file's name)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radcap.core.errors import RadcapError
from radcap.metrics.scores import CiderD

WORDS = ["left", "right", "lobe", "effusion", "mass", "no", "."]
texts = st.lists(st.sampled_from(WORDS), min_size=0, max_size=9)


@settings(max_examples=60, deadline=None)
@given(st.lists(texts, min_size=1, max_size=12), texts, texts)
def test_cider_d_read_back_from_its_saved_table_scores_the_same(corpus, hypothesis, reference):
    """Property: the saved table keeps only n-grams of two documents or more, and still scores every pair as the
    full corpus does (an n-gram of one document weighs what an unseen one does)."""
    cider = CiderD(corpus)
    saved = json.loads(json.dumps(cider.to_json()))
    again = CiderD.from_json(saved)
    assert all(c >= 2 for _, c in saved["document_frequency"])
    assert again.score(hypothesis, reference) == pytest.approx(cider.score(hypothesis, reference), abs=1e-12)


def test_consensus_utility_favours_what_most_samples_say():
    cider = CiderD([t.split() for t in ["left lobe mass .", "right effusion .", "no effusion .", "left effusion ."]])
    samples = [s.split() for s in ["right effusion .", "right effusion .", "left lobe mass ."]]
    utility = cider.consensus([c.split() for c in ["left lobe mass .", "right effusion .", "no ."]], samples)
    assert utility.argmax() == 1 and utility[1] > utility[0] > utility[2]
    assert cider.consensus([["no"]], []).tolist() == [0.0]


class _StubDecoder:
    """Fixed beam reports and samples: what `CaptionerBundle.consensus` chooses among."""

    def __init__(self, candidates, scores, samples):
        self.candidates, self.scores, self.samples = candidates, scores, samples

    def beam_candidates(self, part, width, length_penalty, no_repeat_ngram):
        return self.candidates, self.scores

    def sample(self, part, rng, samples):
        assert isinstance(rng, list) and len(rng) == len(self.candidates)  # one generator per study
        return self.samples.reshape(-1, self.samples.shape[-1])


def _bundle_with(decoder, vocab, cider):
    from radcap.captioning.bundle import CaptionerBundle
    from radcap.core.model_config import CaptionerConfig

    config = CaptionerConfig(
        encoder_version="test", architecture="show-tell", embed_dim=8, units=8, dropout=0.0, max_views=1
    )
    bundle = CaptionerBundle(None, vocab, config, cider=cider)
    bundle.__dict__["decoder"] = decoder  # the cached property, replaced
    return bundle


def test_the_consensus_report_is_the_beam_report_most_like_the_samples_not_the_most_probable():
    from radcap.text.vocab import Vocabulary

    reports = ["left lobe mass.", "right effusion.", "no effusion."]
    vocab = Vocabulary.build(reports, 1, 8)
    ids = np.array(vocab.encode_padded(reports))[:, 1:]  # without <start>
    # study 0: the beam ranks "left lobe mass" first, but the samples mostly say "right effusion";
    # study 1: the third beam never got a finite score (fewer reports than the width) and is never chosen
    candidates = np.stack([ids, ids])
    scores = np.array([[-1.0, -2.0, -3.0], [-2.0, -1.0, -np.inf]])
    samples = np.stack([ids[[1, 1, 0]], ids[[2, 2, 2]]])
    cider = CiderD([r.split() for r in ["left lobe mass .", "right effusion .", "no effusion .", "left effusion ."]])
    bundle = _bundle_with(_StubDecoder(candidates, scores, samples), vocab, cider)
    chosen = bundle.consensus({}, 3, 1.0, 0, 3)
    assert [vocab.decode(c) for c in chosen] == ["right effusion.", "right effusion."]
    # equal utilities (a one-document corpus weighs every n-gram 0): the beam's order decides
    tied = _bundle_with(_StubDecoder(candidates, scores, samples), vocab, CiderD([["x"]]))
    assert [vocab.decode(c) for c in tied.consensus({}, 3, 1.0, 0, 3)] == ["left lobe mass.", "right effusion."]


def _trained_bundle(tmp_path):
    from radcap.captioning.data import CaptionSet
    from radcap.captioning.training import train_captioner
    from radcap.core.settings import DecoderSettings
    from radcap.text.vocab import Vocabulary

    reports = [
        "left lobe mass.",
        "right pleural effusion.",
        "no acute abnormality.",
        "mild cardiomegaly.",
        "left pleural effusion.",
        "right lobe mass.",
    ]
    rng = np.random.default_rng(0)
    data = CaptionSet(
        [str(i) for i in range(12)],
        [reports[i % 6] for i in range(12)],
        rng.random((12, 1, 1024), np.float32),
        np.ones((12, 1), np.float32),
    )
    cfg = DecoderSettings(
        architecture="show-tell", embed_dim=8, units=16, epochs=1, min_epochs=1, min_count=1, batch_size=4, max_views=1
    )
    trained = train_captioner(data, data, Vocabulary.build(data.texts, 1, 12), cfg, {"encoder_version": "test"})
    return trained.bundle, data


def test_consensus_reports_do_not_depend_on_the_batch_and_survive_saving(tmp_path):
    """Real code path on a barely trained model (its beam reports differ): each study's report is the same
    decoded alone or among others, is one of its beam's reports, and the saved bundle writes the same."""
    from radcap.captioning.bundle import load_bundle

    bundle, data = _trained_bundle(tmp_path)
    features = data.features(slice(None))
    together = bundle.generate(features, beam_width=4, consensus_samples=5)
    for i in range(len(data)):
        alone = bundle.generate(data.features(slice(i, i + 1)), beam_width=4, consensus_samples=5)[0]
        np.testing.assert_array_equal(alone, together[i])
        beams, _ = bundle.decoder.beam_candidates(bundle.model_inputs(data.features(slice(i, i + 1)), slice(None)), 4)
        assert any(np.array_equal(b[: len(alone)], alone) and not b[len(alone) :].any() for b in beams[0])
    bundle.config.decoding = bundle.config.decoding.model_copy(update={"beam_width": 4, "consensus_samples": 5})
    bundle.save(tmp_path / "bundle")
    loaded = load_bundle(tmp_path / "bundle")
    assert loaded.report(features) == bundle.caption(features, 4, bundle.config.decoding.length_penalty, 0, 5)
    (tmp_path / "bundle" / "consensus.json").unlink()
    with pytest.raises(RadcapError, match="consensus_samples=0"):
        load_bundle(tmp_path / "bundle").report(features)
    assert load_bundle(tmp_path / "bundle").report(features, consensus_samples=0)  # plain beam still works


def test_per_study_generators_make_each_studys_samples_its_own():
    from radcap.models.decoding import Decoder
    from tests.test_scst import _tiny_model

    model, features = _tiny_model()
    decoder = Decoder(model, 1, 2, max_length=8)
    together = decoder.sample(features, [np.random.default_rng(7) for _ in range(4)], samples=3)
    for b in range(4):
        alone = decoder.sample({k: v[b : b + 1] for k, v in features.items()}, [np.random.default_rng(7)], samples=3)
        np.testing.assert_array_equal(alone, together[3 * b : 3 * b + 3, : alone.shape[1]])


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_a_mutated_consensus_table_loads_or_is_refused_naming_the_file(tmp_path_factory, data):
    """Mutation fuzz of `consensus.json` (a file a user may copy between machines): any damage either still
    reads as a table or is a RadcapError naming the file; never another exception."""
    from radcap.captioning.bundle import read_consensus

    folder = tmp_path_factory.mktemp("bundle")
    text = json.dumps(CiderD([t.split() for t in ["left lobe mass .", "left lobe .", "no mass ."]]).to_json())
    position = data.draw(st.integers(0, len(text)))
    kind = data.draw(st.sampled_from(["cut", "insert", "replace"]))
    junk = data.draw(st.text(alphabet='{}[]",:0123456789.-eantrul ', min_size=1, max_size=4))
    text = {
        "cut": text[:position],
        "insert": text[:position] + junk + text[position:],
        "replace": text[:position] + junk + text[position + len(junk) :],
    }[kind]
    (folder / "consensus.json").write_text(text)
    try:
        loaded = read_consensus(folder)
    except RadcapError as exc:
        assert "consensus.json" in str(exc)
    else:
        assert isinstance(loaded, CiderD) and np.isfinite(loaded.score(["left"], ["left", "lobe"]))
