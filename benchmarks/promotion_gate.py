"""The promotion gate on real IU X-Ray reports: does a candidate that invents findings get promoted?

References: the impressions of the R2Gen test split (590 real reports, ../shared/data). Two systems that no
model produced, built so that the question has a known answer:
* champion: for each reference, another test report with exactly the same finding labels (a clinically
  perfect retriever: other words, the same findings), itself when no other has those labels;
* candidate: each reference copied word for word, plus two invented findings ("widened mediastinum. acute
  rib fracture."; no test reference has an enlarged cardiomediastinum): far more n-grams in common with the
  reference (higher CIDEr), clinically wrong on every report.
Prints both metric sets, the clinical micro-F1 as the previous gate counted it (only observations some
reference mentions, so invented findings were invisible), and the gate's decision with its reason.

    .venv/bin/python benchmarks/promotion_gate.py
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "iu_xray"
sys.path.insert(0, str(ROOT))


def previous_micro_f1(references: dict[str, str], hypotheses: dict[str, str]) -> float:
    """The old definition: counts summed over the observations that some reference mentions."""
    from radcap.metrics.scores import clinical_counts

    ids = sorted(hypotheses)
    counts = clinical_counts([references[i] for i in ids], [hypotheses[i] for i in ids]).sum(axis=0)
    present = (counts[0] + counts[2]) > 0
    tp, fp, fn = (counts[k][present].sum() for k in range(3))
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)


def main() -> None:
    from radcap.core.settings import PromotionSettings, TextRules
    from radcap.ingestion.iu import read_iu_xml
    from radcap.ingestion.splits import apply_r2gen, read_r2gen_split
    from radcap.metrics.scores import score_reports
    from radcap.registry.promotion import decide
    from radcap.text.labeler import BinaryLabels

    parsed = read_iu_xml(DATA / "ecgen-radiology", TextRules())
    apply_r2gen(parsed, read_r2gen_split(DATA / "r2gen_annotation.json"))
    references = {r["report_id"]: r["target"] for r in parsed.reports if r["split"] == "test"}
    labeler, by_labels = BinaryLabels(), {}
    for report_id in sorted(references):
        by_labels.setdefault(tuple(labeler(references[report_id]).values()), []).append(report_id)
    rng = random.Random(0)
    champion = {}
    for group in by_labels.values():
        for report_id in group:
            others = [o for o in group if o != report_id] or [report_id]
            champion[report_id] = references[rng.choice(others)]
    candidate = {k: f"{v} widened mediastinum. acute rib fracture." for k, v in references.items()}
    scores = {"2": score_reports(references, candidate), "1": score_reports(references, champion)}
    print(f"{len(references)} R2Gen test impressions")
    for version, name in (
        ("1", "champion (same findings, other words)"),
        ("2", "candidate (copy + 2 invented findings)"),
    ):
        summary = scores[version].summary()
        old = previous_micro_f1(references, candidate if version == "2" else champion)
        print(
            f"{name}: "
            + ", ".join(
                f"{k} {summary[k]:.4f}"
                for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "clinical_micro_f1")
                if summary[k] is not None
            )
            + f"; micro-F1 as the previous gate counted it {old:.4f}"
        )
    decision = decide("2", "1", scores, PromotionSettings())
    print(f"decision: {'promote' if decision.promote else 'refuse'}: {decision.reason}")


if __name__ == "__main__":
    main()
