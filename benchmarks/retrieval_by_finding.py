"""Retrieval scored by finding on the real chest X-rays: a hit is a retrieved item with the query's finding
label (COVID-19, other pneumonias, No Finding, ...), in both directions, against random ranking and
raw-feature neighbours. The reports are the collection's free-text clinical notes.

    radcap train-retrieval --data out/bench/encoder_probe/covid --out out/bench/covid-retrieval \\
        --encoder-version radcap-encoder/2
    .venv/bin/python benchmarks/retrieval_by_finding.py --data out/bench/encoder_probe/covid \\
        --model out/bench/covid-retrieval --split test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from radcap.core.runtime import apply_offline_defaults

apply_offline_defaults()
from radcap.captioning.data import CaptionSet, build_caption_set  # noqa: E402
from radcap.core.catalog import DataCatalog  # noqa: E402
from radcap.core.io import read_table  # noqa: E402
from radcap.data_contracts import IMAGES, REPORTS  # noqa: E402
from radcap.imaging.features import FeatureStore  # noqa: E402
from radcap.retrieval.retriever import (  # noqa: E402
    both_directions,
    load_retriever,
    random_baseline,
    raw_feature_baseline,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    loaded = load_retriever(args.model)
    bundle, name = loaded.bundle, loaded.uri
    catalog = DataCatalog(args.data)
    reports, images = read_table(catalog.reports, REPORTS), read_table(catalog.images, IMAGES)
    store, version = FeatureStore(catalog.features), bundle.config.encoder_version
    train = build_caption_set(reports, images, store, version, "train", 2)
    evaluated = build_caption_set(reports, images, store, version, args.split, 2)
    finding = (
        images.groupby("report_id")["labels"]
        .first()
        .map(lambda labels: next((lab.split(":", 1)[1] for lab in labels if lab.startswith("finding:")), "unknown"))
    )
    labels = finding.reindex(evaluated.report_ids).fillna("unknown").to_numpy()
    known = np.flatnonzero(labels != "unknown")  # images without a finding label are left out
    evaluated = CaptionSet(
        [evaluated.report_ids[i] for i in known],
        [evaluated.texts[i] for i in known],
        evaluated.pooled[known],
        evaluated.view_mask[known],
    )
    labels = labels[known]
    relevant = labels[:, None] == labels[None, :]
    rows = {
        "contrastive retriever": both_directions(
            bundle.image_embeddings(evaluated.pooled, evaluated.view_mask),
            bundle.text_embeddings(evaluated.texts),
            evaluated.texts,
            relevant,
        ),
        "raw-feature neighbours": raw_feature_baseline(train, evaluated, relevant),
        "random ranking": random_baseline(evaluated, relevant),
    }
    print(
        f"{name} on {args.data} split {args.split}: {len(evaluated)} images; findings "
        f"{pd.Series(labels).value_counts().to_dict()}; a hit = same finding"
    )
    print(pd.DataFrame(rows).T.to_string(float_format="%.3f"))


if __name__ == "__main__":
    main()
