"""Does a captioner (or retriever) say the same from features at a lower precision? The check behind
`radcap check-precision`: a pass is recorded on the registered version (`radcap.imaging.precision`), and only
then does `radcap caption --precision` (or `radcap retrieve --precision`) accept it."""

from __future__ import annotations

import numpy as np

from radcap.core.errors import RadcapError
from radcap.metrics.scores import caption_metrics
from radcap.retrieval.retriever import both_directions

FIDELITY = {"cosine": 0.99, "relative_metric_change": 0.02}
CHECKED_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _aligned(reference, candidate, precision: str):
    """The studies both CaptionSets hold, in the reference's order, and the pooled cosine of their views."""
    available = set(candidate.report_ids)
    common = [r for r in reference.report_ids if r in available]
    if not common:
        raise RadcapError(
            f"no study has both fp32 and {precision} features: run `radcap features --precision "
            f"{precision}` on the same data"
        )
    reference, candidate = reference.subset(common), candidate.subset(common)
    mask = reference.view_mask > 0
    a, b = reference.pooled[mask], candidate.pooled[mask]
    cosines = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return reference, candidate, cosines


def _verdict(
    precision: str,
    studies: int,
    cosines: np.ndarray,
    before: dict,
    after: dict,
    names,
    identical: float,
    identical_name: str,
) -> dict:
    """Each metric's relative change, and the failures against FIDELITY."""
    metrics, failures = {}, []
    for name in names:
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            continue  # METEOR without Java
        change = (new - old) / old if old else (0.0 if new == old else float("inf"))
        metrics[name] = {"fp32": round(old, 4), precision: round(new, 4), "relative_change": round(change, 4)}
        if abs(change) > FIDELITY["relative_metric_change"]:
            failures.append(f"{name} {change:+.1%}")
    if cosines.mean() < FIDELITY["cosine"]:
        failures.append(f"feature cosine {cosines.mean():.4f} < {FIDELITY['cosine']}")
    return {
        "precision": precision,
        "studies": studies,
        "cosine_mean": round(float(cosines.mean()), 5),
        "cosine_min": round(float(cosines.min()), 5),
        identical_name: round(identical, 4),
        "metrics": metrics,
        "bounds": FIDELITY,
        "passed": not failures,
        "failures": failures,
    }


def fidelity_check(bundle, reference, candidate, precision: str, meteor: bool = True) -> dict:
    """The captioner's reports on the same studies from fp32 (`reference`) and `precision` (`candidate`)
    features (CaptionSets): pooled cosine, metrics of each against the references, the share of identical
    reports; passed when the cosine and every metric's relative change are within FIDELITY."""
    reference, candidate, cosines = _aligned(reference, candidate, precision)
    fp32_reports = bundle.report(reference.features(slice(None)))
    reports = bundle.report(candidate.features(slice(None)))
    ids = reference.report_ids
    texts = {r: [text] for r, text in zip(ids, reference.texts)}
    before = caption_metrics(texts, dict(zip(ids, fp32_reports)), meteor)
    after = caption_metrics(texts, dict(zip(ids, reports)), meteor)
    identical = float(np.mean([x == y for x, y in zip(fp32_reports, reports)]))
    return _verdict(precision, len(ids), cosines, before, after, CHECKED_METRICS, identical, "identical_reports")


RETRIEVAL_METRICS = ("image_to_report_R@1", "image_to_report_R@5", "image_to_report_R@10", "mean_recall")


def retrieval_fidelity_check(bundle, index, reference, candidate, precision: str) -> dict:
    """The retriever on the same studies from fp32 and `precision` features: pooled cosine, recall of each (the
    gallery: those studies' reports), and the share of studies whose top-1 known report (what `radcap retrieve`
    answers first) is the same; passed when the cosine and every recall's relative change are within FIDELITY."""
    reference, candidate, cosines = _aligned(reference, candidate, precision)
    texts = bundle.text_embeddings(reference.texts)
    images = {
        name: bundle.image_embeddings(s.pooled, s.view_mask)
        for name, s in (("fp32", reference), (precision, candidate))
    }
    before, after = (both_directions(images[name], texts, reference.texts) for name in ("fp32", precision))
    top1 = {name: [hit["item_id"].iloc[0] for hit in index.search(emb, "report", 1)] for name, emb in images.items()}
    identical = float(np.mean([x == y for x, y in zip(top1["fp32"], top1[precision])]))
    return _verdict(precision, len(reference), cosines, before, after, RETRIEVAL_METRICS, identical, "identical_top1")
