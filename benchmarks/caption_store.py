"""The captions store at scale (issue 28): a 10^6-row table (500,000 two-view studies), side by side in one run,
the Delta Lake tables (radcap.captioning.store) and the Parquet-segment store they replaced (CaptionStore of
commit 8751b22, loaded from git history, skipped when there is none).

Per store: seeding the table (one run of 10^6 rows; not a target), committing 1,000 new rows (500 new studies),
re-captioning 1,000 studies (2,000 rows replaced), and reading the whole table (`read_captions`, and DuckDB's
`delta_scan`; the old store: `pd.read_parquet` of its dataset). Each timing is the median of `--repeats`.

    .venv/bin/python benchmarks/caption_store.py --rows 1000000 --repeats 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "8751b22"


def rows(studies: np.ndarray, caption: str, minutes: int) -> pd.DataFrame:
    """Two rows (frontal, lateral) per study number, as `radcap caption` writes them."""
    n = len(studies)
    study = np.char.add("1.2.826.0.1.3680043.8.498.", studies.astype(str))
    both = np.repeat(study, 2)
    view = np.tile(np.array(["frontal", "lateral"]), n)
    image = np.char.add(np.char.add(both, "."), np.tile(np.array(["1", "2"]), n))
    path = np.char.add(np.char.add(np.char.add("export/", both), "/"), np.char.add(view, ".dcm"))
    return pd.DataFrame(
        {
            "study_id": both,
            "image_id": image,
            "view": view,
            "source_path": path,
            "sha256": np.char.add(np.repeat(np.char.zfill(studies.astype(str), 64), 2), ""),
            "caption": f"{caption}: no acute cardiopulmonary abnormality.",
            "model": "radcap-captioner",
            "model_version": "7",
            "encoder_version": "3",
            "captioned_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=minutes),
            "ood_score": np.float32(0.2),
            "in_domain": True,
            "ood_reason": None,
        }
    ).astype({"captioned_at": "datetime64[us, UTC]"})


def old_store_class():
    """CaptionStore as released before Delta tables, from git history (None without it)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:src/radcap/captioning/bulk.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("radcap_bulk_8751b22")
    sys.modules[module.__name__] = module  # its dataclasses look themselves up there
    exec(compile(source, f"{OLD_COMMIT}:bulk.py", "exec"), module.__dict__)
    return module.CaptionStore


def timed(step, repeats: int) -> float:
    seconds = []
    for k in range(repeats):
        start = time.perf_counter()
        step(k)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure(name: str, store, read_whole, total_studies: int, repeats: int) -> dict:
    from radcap.data_contracts import CAPTION_REJECTS

    def commit(frame: pd.DataFrame, run: str) -> None:
        with store.writing(60):
            store.write_batch(frame, CAPTION_REJECTS.empty(), run, 0)
            store.consolidate()

    start = time.perf_counter()
    commit(rows(np.arange(total_studies), "seed", 0), "seed")
    seeded = time.perf_counter() - start
    rng = np.random.default_rng(0)
    new_studies = lambda k: np.arange(500) + total_studies + 500 * k  # noqa: E731
    new_rows = timed(lambda k: commit(rows(new_studies(k), "new", 1), f"new{k}"), repeats)
    recaption = timed(
        lambda k: commit(rows(rng.choice(total_studies, 1000, replace=False), f"again {k}", 2 + k), f"re{k}"),
        repeats,
    )
    read = timed(lambda k: read_whole(), repeats)
    result = {
        "store": name,
        "rows": len(read_whole()),
        "seed_s": round(seeded, 2),
        "commit_1000_new_rows_s": round(new_rows, 3),
        "recaption_1000_studies_s": round(recaption, 3),
        "read_whole_table_s": round(read, 3),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line with every number at the end")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="The inplace keyword")  # DuckDB's .df() on pandas 3
    from radcap import duckdb_connection, read_captions
    from radcap.captioning.store import CaptionStore

    studies = args.rows // 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "delta"
        results.append(measure("delta", CaptionStore(out), lambda: read_captions(out), studies, args.repeats))
        connection = duckdb_connection()
        scan = f"SELECT * FROM delta_scan('{out / 'captions'}')"
        results[-1]["read_whole_table_duckdb_s"] = round(timed(lambda k: connection.sql(scan).df(), args.repeats), 3)
        old = old_store_class()
        if old is None:
            print(f"no git history: the store of {OLD_COMMIT} is not measured", file=sys.stderr)
        else:
            folder = Path(tmp) / "segments"
            results.append(
                measure(
                    f"parquet segments ({OLD_COMMIT})",
                    old(folder),
                    lambda: pd.read_parquet(folder / "captions.parquet"),
                    studies,
                    args.repeats,
                )
            )
    if len(results) == 2:
        delta, before = results
        ratios = {
            key: round(delta[key] / before[key], 2)
            for key in ("commit_1000_new_rows_s", "recaption_1000_studies_s", "read_whole_table_s")
        }
        print(json.dumps({"delta_over_segments": ratios}))
    if args.json:
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
