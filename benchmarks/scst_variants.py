"""Self-critical training variants, compared on the selection carve only (never on a reported split).

Starts every variant from the same cross-entropy bundle (saved by `benchmarks/report_quality.py`) and prints
the carve's greedy CIDEr after each SCST epoch, so SCST's own settings (sampling, baseline, mixed objective,
learning rate) are chosen where every other choice is: inside train.

    .venv/bin/python benchmarks/scst_variants.py --data out/bench/ood/medpix \\
        --encoder-version radcap-encoder-oodbench/2 --bundle out/bench/report_quality-seed0-xe --epochs 3 \\
        --variant base: --variant topk5:scst_top_k=5 --variant mixed:scst_xe_weight=1

`--crossfit F` instead trains the cross-entropy model afresh on the train part minus a fraction F of its
groups, and runs each variant's SCST on that held-back fraction only: rewards on reports the model never
fitted (a model that has memorised its training reports is rewarded for reproducing them).
`--crossfit F --judge-held-back` runs SCST as `radcap train` does, on what the cross-entropy model fitted, and
scores each epoch on the held-back groups instead of the carve: the carve chose the cross-entropy epoch as the
best of many, so its score there is inflated and any change looks worse; the held-back groups chose nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from report_quality import setting

ROOT = Path(__file__).resolve().parents[1]


def parse_variant(text: str) -> tuple[str, dict]:
    """NAME:key=value,... -> (NAME, {key: value}), values typed as report_quality.py's --setting."""
    name, _, assignments = text.partition(":")
    return name, dict(map(setting, filter(None, assignments.split(","))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--encoder-version", required=True)
    parser.add_argument("--bundle", type=Path, required=True, help="a cross-entropy captioner bundle folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", required=True, help="NAME:setting=value,... (DecoderSettings)")
    parser.add_argument("--crossfit", type=float, default=0.0, help="hold back this fraction of train groups for SCST")
    parser.add_argument(
        "--judge-held-back",
        action="store_true",
        help="with --crossfit: SCST on the part the model fitted (as `radcap train` does), each epoch "
        "scored on the held-back groups, which nothing was selected on (no winner's curse of "
        "the carve, where the cross-entropy epoch was the best of many)",
    )
    parser.add_argument(
        "--crossfit-bundle", type=Path, help="with --crossfit: that cross-entropy model, already trained"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "scst_variants.json")
    args = parser.parse_args()

    from radcap.core.runtime import apply_offline_defaults, import_tensorflow_quietly

    apply_offline_defaults()
    import_tensorflow_quietly()
    from radcap.captioning.bundle import load_bundle
    from radcap.captioning.training import self_critical

    reference = load_bundle(args.bundle)
    settings, sets = carve_sets(args, reference)
    results = read_results(args.out)
    scst_set, judged, start_from = sets["train"], sets["val"], args.bundle
    if args.crossfit:
        scst_set, fitted = held_back_groups(sets["train"], settings, args.crossfit)
        start_from = args.crossfit_bundle
        if not start_from:
            start_from, results["crossfit-xe"] = crossfit(args, fitted, scst_set, sets["val"], settings, reference)
    if args.judge_held_back:
        scst_set, judged = fitted, scst_set
    for name, update in map(parse_variant, args.variant):
        name = f"crossfit{args.crossfit:g}-{'judged-' if args.judge_held_back else ''}{name}" if args.crossfit else name
        bundle = load_bundle(start_from)
        cfg = settings.captioner.model_copy(
            update={"scst_epochs": args.epochs, "patience": args.epochs, "seed": args.seed, **update}
        )
        start = time.perf_counter()
        sc = self_critical(
            bundle,
            scst_set,
            judged,
            cfg,
            on_epoch=lambda r, name=name: print(
                f"  {name} epoch {r.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items()), flush=True
            ),
        )
        results[name] = {
            "settings": update,
            "before": sc.before.get("val_CIDEr"),
            "by_epoch": [e.metrics.get("val_CIDEr") for e in sc.fit.history],
            "sample_reward": [e.metrics.get("train_sample_reward") for e in sc.fit.history],
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(
            f"{name}: {'held-back' if args.judge_held_back else 'carve'} CIDEr {results[name]['before']:.4f} -> "
            + " ".join(f"{c:.4f}" for c in results[name]["by_epoch"]),
            flush=True,
        )
        write_results(results, args.out)


def carve_sets(args, reference):
    """(settings, the fit / carve / reported sets) of `args.data` in `reference`'s feature shape, selection on the
    carve of train as `radcap train` does by default."""
    from radcap.captioning.data import training_sets
    from radcap.core.settings import get_settings

    settings = get_settings()
    assert settings.split.select_on == "carve"
    return settings, training_sets(
        args.data, args.encoder_version, settings.split, reference.config.max_views, reference.model.attention
    )


def read_results(path: Path) -> dict:
    """What earlier runs wrote to `path` (each run adds its entries)."""
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))


def crossfit_path(args, seed: int) -> Path:
    """Where `crossfit` saves seed `seed`'s cross-entropy model, beside `args.out`."""
    return args.out.with_name(f"{args.out.stem}-crossfit{args.crossfit:g}-seed{seed}-xe")


def held_back_groups(train, settings, fraction: float):
    """(held-back set, fitted set): `fraction` of the train set's groups, by the same group hashing as the
    selection carve with its own salt (a different slice of the groups)."""
    from radcap.ingestion.splits import in_selection_carve

    rules = settings.split.model_copy(update={"select_salt": "radcap-crossfit-v1", "select_fraction": fraction})
    held_back = {r: in_selection_carve(g, rules) for r, g in zip(train.report_ids, train.group_ids)}
    return (
        train.subset([r for r in train.report_ids if held_back[r]]),
        train.subset([r for r in train.report_ids if not held_back[r]]),
    )


def crossfit(args, fit, back, carve, settings, reference):
    """Cross-entropy on `fit` (train minus the held-back groups `back`; same vocabulary and settings as
    `reference`), selected on `carve`, saved at `crossfit_path`; returns (that path, its record)."""
    from radcap.captioning.training import train_captioner

    cfg = settings.captioner.model_copy(update={"architecture": reference.config.architecture, "seed": args.seed})
    start = time.perf_counter()
    trained = train_captioner(
        fit, carve, reference.vocab, cfg, {"encoder_version": args.encoder_version, "select_on": "carve"}
    )
    path = crossfit_path(args, args.seed)
    trained.bundle.save(path)
    record = {
        "fit": len(fit),
        "held_back": len(back),
        "best_epoch": trained.fit.best_epoch,
        "carve_CIDEr": trained.fit.best.metrics.get("val_CIDEr"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"cross-entropy on {len(fit)} reports ({len(back)} held back for SCST): {record}", flush=True)
    return path, record


if __name__ == "__main__":
    main()
