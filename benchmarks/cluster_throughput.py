"""Feature extraction on a Dask cluster vs in-process, same 1,000 real images (issue 16; targets: `local:2` >=
1.7x `local:1`; the cluster path's overhead at `local:1` <= 10% against the in-process path).

Each configuration runs in a fresh process on the same copied files (MedPix 2.0 then the COVID chest X-rays of
../shared/data), with the same encoder (`random:0`: DenseNet-121 at 224 px, the compute of any encoder) and
batch 32, tasks as `radcap features --cluster` makes them (`task_size`), after a warm-up: the cluster's workers load the
encoder first (`warm_workers`) and the in-process
encoder runs 64 other images first, so the timed part is the extraction itself. Also reported: the cold time
(cluster start and model loading included), and the cores busy (CPU seconds of the process, or of every
worker process, over the timed part). Configurations:
- in-process (TensorFlow's default thread pools: both cores), the path without `--cluster`;
- in-process with one compute thread, the same work as one cluster worker does;
- `--cluster local:1` and `--cluster local:2`: 1 and 2 worker processes, one compute thread each.

    .venv/bin/python benchmarks/cluster_throughput.py --images 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CONFIGS = ("in-process", "in-process-1-thread", "local:1", "local:2")


def items_of(folder: Path):
    from radcap.imaging.decode import file_sha256
    from radcap.imaging.features import ImageItem

    return [ImageItem(p.stem, str(p), file_sha256(p)) for p in sorted(folder.iterdir())]


def child(config: str, folder: Path, warm: Path, batch: int, task_images: int) -> None:
    start_cold = time.perf_counter()
    if config == "in-process-1-thread":
        os.environ["RADCAP_WORKER_THREADS"] = "1"
    from radcap.core.runtime import apply_offline_defaults

    apply_offline_defaults()
    from radcap.core.io import new_run_id
    from radcap.imaging.features import FeatureStore, extract_features

    items, warm_items = items_of(folder), items_of(warm)
    with tempfile.TemporaryDirectory(prefix="radcap-cluster-bench-") as tmp:
        store = FeatureStore(Path(tmp) / "features")
        if config.startswith("in-process"):
            from radcap.operations.scaleout import _encoder

            encoder, forward = _encoder("random:0", "fp32")  # honours RADCAP_WORKER_THREADS as a worker does
            extract_features(
                warm_items,
                forward,
                FeatureStore(Path(tmp) / "warm"),
                encoder.name,
                encoder.version,
                batch,
                encoder.input_size,
                progress=False,
            )
            start, cpu = time.perf_counter(), time.process_time()
            result = extract_features(
                items,
                forward,
                store,
                encoder.name,
                encoder.version,
                batch,
                encoder.input_size,
                progress=False,
                run_id=new_run_id(),
            )
            cpu = time.process_time() - cpu
        else:
            from radcap.operations.cluster import dask_client
            from radcap.operations.scaleout import extract_on_cluster, warm_workers

            with dask_client(config) as client:
                warm_workers(client, "random:0")
                before = client.run(time.process_time)  # CPU seconds of each worker process
                start = time.perf_counter()
                result = extract_on_cluster(
                    client, items, "random:0", "fp32", store.root, batch, new_run_id(), task_images
                )
                after = client.run(time.process_time)
                cpu = sum(after[w] - before[w] for w in after)
        seconds = time.perf_counter() - start
        cold = time.perf_counter() - start_cold
        stored = len(store.index())
    print(
        json.dumps(
            {
                "config": config,
                "images": len(items),
                "encoded": result.encoded,
                "rows_stored": stored,
                "rejected": len(result.rejects),
                "seconds": round(seconds, 2),
                "images_per_s": round(result.encoded / seconds, 2),
                "cold_seconds": round(cold, 1),
                "cores_busy": round(cpu / seconds, 2),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--task-images",
        type=int,
        default=2048,
        help="cap; radcap.operations.cluster.task_size spreads a run over the workers",
    )
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.folder, args.warm, args.batch_size, args.task_images)
    from caption_throughput import real_images

    with tempfile.TemporaryDirectory(prefix="radcap-cluster-images-") as tmp:
        everything = real_images(args.images + 64, Path(tmp) / "all")
        warm = Path(tmp) / "warm"
        warm.mkdir()
        for f in sorted(everything.iterdir())[args.images :]:
            f.rename(warm / f.name)
        rows = {}
        for config in args.configs:
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    config,
                    "--folder",
                    str(everything),
                    "--warm",
                    str(warm),
                    "--batch-size",
                    str(args.batch_size),
                    "--task-images",
                    str(args.task_images),
                ],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                sys.exit(f"{config}: {done.stderr[-3000:]}")
            rows[config] = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(rows[config]), flush=True)
    print(f"\n{'configuration':22} {'images/s':>9} {'seconds':>8} {'cold s':>7} {'stored':>7} {'cores busy':>10}")
    for config, row in rows.items():
        print(
            f"{config:22} {row['images_per_s']:9.2f} {row['seconds']:8.1f} {row['cold_seconds']:7.1f} "
            f"{row['rows_stored']:7d} {row['cores_busy']:10.2f}"
        )
    if {"local:1", "local:2"} <= set(rows):
        print(
            f"local:2 / local:1: {rows['local:2']['images_per_s'] / rows['local:1']['images_per_s']:.2f}x "
            f"(target >= 1.7x)"
        )
    for base in ("in-process", "in-process-1-thread"):
        if {"local:1", base} <= set(rows):
            overhead = rows[base]["images_per_s"] / rows["local:1"]["images_per_s"] - 1
            print(f"local:1 overhead against {base}: {overhead:+.1%} (target <= 10%)")


if __name__ == "__main__":
    main()
