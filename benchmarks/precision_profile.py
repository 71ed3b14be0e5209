"""Where the time and memory of `radcap caption` go at each encoder precision (issue 17), side by side with
TensorFlow's own bf16 (oneDNN auto mixed precision), the candidate OpenVINO was picked over.

Variants: fp32 (TensorFlow, the default), tf-bf16 (the same TensorFlow graph with grappler's
`auto_mixed_precision_onednn_bfloat16` rewrite), bf16 and int8 (OpenVINO builds made here exactly as `radcap
optimize-encoder` makes them; int8 calibrated on `--calibration` training images of `--data`). Each variant runs in
a fresh process (the TensorFlow rewrite is process-wide; peak RSS is per process):
- profile: `radcap caption`'s path on `--images` real files (MedPix 2.0 then the COVID chest X-rays), after a
  warm-up on 64 others, with each stage timed where it runs: scan (hash + headers, before), decoding (2 threads,
  thread-seconds), the encoder forward (main thread), beam search, domain scoring and part writing (1 finisher
  thread), consolidation (after). The stages overlap on 2 cores, so thread-seconds add up to more than the wall.
- bare forward on 256 pre-decoded squares (batch 32) and its pooled cosine to fp32's on the same squares.
- memory: peak RSS of the caption path on each of `--memory` sizes (e.g. 500 2000), each a fresh process.

    .venv/bin/python benchmarks/precision_profile.py --model out/bench/ood/captioner-medpix/captioner \\
        --data out/bench/ood/medpix --images 1000 --memory 500 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rss import peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANTS = ("fp32", "tf-bf16", "bf16", "int8")


class StageClock:
    """Seconds spent inside wrapped functions, per stage, summed over threads."""

    def __init__(self):
        self.seconds, self.lock = defaultdict(float), threading.Lock()

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.seconds[stage] += time.perf_counter() - start

        return timed


def load_variant(model: str, variant: str, builds: Path):
    from radcap.core.runtime import apply_offline_defaults, import_tensorflow_quietly

    apply_offline_defaults()
    import_tensorflow_quietly()
    import tensorflow as tf

    if variant == "tf-bf16":  # before any graph is built: grappler rewrites every graph of this process
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    from radcap.captioning.bundle import load_captioner
    from radcap.imaging.encoders import encoder_for
    from radcap.imaging.precision import openvino_forward

    bundle = load_captioner(model).bundle
    encoder = encoder_for(bundle.config)
    forward = openvino_forward(builds / variant, variant) if variant in ("bf16", "int8") else encoder.forward_fn()
    return bundle, encoder, forward


def child(args) -> None:
    from caption_throughput import caption_folder, real_images

    import radcap.captioning.bulk as captioning
    import radcap.imaging.features as features
    import radcap.pacs.exports as pacs
    from radcap.captioning.bulk import CaptionStore

    bundle, encoder, forward = load_variant(args.model, args.variant, args.builds)
    after_load = peak_rss_mib()
    result = {"variant": args.variant, "images": args.child}
    with tempfile.TemporaryDirectory(prefix="radcap-profile-") as tmp:
        tmp = Path(tmp)
        if args.profile:
            everything = real_images(args.child + 64, tmp / "all")
            (tmp / "warm").mkdir()
            for f in sorted(everything.iterdir())[args.child :]:
                f.rename(tmp / "warm" / f.name)
            caption_folder(tmp / "warm", tmp / "warm-out", bundle, encoder, forward, args.batch_size)
            squares = np.load(args.builds / "squares.npy")
            forward(squares[:32])
            start = time.perf_counter()
            pooled = np.concatenate([forward(squares[i : i + 32])[0] for i in range(0, len(squares), 32)])
            result["bare_forward_img_s"] = round(len(squares) / (time.perf_counter() - start), 1)
            reference = np.load(args.builds / "pooled-fp32.npy")
            cosine = np.sum(pooled * reference, 1) / (
                np.linalg.norm(pooled, axis=1) * np.linalg.norm(reference, axis=1)
            )
            result["pooled_cosine_to_fp32"] = round(float(cosine.mean()), 6)
            clock = StageClock()
            features.decode_one = clock.wrap("decode (2 threads)", features.decode_one)
            captioning.report_studies = clock.wrap("beam search", captioning.report_studies)
            captioning.judge_studies = clock.wrap("domain scoring", captioning.judge_studies)
            CaptionStore.write_batch = clock.wrap("writing parts", CaptionStore.write_batch)
            CaptionStore.consolidate = clock.wrap("consolidation", CaptionStore.consolidate)
            pacs.scan = clock.wrap("scan (hash + headers)", pacs.scan)  # caption_folder imports it when called
            timed_forward = clock.wrap("encoder forward", forward)
            start = time.perf_counter()
            done = caption_folder(everything, tmp / "out", bundle, encoder, timed_forward, args.batch_size)
            wall = time.perf_counter() - start
            result.update(
                captioned=done["captioned"],
                wall_s=round(wall, 2),
                caption_img_s=round(done["captioned"] / wall, 1),
                stages_s={k: round(v, 2) for k, v in sorted(clock.seconds.items(), key=lambda kv: -kv[1])},
            )
        else:
            folder = real_images(args.child, tmp / "in")
            start = time.perf_counter()
            done = caption_folder(folder, tmp / "out", bundle, encoder, forward, args.batch_size)
            result.update(captioned=done["captioned"], wall_s=round(time.perf_counter() - start, 2))
    result.update(rss_after_load_mib=round(after_load, 1), peak_rss_mib=round(peak_rss_mib(), 1))
    print(json.dumps(result), flush=True)


def build(args, builds: Path) -> dict:
    """The OpenVINO builds, the squares every variant's bare forward runs on, and fp32's pooled features of them."""
    import pandas as pd
    from caption_throughput import real_images

    from radcap.captioning.bundle import load_captioner
    from radcap.core.runtime import apply_offline_defaults, import_tensorflow_quietly
    from radcap.imaging.decode import prepare
    from radcap.imaging.encoders import encoder_for
    from radcap.imaging.precision import OptimizedMeta, convert, quantize_int8, save_optimized
    from radcap.models.encoder import uint8_feature_model

    apply_offline_defaults()
    import_tensorflow_quietly()
    bundle = load_captioner(args.model).bundle
    encoder = encoder_for(bundle.config)
    images = pd.read_parquet(args.data / "images.parquet")
    train_paths = sorted(images.loc[images["split"] == "train", "path"])[: args.calibration]
    calibration = np.stack([prepare(Path(p), encoder.input_size) for p in train_paths])
    seconds = {}
    for precision in ("bf16", "int8"):
        start = time.perf_counter()
        model = convert(uint8_feature_model(encoder.model, encoder.input_size), encoder.input_size)
        if precision == "int8":
            model = quantize_int8(model, calibration)
        save_optimized(
            model,
            OptimizedMeta(precision, encoder.version, encoder.spec, encoder.input_size, len(calibration)),
            builds / precision,
        )
        seconds[precision] = round(time.perf_counter() - start, 1)
    # Bare-forward squares: the last 256 of the benchmark's pool, never in a profiled run of <= 2,147 images.
    pool = real_images(2403, builds / "pool")
    files = sorted(pool.iterdir())[-256:]
    with ThreadPoolExecutor(2) as threads:
        squares = np.stack(list(threads.map(lambda p: prepare(p, encoder.input_size), files)))
    np.save(builds / "squares.npy", squares)
    forward = encoder.forward_fn()
    np.save(builds / "pooled-fp32.npy", np.concatenate([forward(squares[i : i + 32])[0] for i in range(0, 256, 32)]))
    for f in pool.iterdir():
        f.unlink()
    pool.rmdir()
    return {"encoder": encoder.version, "calibration_images": len(calibration), "build_s": seconds}


def run_child(args, variant: str, builds: Path, n: int, profile: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--model",
        args.model,
        "--data",
        str(args.data),
        "--child",
        str(n),
        "--variant",
        variant,
        "--builds",
        str(builds),
        "--batch-size",
        str(args.batch_size),
    ]
    done = subprocess.run(command + (["--profile"] if profile else []), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{variant} {n}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="captioner bundle folder or models:/ URI")
    parser.add_argument("--data", type=Path, required=True, help="ingested data whose train split calibrates int8")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--memory", type=int, nargs="*", default=[], help="sizes for peak RSS, e.g. 500 2000")
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--builds", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="radcap-builds-") as builds:
        builds = Path(builds)
        result = {
            "model": args.model,
            "images": args.images,
            "batch_size": args.batch_size,
            **build(args, builds),
            "variants": {},
        }
        print(json.dumps(result), flush=True)
        for variant in args.variants:
            row = run_child(args, variant, builds, args.images, True)
            row["memory"] = {n: run_child(args, variant, builds, n, False) for n in args.memory}
            result["variants"][variant] = row
            print(json.dumps(row), flush=True)
    base = result["variants"].get("fp32")
    print(f"\n{'variant':8} {'bare img/s':>10} {'caption img/s':>13} {'x fp32':>6} {'cosine':>8}  peak RSS MiB by size")
    for variant, row in result["variants"].items():
        speedup = row["caption_img_s"] / base["caption_img_s"] if base else float("nan")
        memory = ", ".join(f"{n}: {m['peak_rss_mib']:.0f}" for n, m in row["memory"].items())
        print(
            f"{variant:8} {row['bare_forward_img_s']:10.1f} {row['caption_img_s']:13.1f} {speedup:6.2f} "
            f"{row['pooled_cosine_to_fp32']:8.5f}  {memory}"
        )
    print("\nstage seconds (thread-seconds; wall in the last column):")
    stages = sorted({s for row in result["variants"].values() for s in row["stages_s"]})
    print(f"{'variant':8} " + " ".join(f"{s[:22]:>22}" for s in stages) + f" {'wall':>6}")
    for variant, row in result["variants"].items():
        print(
            f"{variant:8} " + " ".join(f"{row['stages_s'].get(s, 0):22.2f}" for s in stages) + f" {row['wall_s']:6.1f}"
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
