"""Report quality under the honest protocol (issue 15): selection inside train, scores on a split no choice
touched, mean and range over seeds, and what self-critical training adds.

Per seed: the decoder trained with cross-entropy (early stopping and the length penalty chosen on the carve of
the train split, `radcap train`'s default), scored on `--split` beside the baselines (most frequent, random and
nearest-neighbour train caption; the contrastive retriever's top-1 report with `--retriever`); then the same
model after `--scst-epochs` of self-critical training (selection again on the carve), scored the same way.
Baselines are deterministic, so only the model's numbers vary with the seed. Each model's difference to the
best baseline per metric carries its paired-bootstrap interval (1,000 resamples, `report.md`'s table).

    .venv/bin/python benchmarks/report_quality.py --data out/bench/ood/medpix \\
        --encoder-version radcap-encoder-oodbench/2 --seeds 0 1 2 --scst-epochs 8 \\
        --retriever out/bench/medpix-retriever
(`benchmarks/domain_guard.py` writes that data: MedPix 2.0 ingested, features of a 4-epoch encoder.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADLINE = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "clinical_micro_f1", "repetition_rate")


def evaluate(bundle, architecture, evaluated, train, retrieval, meta, decoding: dict):
    """Scores on the reported split, the model decoding with its own settings and `decoding` on top."""
    from radcap.evaluation.captioner import Evaluation, caption_with_baselines, score_systems

    tuned = bundle.config.decoding
    bundle.config.decoding = tuned.model_copy(update=decoding)
    try:
        systems = caption_with_baselines(bundle, architecture, evaluated, train) + ([retrieval] if retrieval else [])
    finally:
        bundle.config.decoding = tuned
    return Evaluation(
        evaluated,
        systems,
        score_systems(evaluated, systems),
        {**meta, "decoding": tuned.model_copy(update=decoding).model_dump()},
    )


def row(evaluation, key="model") -> dict:
    summary = evaluation.scores[key].summary()
    out = {m: summary[m] for m in HEADLINE}
    if key == "model":
        for r in evaluation.against_best_baseline:
            out[f"{r['metric']}_vs_best"] = {k: r[k] for k in ("best_baseline", "ratio", "difference", "low", "high")}
    return out


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    return f"{np.mean(values):.4f} [{min(values):.4f}, {max(values):.4f}]" if values else "n/a"


def setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if value in ("True", "False"):
        return key, value == "True"
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--encoder-version", required=True)
    parser.add_argument("--architecture", default="show-attend-tell")
    parser.add_argument("--split", default="val", help="the reported split (MedPix 2.0: val is its dev set)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--scst-epochs", type=int, default=8)
    parser.add_argument("--scst-clinical-weight", type=float, default=0.0)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other captioner setting (e.g. scst_top_k=5), chosen on the carve (scst_variants.py)",
    )
    parser.add_argument(
        "--decoding",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="decode every model with this on top of its own decoding settings (e.g. consensus_samples=20)",
    )
    parser.add_argument("--retriever", help="a retriever run folder or models:/ URI: its top-1 report is a baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "report_quality.json")
    parser.add_argument(
        "--reuse-xe",
        metavar="STEM",
        help="load each seed's cross-entropy bundle from STEM-seedN-xe (saved by an earlier run with "
        "--out STEM.json) instead of training it again",
    )
    args = parser.parse_args()

    from radcap.core.runtime import apply_offline_defaults, import_tensorflow_quietly

    apply_offline_defaults()
    import_tensorflow_quietly()
    from radcap.captioning.bundle import load_bundle
    from radcap.captioning.data import load_caption_sets, training_sets
    from radcap.captioning.training import CaptionTraining, choose_length_penalty, self_critical, train_captioner
    from radcap.core.settings import get_settings
    from radcap.core.training import FitResult
    from radcap.metrics.scores import CiderD
    from radcap.text.vocab import Vocabulary

    settings = get_settings()
    rules = settings.split  # select_on=carve: the reported split is never read while training
    assert rules.select_on == "carve"
    retrieval = None
    cfg = settings.captioner.model_copy(
        update={
            "architecture": args.architecture,
            "epochs": args.epochs,
            "scst_epochs": args.scst_epochs,
            "scst_clinical_weight": args.scst_clinical_weight,
            **dict(map(setting, args.setting)),
        }
    )
    grid = args.architecture == "show-attend-tell"
    sets = training_sets(args.data, args.encoder_version, rules, cfg.max_views, grid)
    evaluated = load_caption_sets(args.data, args.encoder_version, (args.split,), cfg.max_views, grid)[args.split]
    train_all = load_caption_sets(args.data, args.encoder_version, ("train",), cfg.max_views)["train"]
    if args.retriever:
        from radcap.evaluation.captioner import retrieval_system
        from radcap.retrieval.retriever import load_retriever, retrieved_captions

        retriever = load_retriever(args.retriever)
        own = load_caption_sets(args.data, retriever.bundle.config.encoder_version, (args.split,), 2)[args.split]
        found = dict(zip(own.report_ids, retrieved_captions(retriever.bundle, retriever.index, own)))
        retrieval = retrieval_system([found[r] for r in evaluated.report_ids])
    decoding = dict(map(setting, args.decoding))
    vocab = Vocabulary.build(sets["train"].texts, cfg.min_count, cfg.max_length)
    print(
        f"fit {len(sets['train'])}, selection {len(sets['val'])} (carved from train), reported {len(evaluated)} "
        f"({args.split}); vocabulary {len(vocab)}",
        flush=True,
    )
    runs = []
    for seed in args.seeds:
        seed_cfg = cfg.model_copy(update={"seed": seed})
        start = time.perf_counter()
        if args.reuse_xe:  # the same vocabulary, data and settings: its fit is not recorded again
            bundle = load_bundle(Path(f"{args.reuse_xe}-seed{seed}-xe"))
            assert bundle.vocab.tokens == vocab.tokens, "the saved bundle was trained on other data"
            if bundle.cider is None:  # saved before bundles carried it: what training on this set attaches
                bundle.cider = CiderD.of_reports(sets["train"].texts)
            trained = CaptionTraining(bundle, FitResult())
        else:
            trained = train_captioner(
                sets["train"],
                sets["val"],
                vocab,
                seed_cfg,
                {"encoder_version": args.encoder_version, "select_on": "carve"},
                on_epoch=lambda r: print(
                    f"  epoch {r.epoch}: carve CIDEr {r.metrics.get('val_CIDEr', float('nan')):.4f}", flush=True
                ),
            )
            choose_length_penalty(trained.bundle, sets["val"], seed_cfg)
        xe_seconds = time.perf_counter() - start
        meta = {"model": f"seed {seed}", "data_dir": str(args.data), "split": args.split, "select_on": "carve"}
        xe = evaluate(trained.bundle, args.architecture, evaluated, train_all, retrieval, meta, decoding)
        baselines = {s.label: row(xe, s.key) for s in xe.systems if s.key != "model"}
        record = {
            "seed": seed,
            "xe": row(xe),
            "xe_epochs": len(trained.fit.history) or None,
            "xe_selection_CIDEr_by_epoch": [e.metrics.get("val_CIDEr") for e in trained.fit.history] or None,
            "xe_best_epoch": trained.fit.best_epoch or None,
            "xe_decoding": xe.meta["decoding"],
            "xe_seconds": round(xe_seconds, 1),
        }
        print(f"seed {seed} cross-entropy: {json.dumps(record['xe'])}", flush=True)
        if not args.reuse_xe:
            trained.bundle.save(
                args.out.with_name(f"{args.out.stem}-seed{seed}-xe")
            )  # for SCST runs without retraining
        if args.scst_epochs:
            start = time.perf_counter()
            sc = self_critical(
                trained.bundle,
                sets["train"],
                sets["val"],
                seed_cfg,
                on_epoch=lambda r: print(
                    f"  scst epoch {r.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items()), flush=True
                ),
            )
            choose_length_penalty(trained.bundle, sets["val"], seed_cfg)
            scst = evaluate(trained.bundle, args.architecture, evaluated, train_all, retrieval, meta, decoding)
            record.update(
                {
                    "scst": row(scst),
                    "scst_kept": sc.kept,
                    "scst_best_epoch": sc.fit.best_epoch,
                    "selection_CIDEr_before": sc.before.get("val_CIDEr"),
                    "selection_CIDEr_by_epoch": [e.metrics.get("val_CIDEr") for e in sc.fit.history],
                    "scst_length_penalty": trained.bundle.config.decoding.length_penalty,
                    "scst_seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(f"seed {seed} self-critical (kept: {sc.kept}): {json.dumps(record['scst'])}", flush=True)
        runs.append(record)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "baselines": baselines, "runs": runs}, indent=1
            )
        )

    print(f"\n{args.split} split, {len(evaluated)} reports; mean [min, max] over seeds {args.seeds}")
    print("| system | " + " | ".join(HEADLINE) + " |\n|---|" + "---|" * len(HEADLINE))
    for name in ("xe", "scst"):
        if all(name in r for r in runs):
            print(
                f"| {args.architecture} {'+ SCST' if name == 'scst' else 'cross-entropy'} | "
                + " | ".join(spread([r[name][m] for r in runs]) for m in HEADLINE)
                + " |"
            )
    for label, values in baselines.items():
        print(f"| {label} | " + " | ".join("n/a" if values[m] is None else f"{values[m]:.4f}" for m in HEADLINE) + " |")
    for name in ("xe", "scst"):
        if all(name in r for r in runs):
            print(f"\n{name}: against the best baseline (paired bootstrap 95% interval of the difference, per seed)")
            for metric in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
                cells = [r[name].get(f"{metric}_vs_best") for r in runs]
                print(
                    f"  {metric}: vs {cells[0]['best_baseline']}: ratio "
                    + ", ".join(f"{c['ratio']:.2f}" for c in cells)
                    + "; interval "
                    + ", ".join(f"{c['low']:+.4f}..{c['high']:+.4f}" for c in cells)
                )
    if all("scst" in r for r in runs):
        ratios = [r["scst"]["CIDEr"] / r["xe"]["CIDEr"] for r in runs]
        print(
            f"\nSCST / cross-entropy CIDEr: {', '.join(f'{x:.2f}' for x in ratios)} (mean {np.mean(ratios):.2f}); "
            f"clinical micro-F1 {spread([r['xe']['clinical_micro_f1'] for r in runs])} -> "
            f"{spread([r['scst']['clinical_micro_f1'] for r in runs])}"
        )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
