"""Consensus (minimum Bayes risk) decoding against plain beam search, chosen where no reported split is touched.

The selection carve cannot judge a decoding rule fairly: early stopping and the length penalty were chosen on
it, so plain beam search's carve score is inflated by those choices and anything that changes the captions
looks worse there. This benchmark judges on reports that neither fitted the model nor chose anything for it:
per seed, a cross-entropy model is trained on the train part minus a fraction (`--crossfit`, by group, as
`scst_variants.py --crossfit` does) with early stopping and the length penalty chosen on the carve, and every
decoding rule is scored on the held-back groups. The rule that wins there becomes the default; the reported
split (MedPix 2.0: dev) is scored only by `report_quality.py` afterwards.

    .venv/bin/python benchmarks/consensus_decoding.py --data out/bench/ood/medpix \\
        --encoder-version radcap-encoder-oodbench/1 --reference out/bench/rq-seed0-xe --seeds 0 1 \\
        --rule beam5 --rule consensus:beam_width=5,consensus_samples=20 \\
        --rule consensus:beam_width=10,consensus_samples=20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from report_quality import setting  # noqa: E402 - benchmarks/ is the script folder

METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "clinical_micro_f1", "repetition_rate")


def parse_rule(text: str) -> tuple[str, dict]:
    """NAME or NAME:key=value,... -> (label, decoding overrides); NAME beamN is plain beam search of width N."""
    name, _, assignments = text.partition(":")
    update = dict(map(setting, filter(None, assignments.split(","))))
    if name.startswith("beam"):
        update = {"beam_width": int(name[4:]), "consensus_samples": 0, **update}
    label = (
        name
        if not update or name.startswith("beam")
        else name + "(" + ",".join(f"{k}={v}" for k, v in update.items()) + ")"
    )
    return label, update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--encoder-version", required=True)
    parser.add_argument(
        "--reference", type=Path, required=True, help="a cross-entropy bundle: its vocabulary and architecture"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--crossfit", type=float, default=0.3)
    parser.add_argument(
        "--rule", action="append", required=True, help="beamN, or NAME:beam_width=W,consensus_samples=N"
    )
    parser.add_argument("--meteor", action="store_true", help="also METEOR (Java; slower)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "consensus_decoding.json")
    args = parser.parse_args()

    from radcap.core.runtime import apply_offline_defaults, import_tensorflow_quietly

    apply_offline_defaults()
    import_tensorflow_quietly()
    from scst_variants import carve_sets, crossfit, crossfit_path, held_back_groups, read_results, write_results

    from radcap.captioning.bundle import load_bundle
    from radcap.captioning.training import choose_length_penalty
    from radcap.metrics.scores import paired_bootstrap, score_reports

    reference = load_bundle(args.reference)
    settings, sets = carve_sets(args, reference)
    results = read_results(args.out)
    rules = list(map(parse_rule, args.rule))
    held, fit = held_back_groups(sets["train"], settings, args.crossfit)  # the same groups for every seed
    features, references = held.features(slice(None)), dict(zip(held.report_ids, held.texts))
    for seed in args.seeds:
        saved = crossfit_path(args, seed)
        if not saved.exists():  # else the same split of the groups: reuse the model
            crossfit(argparse.Namespace(**{**vars(args), "seed": seed}), fit, held, sets["val"], settings, reference)
        bundle = load_bundle(saved)
        first = None  # the first rule: what every other is compared with, on the same reports
        for label, update in rules:
            # the decoding `radcap train` would save with these settings: beam search's length penalty chosen
            # on the carve at this width (consensus decoding needs none)
            choose_length_penalty(bundle, sets["val"], settings.captioner.model_copy(update={"seed": seed, **update}))
            start = time.perf_counter()
            captions = bundle.report(features)
            seconds = time.perf_counter() - start
            scores = score_reports(references, dict(zip(held.report_ids, captions)), meteor=args.meteor)
            summary = scores.summary()
            record = {m: summary.get(m) for m in METRICS} | {
                "ms_per_study": 1000 * seconds / len(held),
                "decoding": bundle.decoding(**update),
            }
            if first is None:
                first = scores
            else:
                record["CIDEr_vs_first"] = paired_bootstrap(scores, first, "CIDEr")
            results.setdefault(label, {})[str(seed)] = record
            print(
                f"seed {seed} {label}: "
                + ", ".join(f"{m} {record[m]:.4f}" for m in METRICS if record[m] is not None)
                + f", {record['ms_per_study']:.0f} ms/study"
                + (
                    " (CIDEr difference to {}: {delta:+.4f}, 95% interval {low:+.4f}..{high:+.4f})".format(
                        rules[0][0], **record["CIDEr_vs_first"]
                    )
                    if "CIDEr_vs_first" in record
                    else ""
                ),
                flush=True,
            )
            write_results(results, args.out)

    print(f"\nheld-back groups of train ({args.crossfit:g}), mean over seeds {args.seeds}")
    print("| decoding | " + " | ".join(METRICS) + " | ms/study |\n|---|" + "---|" * (len(METRICS) + 1))
    for label, _ in rules:
        runs = [results[label][str(s)] for s in args.seeds]
        cells = [f"{np.mean([r[m] for r in runs]):.4f}" if runs[0][m] is not None else "n/a" for m in METRICS]
        print(f"| {label} | " + " | ".join(cells) + f" | {np.mean([r['ms_per_study'] for r in runs]):.0f} |")


if __name__ == "__main__":
    main()
