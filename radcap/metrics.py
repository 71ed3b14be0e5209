"""Caption metrics (pycocoevalcap) and clinical correctness (the rule-based finding labeler).

Tokenization, documented because every number depends on it: references and hypotheses are the normalized
targets (`radcap.text`: lowercase, IU placeholders as `xxxx`), tokenized by `radcap.vocab.tokenize` (the
same tokenizer as training; Punkt sentences + Penn Treebank words, punctuation kept as tokens), and joined
with spaces before scoring. pycocoevalcap's PTB tokenizer is not used, so the scores do not depend on a
second tokenization. BLEU-n is the standard cumulative BLEU (geometric mean of 1..n-gram precisions with the
brevity penalty, corpus level); METEOR 1.5 (Java); ROUGE-L (F, beta 1.2); CIDEr-D as in coco-caption.
"""

from __future__ import annotations

import numpy as np

from radcap.finding_labeler import OBSERVATIONS, BinaryLabels
from radcap.vocab import tokenize

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _prepare(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    return {key: [" ".join(tokenize(t)) or "." for t in values] for key, values in texts.items()}


def caption_metrics(references: dict[str, list[str]], hypotheses: dict[str, str], meteor: bool = True) -> dict[str, float]:
    """Corpus-level scores of `hypotheses` (one per id) against `references` (one or more per id)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = sorted(hypotheses)
    gts = _prepare({i: references[i] for i in ids})
    res = _prepare({i: [hypotheses[i]] for i in ids})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)}
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scores["METEOR"] = float(Meteor().compute_score(gts, res)[0])  # starts Java; closed when collected
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


def clinical_metrics(references: dict[str, str], hypotheses: dict[str, str], uncertain_as: float = 1.0) -> dict:
    """Per-observation precision/recall/F1 of the generated reports' findings against the references',
    plus micro and macro averages over the observations present in the references."""
    labeler = BinaryLabels(uncertain_as)
    ids = sorted(hypotheses)

    def matrix(texts: dict[str, str]) -> np.ndarray:  # each text labelled once
        return np.array([[row[o] for o in OBSERVATIONS] for row in (labeler(texts[i]) for i in ids)], dtype=bool)

    ref, hyp = matrix(references), matrix(hypotheses)
    tp, fp, fn = (ref & hyp).sum(0), (~ref & hyp).sum(0), (ref & ~hyp).sum(0)

    def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return float(precision), float(recall), float(f1)

    per = {}
    for k, obs in enumerate(OBSERVATIONS):
        precision, recall, f1 = prf(tp[k], fp[k], fn[k])
        per[obs] = {"precision": precision, "recall": recall, "f1": f1, "support": int(ref[:, k].sum())}
    present = np.array([per[o]["support"] > 0 for o in OBSERVATIONS])
    micro = prf(tp[present].sum(), fp[present].sum(), fn[present].sum())
    macro = [float(np.mean([per[o][m] for o, p in zip(OBSERVATIONS, present) if p])) if present.any() else 0.0
             for m in ("precision", "recall", "f1")]
    return {
        "per_finding": per,
        "micro_precision": micro[0], "micro_recall": micro[1], "micro_f1": micro[2],
        "macro_precision": macro[0], "macro_recall": macro[1], "macro_f1": macro[2],
    }
