"""Encoder quality on real data: linear probes on frozen features, self-trained encoder vs random init.

Runs the real pipeline through the `radcap` CLI: ingest MedPix 2.0 and the COVID chest X-rays (as a manifest
with `finding` labels, split by patient), `radcap pretrain-encoder` on both, `radcap features` with the
trained and with a random-initialised encoder, then a logistic regression per task on the pooled features,
fitted on train and scored on MedPix dev (val) / the chest X-rays' held-out test patients.
Target (issue 3): the trained encoder at least +10 points accuracy on MedPix location category.

    .venv/bin/python benchmarks/encoder_probe.py --epochs 16 --image-size 160   # ~60 min on 2 CPU cores
    .venv/bin/python benchmarks/encoder_probe.py --encoder models:/radcap-encoder/3   # reuse a trained one
    .venv/bin/python benchmarks/encoder_probe.py --work out/bench/ood \
        --encoder models:/radcap-encoder-oodbench/2 --encoder models:/radcap-encoder-qualitybench/1   # compare
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RADCAP = str(ROOT / ".venv" / "bin" / "radcap")


def cli(*args: str) -> None:
    print("$ radcap", " ".join(args), flush=True)
    start = time.perf_counter()
    code = subprocess.run([RADCAP, *args], env=os.environ).returncode
    print(f"  exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
    if code not in (0, 1):  # 1: some inputs rejected, listed in the rejects table
        sys.exit(f"radcap {args[0]} failed with exit code {code}")


def covid_manifest(target: Path) -> Path:
    """metadata.csv -> radcap manifest: caption = clinical notes (else the finding), label = finding."""
    meta = pd.read_csv(DATA / "covid_cxr" / "metadata.csv", dtype=str, keep_default_na=False)
    finding = meta["finding"].str.split(",").str[0].str.strip()
    known = ~finding.isin(["todo", "Unknown", ""])
    manifest = pd.DataFrame(
        {
            "image": [str(DATA / "covid_cxr" / "images" / f) for f in meta["filename"]],
            "caption": meta["clinical_notes"].where(
                meta["clinical_notes"].str.strip() != "", "Finding: " + meta["finding"]
            ),
            "patient_id": "covid-" + meta["patientid"],
            "labels": np.where(known, "finding:" + finding, ""),
        }
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(target, index=False)
    return target


def finding_of(labels) -> str | None:
    return next((label.split(":", 1)[1] for label in labels if label.startswith("finding:")), None)


def load(data_dir: Path, encoder_version: str) -> pd.DataFrame:
    sys.path.insert(0, str(ROOT))
    from radcap.imaging.features import FeatureStore

    images = pd.read_parquet(data_dir / "images.parquet")
    stored = FeatureStore(data_dir / "features").load(encoder_version)
    feats = pd.DataFrame({"image_id": stored["image_id"], "x": list(stored["pooled"])})
    return images.merge(feats, on="image_id")


def probe(frame: pd.DataFrame, label: str, train: str, test: str, min_count: int = 5) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = frame[frame[label].notna() & (frame[label] != "")]
    counts = frame[frame["split"] == train][label].value_counts()
    frame = frame[frame[label].isin(counts[counts >= min_count].index)]
    tr, te = frame[frame["split"] == train], frame[frame["split"] == test]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    clf.fit(np.stack(tr["x"]), tr[label])
    pred = clf.predict(np.stack(te["x"]))
    majority = tr[label].value_counts().index[0]
    return {
        "classes": int(tr[label].nunique()),
        "train": len(tr),
        "test": len(te),
        "accuracy": float((pred == te[label]).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(te[label], pred)),
        "majority_accuracy": float((te[label] == majority).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench" / "encoder_probe")
    parser.add_argument(
        "--encoder",
        action="append",
        help="a trained encoder URI (repeatable: each is probed); default: pretrain one now",
    )
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--random-seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} not found: this benchmark needs the real data")
    medpix, covid = args.work / "medpix", args.work / "covid"
    if not (medpix / "ingest.json").exists():
        cli(
            "ingest",
            "--format",
            "medpix2",
            "--source",
            str(DATA / "medpix2"),
            "--images",
            str(DATA / "medpix2" / "images"),
            "--out",
            str(medpix),
        )
    if not (covid / "ingest.json").exists():
        cli(
            "ingest",
            "--format",
            "manifest",
            "--source",
            str(covid_manifest(args.work / "covid_manifest.csv")),
            "--out",
            str(covid),
        )
    encoders = args.encoder or []
    if not encoders:
        run = args.work / "encoder"
        cli(
            "pretrain-encoder",
            "--data",
            str(medpix),
            "--data",
            str(covid),
            "--out",
            str(run),
            "--epochs",
            str(args.epochs),
            "--image-size",
            str(args.image_size),
        )
        encoders = [json.loads((run / "pretrain.json").read_text())["registered"]]
    versions = {}
    named = [(f"trained {i + 1}" if len(encoders) > 1 else "trained", e) for i, e in enumerate(encoders)]
    for name, spec in (*named, ("random", f"random:{args.random_seed}")):
        for data_dir in (medpix, covid):
            cli("features", "--data", str(data_dir), "--encoder", spec)
        versions[name] = json.loads((medpix / "features" / "features.json").read_text())["encoder_version"]

    tasks = [
        ("MedPix location category", medpix, "location_category", "train", "val"),
        ("MedPix modality (CT/MR)", medpix, "modality", "train", "val"),
        ("MedPix plane", medpix, "plane", "train", "val"),
        ("Chest X-ray finding", covid, "finding", "train", "test"),
    ]
    rows = []
    for name, version in versions.items():
        cache = {}
        for task, data_dir, label, train, test in tasks:
            if data_dir not in cache:
                cache[data_dir] = load(data_dir, version)
            frame = cache[data_dir]
            if label == "finding":
                frame = frame.assign(finding=frame["labels"].map(finding_of))
            rows.append({"encoder": f"{name} ({version})", "task": task, **probe(frame, label, train, test)})
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    out = args.work / "probe_results.json"
    out.write_text(json.dumps(rows, indent=2))
    random = table[table["encoder"].str.startswith("random")].set_index("task")["accuracy"]
    for name, version in versions.items():
        if name == "random":
            continue
        gain = 100 * (table[table["encoder"] == f"{name} ({version})"].set_index("task")["accuracy"] - random)
        print(f"\naccuracy gain of {version} over random init (points):")
        print(gain.round(1).to_string())
        print(f"target: >= +10 points on MedPix location category -> {gain['MedPix location category']:+.1f}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
