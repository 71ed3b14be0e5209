"""Self-critical training variants, compared on the selection carve only (never on a reported split).

Starts every variant from the same cross-entropy bundle (saved by `benchmarks/report_quality.py`) and prints
the carve's greedy CIDEr after each SCST epoch, so SCST's own settings (sampling, baseline, mixed objective,
learning rate) are chosen where every other choice is: inside train.

    .venv/bin/python benchmarks/scst_variants.py --data out/bench/ood/medpix \\
        --encoder-version radcap-encoder-oodbench/2 --bundle out/bench/report_quality-seed0-xe --epochs 3 \\
        --variant base: --variant topk5:scst_top_k=5 --variant mixed:scst_xe_weight=1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, assignments = text.partition(":")
    update = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        update[key] = type_of(value)
    return name, update


def type_of(value: str):
    if value in ("True", "False"):
        return value == "True"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--encoder-version", required=True)
    parser.add_argument("--bundle", type=Path, required=True, help="a cross-entropy captioner bundle folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", required=True, help="NAME:setting=value,... (DecoderSettings)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "scst_variants.json")
    args = parser.parse_args()

    from radcap.runtime import apply_offline_defaults, import_tensorflow_quietly

    apply_offline_defaults()
    import_tensorflow_quietly()
    from radcap.caption_data import training_sets
    from radcap.caption_training import self_critical
    from radcap.captioner_bundle import load_bundle
    from radcap.settings import get_settings

    settings = get_settings()
    assert settings.split.select_on == "carve"
    grid = load_bundle(args.bundle).model.attention
    sets = training_sets(args.data, args.encoder_version, settings.split, settings.captioner.max_views, grid)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name, update in map(parse_variant, args.variant):
        bundle = load_bundle(args.bundle)
        cfg = settings.captioner.model_copy(update={"scst_epochs": args.epochs, "patience": args.epochs,
                                                    "seed": args.seed, **update})
        start = time.perf_counter()
        sc = self_critical(bundle, sets["train"], sets["val"], cfg, on_epoch=lambda r: print(
            f"  {name} epoch {r.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items()), flush=True))
        results[name] = {"settings": update, "before": sc.before.get("val_CIDEr"),
                         "by_epoch": [e.metrics.get("val_CIDEr") for e in sc.fit.history],
                         "sample_reward": [e.metrics.get("train_sample_reward") for e in sc.fit.history],
                         "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: carve CIDEr {results[name]['before']:.4f} -> "
              + " ".join(f"{c:.4f}" for c in results[name]["by_epoch"]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
