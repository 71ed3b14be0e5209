"""Exact search at index scale: latency and memory of `RetrievalIndex.search` over N items.

The vectors are synthetic unit vectors (the cost of exact search depends only on N, the dimension and the
number of queries, not on what the vectors mean); the index is the real class, built from a Parquet-shaped
table as `radcap search` loads it.

    .venv/bin/python benchmarks/search_scale.py --items 1000000 --dim 256 --queries 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rss import peak_rss_mib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from radcap.retrieval.retriever import RetrievalIndex


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.items, args.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pd.DataFrame(
        {
            "item_id": np.arange(args.items).astype(str),
            "kind": "image",
            "text": "",
            "source": "",
            "split": "train",
            "embedding": list(vectors),
        }
    )
    start = time.perf_counter()
    index = RetrievalIndex(table)
    build = time.perf_counter() - start
    queries = vectors[rng.integers(0, args.items, args.queries)] + 0.01 * rng.standard_normal(
        (args.queries, args.dim), dtype=np.float32
    )
    index.search(queries[:2], "image", args.top_k)  # warm
    start = time.perf_counter()
    hits = index.search(queries, "image", args.top_k)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    print(
        f"{args.items:,} items x {args.dim} dims: index built in {build:.1f} s; "
        f"{args.queries} queries, top {args.top_k}: "
        f"{seconds:.2f} s ({1000 * seconds / args.queries:.1f} ms/query); peak RSS {peak:,.0f} MiB; "
        f"top-1 score mean {np.mean([h['score'].iloc[0] for h in hits]):.3f}"
    )


if __name__ == "__main__":
    main()
