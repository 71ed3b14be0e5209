"""Bulk captioning speed and memory on real images (issue 5 targets: >= 0.8x extraction, flat memory).

Throughput, one process, same images, same encoder: (a) feature extraction alone as `radcap features`
does it (hash, decode, letterbox, forward pass, Parquet parts) and (b) `radcap caption` end to end
(scan and hash, decode, forward, beam-search decoding, caption parts, consolidated Parquet/CSV). Both
are compiled first on other images, so neither pays tracing. Memory: peak RSS of (b) for 500 vs 2,000
images, each in a fresh process.
Images: MedPix 2.0 then the COVID chest X-rays of ../shared/data (2,403 real files), copied to a temp
folder. The captioner is any bundle folder or models:/ URI (its encoder comes with it).

    .venv/bin/python benchmarks/caption_throughput.py --model out/bench/medpix-show-tell/captioner --images 1000
    .venv/bin/python benchmarks/caption_throughput.py --model out/bench/medpix-show-tell/captioner --memory 500 2000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rss import peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def real_images(n: int, into: Path) -> Path:
    files = sorted((DATA / "medpix2" / "images").glob("*.png")) + sorted((DATA / "covid_cxr" / "images").glob("*.png"))
    if len(files) < n:
        sys.exit(f"only {len(files)} images available, {n} asked")
    into.mkdir(parents=True)
    for f in files[:n]:
        shutil.copyfile(f, into / f.name)
    return into


def load(model: str):
    from radcap.core.runtime import apply_offline_defaults

    apply_offline_defaults()
    from radcap.captioning.bundle import load_captioner
    from radcap.imaging.encoders import encoder_for

    bundle = load_captioner(model).bundle
    encoder = encoder_for(bundle.config)
    return bundle, encoder, encoder.forward_fn()


def caption_folder(folder: Path, out: Path, bundle, encoder, forward, batch_size: int) -> dict:
    """What `radcap caption` runs, without the Prefect wrapper (scan, caption, consolidate)."""
    from radcap.captioning.bulk import CaptioningModel, CaptionStore, caption_images
    from radcap.pacs.exports import Identifiers, scan

    store = CaptionStore(out)
    images = scan(folder, Identifiers()).images
    result = caption_images(
        images, CaptioningModel(bundle, encoder, "bench", "0"), store, batch_size, progress=False, forward=forward
    )
    return {"captioned": result.captioned, "rejected": result.rejected, **store.consolidate()}


def extract_folder(folder: Path, out: Path, encoder, forward, batch_size: int) -> int:
    from radcap.imaging.decode import file_sha256
    from radcap.imaging.features import FeatureStore, ImageItem, extract_features

    items = [ImageItem(p.stem, str(p), file_sha256(p)) for p in sorted(folder.iterdir())]
    result = extract_features(
        items, forward, FeatureStore(out), encoder.name, encoder.version, batch_size, progress=False
    )
    return result.encoded


def throughput(model: str, n: int, batch_size: int) -> None:
    bundle, encoder, forward = load(model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm = real_images(n + 64, tmp / "all")
        (tmp / "warm").mkdir()
        for f in sorted(warm.iterdir())[n:]:  # 64 other images compile both paths
            f.rename(tmp / "warm" / f.name)
        caption_folder(tmp / "warm", tmp / "warm-out", bundle, encoder, forward, batch_size)
        start = time.perf_counter()
        encoded = extract_folder(warm, tmp / "features", encoder, forward, batch_size)
        extract_s = time.perf_counter() - start
        start = time.perf_counter()
        captioned = caption_folder(warm, tmp / "captions", bundle, encoder, forward, batch_size)
        caption_s = time.perf_counter() - start
    print(
        f"model {model} ({bundle.config.architecture}, beam {bundle.config.decoding.beam_width}), "
        f"encoder {encoder.version}, {n} real images, batch {batch_size}"
    )
    print(f"feature extraction alone: {encoded} images in {extract_s:.1f} s = {encoded / extract_s:.2f} img/s")
    print(
        f"captioning end to end:    {captioned['captioned']} images in {caption_s:.1f} s = "
        f"{captioned['captioned'] / caption_s:.2f} img/s ({captioned['rejected']} rejected)"
    )
    print(f"ratio captioning / extraction: {extract_s / caption_s:.3f} (target >= 0.8)")


def child(model: str, n: int, batch_size: int) -> None:
    bundle, encoder, forward = load(model)
    before = peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        folder = real_images(n, Path(tmp) / "in")
        start = time.perf_counter()
        done = caption_folder(folder, Path(tmp) / "out", bundle, encoder, forward, batch_size)
        seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    print(
        json.dumps(
            {
                "images": n,
                **done,
                "peak_rss_mib": round(peak, 1),
                "rss_after_load_mib": round(before, 1),
                "seconds": round(seconds, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="Captioner bundle folder or models:/ URI.")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--memory", type=int, nargs="*", help="Sizes for the peak-RSS comparison, e.g. 500 2000.")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.model, args.child, args.batch_size)
    if not args.memory:
        return throughput(args.model, args.images, args.batch_size)
    results = []
    for n in args.memory:
        out = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--child", str(n), "--batch-size", str(args.batch_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{r['images']:5d} images: peak RSS {r['peak_rss_mib']:7.1f} MiB (after load {r['rss_after_load_mib']}), "
            f"{r['seconds']} s, {r['captioned']} captioned, {r['rejected']} rejected",
            flush=True,
        )
    print(
        f"peak RSS ratio {results[-1]['images']} vs {results[0]['images']} images: "
        f"{results[-1]['peak_rss_mib'] / results[0]['peak_rss_mib']:.3f} (target: flat, <= 1.10)"
    )


if __name__ == "__main__":
    main()
