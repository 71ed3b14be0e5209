"""Encoder precision: speed and fidelity of fp32 (TensorFlow), bf16 and int8 (OpenVINO; int8 calibrated on real
training images), issue 17 (targets: end-to-end captioning >= 2.0x fp32; pooled cosine >= 0.99; caption metrics
within 2% relative on a held-out split).

Same run, same images: the bare forward pass on pre-decoded squares (batch 32); `radcap features`' path
(hash, decode, letterbox, forward, Parquet parts) and `radcap caption`'s path (scan, decode, forward, decoding,
caption parts) on `--images` real files (MedPix 2.0 then the COVID chest X-rays of ../shared/data); decoding
alone (2 threads), the ceiling once the encoder is fast. Fidelity: the captioner's reports on the held-out split
of `--data` from fp32 and from each precision's features (`radcap check-precision`'s comparison).
The builds are made here exactly as `radcap optimize-encoder` makes them (not registered).

    .venv/bin/python benchmarks/encoder_precision.py --model out/bench/ood/captioner-medpix/captioner \\
        --data out/bench/ood/medpix --split val --images 1000
(`benchmarks/domain_guard.py` writes that captioner and data: a 4-epoch encoder, MedPix 2.0 ingested.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from caption_throughput import caption_folder, extract_folder, real_images  # noqa: E402


def bare_rate(forward, squares: np.ndarray, batch: int = 32) -> float:
    forward(squares[:batch])
    start = time.perf_counter()
    n = (len(squares) // batch) * batch
    for i in range(0, n, batch):
        forward(squares[i : i + batch])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="captioner bundle folder or models:/ URI")
    parser.add_argument(
        "--data", type=Path, required=True, help="ingested data with fp32 features of --model's encoder"
    )
    parser.add_argument("--split", default="val", help="held-out split for fidelity (no choice touched it)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from radcap.core.runtime import apply_offline_defaults, import_tensorflow_quietly

    apply_offline_defaults()
    import_tensorflow_quietly()
    import pandas as pd

    from radcap.captioning.bundle import load_captioner
    from radcap.captioning.data import load_caption_sets
    from radcap.evaluation.fidelity import fidelity_check
    from radcap.imaging.decode import prepare
    from radcap.imaging.encoders import encoder_for
    from radcap.imaging.features import FeatureStore, extract_features
    from radcap.imaging.precision import (
        OptimizedMeta,
        convert,
        openvino_forward,
        quantize_int8,
        save_optimized,
        store_version,
    )
    from radcap.models.encoder import uint8_feature_model

    bundle = load_captioner(args.model).bundle
    encoder = encoder_for(bundle.config)
    images = pd.read_parquet(args.data / "images.parquet")
    train_paths = sorted(images.loc[images["split"] == "train", "path"])[: args.calibration]
    calibration = np.stack([prepare(Path(p), encoder.input_size) for p in train_paths])
    result = {
        "model": args.model,
        "encoder": encoder.version,
        "images": args.images,
        "batch_size": args.batch_size,
        "calibration_images": len(calibration),
        "precisions": {},
    }
    with tempfile.TemporaryDirectory(prefix="radcap-precision-") as tmp:
        tmp = Path(tmp)
        forwards = {"fp32": encoder.forward_fn()}
        for precision in ("bf16", "int8"):
            start = time.perf_counter()
            model = convert(uint8_feature_model(encoder.model, encoder.input_size), encoder.input_size)
            if precision == "int8":
                model = quantize_int8(model, calibration)
            folder = save_optimized(
                model,
                OptimizedMeta(precision, encoder.version, encoder.spec, encoder.input_size, len(calibration)),
                tmp / precision,
            )
            forwards[precision] = openvino_forward(folder, precision)
            result[f"build_{precision}_s"] = round(time.perf_counter() - start, 1)

        folder = real_images(args.images + 64, tmp / "all")
        (tmp / "warm").mkdir()
        for f in sorted(folder.iterdir())[args.images :]:
            f.rename(tmp / "warm" / f.name)
        files = sorted(folder.iterdir())
        start = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            squares = np.stack(list(pool.map(lambda p: prepare(p, encoder.input_size), files)))
        result["decode_only_img_s"] = round(len(files) / (time.perf_counter() - start), 1)

        held_out = images[images["split"] == args.split]
        store = FeatureStore(args.data / "features")
        sets = {
            "fp32": load_caption_sets(
                args.data, encoder.version, (args.split,), bundle.config.max_views, grid=bundle.model.attention
            )[args.split]
        }
        for precision, forward in forwards.items():
            caption_folder(tmp / "warm", tmp / f"warm-{precision}", bundle, encoder, forward, args.batch_size)
            row = {"bare_forward_img_s": round(bare_rate(forward, squares[:512]), 1)}
            start = time.perf_counter()
            encoded = extract_folder(folder, tmp / f"features-{precision}", encoder, forward, args.batch_size)
            row["features_img_s"] = round(encoded / (time.perf_counter() - start), 1)
            start = time.perf_counter()
            done = caption_folder(folder, tmp / f"captions-{precision}", bundle, encoder, forward, args.batch_size)
            row["caption_img_s"] = round(done["captioned"] / (time.perf_counter() - start), 1)
            if precision != "fp32":
                key = store_version(encoder.version, precision)
                todo, _, _ = store.plan(held_out, key)  # a re-run encodes nothing twice
                extract_features(
                    todo, forward, store, encoder.name, key, args.batch_size, encoder.input_size, progress=False
                )
                sets[precision] = load_caption_sets(
                    args.data, key, (args.split,), bundle.config.max_views, grid=bundle.model.attention
                )[args.split]
                row["fidelity"] = fidelity_check(bundle, sets["fp32"], sets[precision], precision)
            result["precisions"][precision] = row
            print(json.dumps({precision: row}), flush=True)
    base = result["precisions"]["fp32"]
    for row in result["precisions"].values():
        row["caption_speedup_vs_fp32"] = round(row["caption_img_s"] / base["caption_img_s"], 2)
        row["features_speedup_vs_fp32"] = round(row["features_img_s"] / base["features_img_s"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
