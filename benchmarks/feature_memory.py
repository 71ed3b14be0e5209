"""Feature extraction memory: peak RSS for 500 vs 2,000 real images (each run in a fresh process).

Streaming in batches should keep memory flat: target (issue 3) within 10% between the two sizes.
Images: MedPix 2.0 then the COVID chest X-rays from ../shared/data (2,403 real files).

    .venv/bin/python benchmarks/feature_memory.py --sizes 500 2000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rss import peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def child(n: int, batch_size: int) -> None:
    sys.path.insert(0, str(ROOT))
    from radcap.core.runtime import apply_offline_defaults

    apply_offline_defaults()
    from radcap.imaging.decode import file_sha256
    from radcap.imaging.encoders import resolve_encoder
    from radcap.imaging.features import FeatureStore, ImageItem, extract_features

    files = sorted((DATA / "medpix2" / "images").glob("*.png")) + sorted((DATA / "covid_cxr" / "images").glob("*.png"))
    if len(files) < n:
        sys.exit(f"only {len(files)} images available, {n} asked")
    items = [ImageItem(p.stem, str(p), file_sha256(p)) for p in files[:n]]
    encoder = resolve_encoder("random")
    before = peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = extract_features(
            items,
            encoder.forward_fn(),
            FeatureStore(Path(tmp)),
            encoder.name,
            encoder.version,
            batch_size=batch_size,
            progress=False,
        )
        seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    print(
        json.dumps(
            {
                "images": n,
                "encoded": result.encoded,
                "peak_rss_mib": round(peak, 1),
                "rss_after_model_load_mib": round(before, 1),
                "seconds": round(seconds, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.batch_size)
    results = []
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--batch-size", str(args.batch_size)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{r['images']:5d} images: peak RSS {r['peak_rss_mib']:7.1f} MiB "
            f"(after model load {r['rss_after_model_load_mib']:.1f}), {r['seconds']} s, {r['encoded']} encoded",
            flush=True,
        )
    low, high = results[0]["peak_rss_mib"], results[-1]["peak_rss_mib"]
    print(f"peak RSS ratio {results[-1]['images']} vs {results[0]['images']} images: {high / low:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
