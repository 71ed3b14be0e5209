"""Scale-out at archive scale, by simulation (issue 16): what one Dask scheduler and the growing outputs cost
per task and per row, measured here, and from those the expected wall time and bottleneck of a 10^7-image
archive on 10, 100 and 1,000 workers.

Measured:
1. Scheduler: `--tasks` no-op tasks with tiny payloads, submitted as `radcap` submits them (one keyed future per
   task) to a LocalCluster of 2 single-thread workers: tasks/s end to end, i.e. the per-task overhead.
2. Captions table (Delta Lake): `--rows` synthetic rows in `--segments` data files, then one nightly run of
   1,000 new rows committed (`CaptionStore.consolidate`: one MERGE that skips the files it cannot touch), vs
   rewriting the whole table; then the peak memory and time of reading the whole table back (fresh process).
3. Feature store: one run's features written as `extract_features` writes them (row groups of 32 appended to
   part files of 2,048 rows, never rewritten): seconds per 1,000 images, bytes per image, files per 10^7 images.
Projection inputs (measured elsewhere, given as options): images/s of one single-thread worker
(`benchmarks/cluster_throughput.py`), mean input file size (the real PNGs: measured here).

    .venv/bin/python benchmarks/cluster_scale.py --tasks 20000 --rows 1000000 --worker-rate 15
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def noop(x):
    return x


def scheduler_rate(tasks: int) -> dict:
    from distributed import as_completed

    from radcap.operations.cluster import dask_client

    with dask_client("local:2", announce=lambda m: None) as client:
        client.submit(noop, 0).result()
        start = time.perf_counter()
        futures = [client.submit(noop, i, key=f"noop-{i:07d}", pure=False) for i in range(tasks)]
        for _ in as_completed(futures):
            pass
        seconds = time.perf_counter() - start
    return {
        "tasks": tasks,
        "seconds": round(seconds, 2),
        "tasks_per_s": round(tasks / seconds, 1),
        "ms_per_task": round(1000 * seconds / tasks, 3),
    }


def synthetic_captions(n: int, offset: int, minutes: int) -> pd.DataFrame:
    from radcap.data_contracts import CAPTIONS

    ids = [f"img{offset + i:09d}" for i in range(n)]
    frame = pd.DataFrame(
        {
            "study_id": [f"study{(offset + i) // 2:09d}" for i in range(n)],
            "image_id": ids,
            "view": ["frontal", "lateral"] * (n // 2) + ["frontal"] * (n % 2),
            "source_path": [f"batch/{i}.dcm" for i in ids],
            "sha256": [f"{offset + i:064x}" for i in range(n)],
            "caption": ["no acute cardiopulmonary abnormality."] * n,
            "model": ["radcap-captioner"] * n,
            "model_version": ["7"] * n,
            "encoder_version": ["radcap-encoder/3"] * n,
            "captioned_at": [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)] * n,
            "ood_score": np.full(n, 0.5, np.float32),
            "in_domain": [True] * n,
            "ood_reason": [None] * n,
        }
    )
    return frame.astype(CAPTIONS.empty().dtypes.to_dict())


def captions_dataset(rows: int, segments: int, tmp: Path) -> dict:
    from deltalake import write_deltalake

    from radcap.captioning.store import CaptionStore
    from radcap.core.delta import create_table
    from radcap.data_contracts import CAPTION_REJECTS, CAPTIONS

    store = CaptionStore(tmp / "captions-out", compact_files=segments + 2)  # no compaction in the timed run
    create_table(store.captions, CAPTIONS, store.retention_days)
    per = rows // segments
    start = time.perf_counter()
    for k in range(segments):  # one data file per append
        rows_k = CAPTIONS.validate(synthetic_captions(per, k * per, k)).replace_schema_metadata()
        write_deltalake(str(store.captions), rows_k, mode="append")
    build = time.perf_counter() - start
    start = time.perf_counter()
    with store.writing(60):
        store.write_batch(synthetic_captions(1000, rows, segments + 1), CAPTION_REJECTS.empty(), "bench-run", 0)
        totals = store.consolidate()
    incremental = time.perf_counter() - start
    start = time.perf_counter()
    whole = pd.concat([pd.read_parquet(f) for f in store.captions.glob("part-*.parquet")], ignore_index=True)
    write_deltalake(str(tmp / "whole-table"), CAPTIONS.validate(whole).replace_schema_metadata(), mode="overwrite")
    rewrite = time.perf_counter() - start
    size = sum(f.stat().st_size for f in store.captions.glob("part-*.parquet"))
    del whole
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, time, json; sys.path.insert(0, {!r}); sys.path.insert(0, {!r})\n"
                "from rss import peak_rss_mib; import radcap\n"
                "base = peak_rss_mib(); t = time.perf_counter(); table = radcap.read_captions({!r})\n"
                "print(json.dumps({{'rows': len(table), 'seconds': round(time.perf_counter() - t, 2), "
                "'peak_rss_mib': round(peak_rss_mib(), 1), 'rss_before_mib': round(base, 1)}}))"
            ).format(str(ROOT), str(ROOT / "benchmarks"), str(store.out)),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        "rows": totals["captioned_total"],
        "table_version_after": totals["table_version"],
        "build_s": round(build, 1),
        "dataset_mib": round(size / 2**20, 1),
        "consolidate_1000_new_rows_s": round(incremental, 2),
        "rewrite_whole_table_s": round(rewrite, 2),
        "read_back": json.loads(read.stdout),
    }


def feature_parts(images: int, tmp: Path) -> dict:
    """One run's features written as `extract_features` writes them (batches of 32 appended to part files of
    PART_ROWS rows): seconds per 1,000 images spent writing, files, bytes per image."""
    from radcap.imaging.features import PART_ROWS, FeatureStore, ImageItem, PartWriter, features_table

    store = FeatureStore(tmp / "features")
    rng = np.random.default_rng(0)
    writer, seconds = PartWriter(store, "00000000000000000001-benchbnc"), 0.0
    for b in range(images // 32):
        items = [ImageItem(f"i{b}-{k}", f"/x/{b}-{k}.png", "s") for k in range(32)]
        # ReLU outputs: about half zeros, as real DenseNet features are (random dense data would not compress).
        grid = np.maximum(rng.normal(0, 1, (32, 7, 7, 1024)), 0).astype(np.float32)
        early = np.concatenate([grid.mean((1, 2)), grid.std((1, 2))], 1)[:, :1536]  # the size the store keeps
        table = features_table(items, grid.mean((1, 2)), grid, "enc", "v", early)
        start = time.perf_counter()
        writer.append(table)
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    writer.close()
    seconds += time.perf_counter() - start
    size = sum(p.stat().st_size for p in store.parts())
    return {
        "images": images,
        "files": len(store.parts()),
        "part_rows": PART_ROWS,
        "write_seconds_per_1000_images": round(1000 * seconds / images, 2),
        "mib_per_image": round(size / 2**20 / images, 3),
        "files_per_10M_images": int(np.ceil(1e7 / PART_ROWS)),
    }


def projection(
    worker_rate: float,
    scheduler: dict,
    captions: dict,
    features: dict,
    file_mib: float,
    archive: int = 10**7,
    task_images: int = 256,
) -> list[dict]:
    rows = []
    tasks = archive / task_images
    for workers in (10, 100, 1000):
        compute_s = archive / (worker_rate * workers)
        scheduler_s = tasks / scheduler["tasks_per_s"]  # the scheduler's own time, spread over the run
        needed_tasks_s = worker_rate * workers / task_images
        input_gb_s = worker_rate * workers * file_mib / 1024
        feature_gb_s = worker_rate * workers * features["mib_per_image"] / 1024
        rows.append(
            {
                "workers": workers,
                "compute_hours": round(compute_s / 3600, 1),
                "tasks_per_s_needed": round(needed_tasks_s, 1),
                "scheduler_load": f"{needed_tasks_s / scheduler['tasks_per_s']:.1%}",
                "scheduler_s_total": round(scheduler_s, 0),
                "input_read_GB_s": round(input_gb_s, 2),
                "feature_write_GB_s": round(feature_gb_s, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--feature-images", type=int, default=4096)
    parser.add_argument(
        "--worker-rate",
        type=float,
        required=True,
        help="images/s of one single-thread worker (benchmarks/cluster_throughput.py, local:1)",
    )
    args = parser.parse_args()
    from radcap.core.runtime import apply_offline_defaults

    apply_offline_defaults()
    files = sorted((DATA / "medpix2" / "images").glob("*.png")) + sorted((DATA / "covid_cxr" / "images").glob("*.png"))
    file_mib = float(np.mean([f.stat().st_size for f in files]) / 2**20)
    result = {"mean_input_file_mib": round(file_mib, 3), "input_files_measured": len(files)}
    result["scheduler"] = scheduler_rate(args.tasks)
    print(json.dumps({"scheduler": result["scheduler"]}), flush=True)
    with tempfile.TemporaryDirectory(prefix="radcap-scale-") as tmp:
        result["captions"] = captions_dataset(args.rows, args.segments, Path(tmp))
        print(json.dumps({"captions": result["captions"]}), flush=True)
        result["features"] = feature_parts(args.feature_images, Path(tmp))
        print(json.dumps({"features": result["features"]}), flush=True)
    result["projection_10M_images"] = projection(
        args.worker_rate, result["scheduler"], result["captions"], result["features"], file_mib
    )
    print(f"\n10^7 images, {args.worker_rate} images/s per single-thread worker, tasks of 256 images:")
    print(f"{'workers':>8} {'compute h':>10} {'tasks/s':>8} {'scheduler':>10} {'read GB/s':>10} {'features GB/s':>14}")
    for row in result["projection_10M_images"]:
        print(
            f"{row['workers']:8d} {row['compute_hours']:10.1f} {row['tasks_per_s_needed']:8.1f} "
            f"{row['scheduler_load']:>10} {row['input_read_GB_s']:10.2f} {row['feature_write_GB_s']:14.2f}"
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
