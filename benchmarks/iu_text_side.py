"""IU X-Ray, text side, on all real reports: vocabulary, finding-labeler agreement with MeSH, text baselines.

Only 4 IU images exist here, so no IU model can be trained on images; what can be measured honestly is
everything that needs only the reports:

1. `radcap ingest` of the 3,851 real XML reports with the R2Gen split (the pipeline's own ingestion).
2. The vocabulary the decoders would use (train split targets, the settings' min count and max length):
   size, share of `<unk>` tokens on the test split, caption lengths, share cut by `max_length`.
3. The rule-based finding labeler against IU's MeSH major terms (an independent annotation of the same
   reports), per observation with a documented term mapping; uncertain mentions counted positive.
4. The most-frequent and random train-caption baselines on the R2Gen test split, scored with the same
   caption and clinical metrics as `radcap evaluate` (the nearest-neighbour baseline needs image features).

    .venv/bin/python benchmarks/iu_text_side.py --out out/bench/iu
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from radcap.core.runtime import apply_offline_defaults

apply_offline_defaults()
from radcap.core.catalog import DataCatalog  # noqa: E402
from radcap.core.io import read_table  # noqa: E402
from radcap.core.settings import get_settings  # noqa: E402
from radcap.data_contracts import REPORTS  # noqa: E402
from radcap.metrics.scores import caption_metrics, clinical_metrics  # noqa: E402
from radcap.text.labeler import BinaryLabels  # noqa: E402
from radcap.text.vocab import Vocabulary, tokenize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IU = ROOT.parent / "shared" / "data" / "iu_xray"

# CheXpert observation -> IU MeSH major-term heads that assert it. Observations with no MeSH counterpart
# (Enlarged Cardiomediastinum, Pleural Other) are not scored.
MESH_FOR = {
    "No Finding": {"normal"},
    "Cardiomegaly": {"Cardiomegaly"},
    "Lung Opacity": {"Opacity", "Airspace Disease", "Infiltrate", "Density", "Consolidation"},
    "Lung Lesion": {"Nodule", "Mass"},
    "Edema": {"Pulmonary Edema", "Pulmonary Congestion"},
    "Consolidation": {"Consolidation"},
    "Pneumonia": {"Pneumonia"},
    "Atelectasis": {"Pulmonary Atelectasis"},
    "Pneumothorax": {"Pneumothorax"},
    "Pleural Effusion": {"Pleural Effusion"},
    "Fracture": {"Fractures, Bone"},
    "Support Devices": {
        "Catheters, Indwelling",
        "Surgical Instruments",
        "Implanted Medical Device",
        "Tube, Inserted",
        "Medical Device",
        "Stents",
        "Pacemaker, Artificial",
    },
}


def ingest(out: Path) -> Path:
    data = out / "data"
    if not DataCatalog(data).ingest_summary.exists():
        subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "radcap"),
                "ingest",
                "--format",
                "iu-xml",
                "--source",
                str(IU / "ecgen-radiology"),
                "--images",
                str(IU / "images"),
                "--views",
                str(IU / "indiana_projections.csv"),
                "--split-file",
                str(IU / "r2gen_annotation.json"),
                "--out",
                str(data),
            ],
            check=False,  # exit 1 = some rejects (the 25 empty reports); the summary says how many
        )
    return data


def vocabulary_stats(reports: pd.DataFrame) -> dict:
    cfg = get_settings().captioner
    train, test = reports[reports.split == "train"], reports[reports.split == "test"]
    vocab = Vocabulary.build(train.target, min_count=cfg.min_count, max_length=cfg.max_length)
    index = vocab.index
    test_tokens = [t for text in test.target for t in tokenize(text)]
    lengths = np.array([len(tokenize(t)) for t in reports.target])
    return {
        "min_count": cfg.min_count,
        "max_length": cfg.max_length,
        "vocabulary_size": len(vocab),
        "train_reports": len(train),
        "test_reports": len(test),
        "test_unk_share": float(np.mean([t not in index for t in test_tokens])),
        "tokens_median": float(np.median(lengths)),
        "tokens_p95": float(np.percentile(lengths, 95)),
        "share_longer_than_max_length": float(np.mean(lengths + 2 > cfg.max_length)),
    }


def labeler_agreement(reports: pd.DataFrame) -> pd.DataFrame:
    indexed = reports[reports.mesh.map(lambda m: len(m) > 0 and "No Indexing" not in m)]
    heads = [{term.split("/")[0].strip() for term in mesh} for mesh in indexed.mesh]
    labeler = BinaryLabels(uncertain_as=1.0)
    texts = [" ".join(t for t in (f, i) if isinstance(t, str)) for f, i in zip(indexed.findings, indexed.impression)]
    labels = [labeler(text) for text in texts]
    rows = []
    for observation, terms in MESH_FOR.items():
        truth = np.array([bool(h & terms) for h in heads])
        predicted = np.array([row[observation] == 1 for row in labels])
        tp = int((truth & predicted).sum())
        precision = tp / max(predicted.sum(), 1)
        recall = tp / max(truth.sum(), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "observation": observation,
                "mesh_positive": int(truth.sum()),
                "labeler_positive": int(predicted.sum()),
                "precision": precision,
                "recall": recall,
                "f1": f1,
            }
        )
    return pd.DataFrame(rows)


def text_baselines(reports: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    train = reports[reports.split == "train"].sort_values("report_id")
    test = reports[reports.split == "test"].sort_values("report_id")
    references = dict(zip(test.report_id, test.target))
    most_frequent = train.target.value_counts().index[0]
    rng = np.random.default_rng(seed)
    systems = {
        "most frequent train caption": [most_frequent] * len(test),
        "random train caption": train.target.to_numpy()[rng.integers(0, len(train), len(test))].tolist(),
    }
    rows = []
    for name, captions in systems.items():
        hypotheses = dict(zip(test.report_id, captions))
        clinical = clinical_metrics(references, hypotheses)
        rows.append(
            {
                "system": name,
                **caption_metrics({k: [v] for k, v in references.items()}, hypotheses),
                "clinical_micro_f1": clinical["micro_f1"],
                "clinical_macro_f1": clinical["macro_f1"],
            }
        )
    print(f"most frequent IU train target: {most_frequent!r}")
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "iu")
    args = parser.parse_args()
    data = ingest(args.out)
    reports = read_table(DataCatalog(data).reports, REPORTS)
    print(
        f"reports: {len(reports)}; split: {reports.split.value_counts().to_dict()}; "
        f"target sections: {reports.target_section.value_counts().to_dict()}"
    )
    stats = vocabulary_stats(reports)
    print("vocabulary:", json.dumps(stats, indent=1))
    agreement = labeler_agreement(reports)
    print("labeler vs MeSH (reports indexed by MeSH; uncertain counted positive):")
    print(agreement.to_string(index=False, float_format="%.3f"))
    baselines = text_baselines(reports)
    print("R2Gen test split, text baselines:")
    print(baselines.to_string(index=False, float_format="%.4f"))
    result = {
        "vocabulary": stats,
        "labeler_agreement": agreement.to_dict("records"),
        "baselines": baselines.to_dict("records"),
    }
    (args.out / "iu_text_side.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(
        f"written {args.out / 'iu_text_side.json'}\n"
        f"reproduce: .venv/bin/python benchmarks/iu_text_side.py --out {args.out}"
    )


if __name__ == "__main__":
    main()
