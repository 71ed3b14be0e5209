"""Feature extraction throughput: end to end (decode, letterbox, forward, write) vs the bare forward pass.

Both run in the same process on the same batches of real MedPix 2.0 images, after a warm-up that compiles
the model. Target (issue 3): end-to-end >= 0.85x the bare forward pass.

    .venv/bin/python benchmarks/feature_throughput.py --images 512 --batch-size 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from radcap.core.runtime import apply_offline_defaults

apply_offline_defaults()
from radcap.imaging.decode import file_sha256, prepare  # noqa: E402
from radcap.imaging.encoders import resolve_encoder  # noqa: E402
from radcap.imaging.features import FeatureStore, ImageItem, extract_features  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()

    files = sorted((args.data / "medpix2" / "images").glob("*.png"))[: args.images]
    items = [ImageItem(p.stem, str(p), file_sha256(p)) for p in files]
    encoder = resolve_encoder("random")
    forward = encoder.forward_fn()
    bs = args.batch_size
    forward(np.zeros((bs, 224, 224), np.uint8))  # compile once, outside both timings

    decoded = [prepare(Path(i.path), 224) for i in items]
    batches = [np.stack(decoded[i : i + bs]) for i in range(0, len(decoded), bs)]
    batches = [np.concatenate([b, np.zeros((bs - len(b), 224, 224), np.uint8)]) if len(b) < bs else b for b in batches]
    start = time.perf_counter()
    for batch in batches:
        forward(batch)
    bare = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        result = extract_features(
            items, forward, FeatureStore(Path(tmp)), encoder.name, encoder.version, batch_size=bs, progress=False
        )
    e2e = result.seconds
    n = len(items)
    print(f"images={n} batch={bs} rejects={len(result.rejects)}")
    print(f"bare forward:  {bare:7.2f} s  {n / bare:6.2f} img/s")
    print(f"end to end:    {e2e:7.2f} s  {n / e2e:6.2f} img/s  (decode + letterbox + forward + Parquet write)")
    print(f"ratio end-to-end / bare forward: {bare / e2e:.3f}  (target >= 0.85)")


if __name__ == "__main__":
    main()
