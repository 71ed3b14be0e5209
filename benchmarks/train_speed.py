"""Decoder training speed on precomputed features: the real epoch loop vs the bare compiled train step.

Both run in one process on the same data: `radcap.captioning.training.train_captioner` for two epochs (the
first compiles; the second's batch loop is timed, including batch assembly and the Python loop), then the
same compiled step alone on batches already built as tensors. Prints seconds per epoch and the ratio.

    .venv/bin/python benchmarks/train_speed.py --data out/medpix --encoder-version radcap-encoder/2 \\
        --architecture show-attend-tell
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from radcap.core.runtime import apply_offline_defaults

apply_offline_defaults()
from radcap.captioning.data import build_caption_set  # noqa: E402
from radcap.captioning.training import token_matrix, train_captioner  # noqa: E402
from radcap.core.catalog import DataCatalog  # noqa: E402
from radcap.core.io import read_table  # noqa: E402
from radcap.core.settings import get_settings  # noqa: E402
from radcap.data_contracts import IMAGES, REPORTS  # noqa: E402
from radcap.imaging.features import FeatureStore  # noqa: E402
from radcap.text.vocab import Vocabulary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--encoder-version", required=True)
    parser.add_argument("--architecture", default="show-attend-tell", choices=["show-tell", "show-attend-tell"])
    args = parser.parse_args()
    import tensorflow as tf

    cfg = get_settings().captioner.model_copy(update={"architecture": args.architecture, "epochs": 2, "patience": 99})
    catalog = DataCatalog(args.data)
    reports, images = read_table(catalog.reports, REPORTS), read_table(catalog.images, IMAGES)
    grid = args.architecture == "show-attend-tell"
    store = FeatureStore(catalog.features)
    train = build_caption_set(reports, images, store, args.encoder_version, "train", cfg.max_views, grid)
    val = build_caption_set(reports, images, store, args.encoder_version, "val", cfg.max_views, grid)
    vocab = Vocabulary.build(train.texts, cfg.min_count, cfg.max_length)
    result = train_captioner(train, val, vocab, cfg)
    loop = result.fit.history[-1]

    from radcap.models.captioner import make_train_step

    model = result.bundle.model
    step = make_train_step(model, tf.keras.optimizers.Adam(cfg.learning_rate), cfg.clip_norm)
    tokens = token_matrix(train, vocab)
    bs = cfg.batch_size
    batches = []
    for i in range(0, len(train) - bs + 1, bs):
        index = np.arange(i, i + bs)
        feats = {k: tf.constant(v) for k, v in train.features(index).items() if k != "grid" or model.attention}
        batches.append((feats, tf.constant(tokens[index])))
    float(step(*batches[0]))  # compile outside the timing
    start = time.perf_counter()
    for feats, toks in batches:
        loss = step(feats, toks)
    float(loss)
    bare = time.perf_counter() - start
    print(
        f"{args.architecture}: {len(train)} train reports, {int(loop['batches'])} batches of {bs}, "
        f"{tokens.shape[1]} tokens"
    )
    print(
        f"epoch loop (train_captioner): {loop['train_seconds']:7.2f} s; with validation decoding {loop.seconds:.2f} s"
    )
    print(f"bare compiled step:           {bare:7.2f} s")
    print(f"ratio bare / epoch loop: {bare / loop['train_seconds']:.3f}")


if __name__ == "__main__":
    main()
