"""The out-of-domain guard on real data: does a captioner know when a study is unlike its training studies,
also when its encoder never saw the intruder?

Four data directories: medpix (MedPix 2.0, CT/MR, official split; placeholder captions rejected), covid (the
553 real chest X-rays of ../shared/data/covid_cxr as a manifest, split 70/10/20 by patient), phantoms (the
embedded synthetic radiographs) and nonmedical (60 made-up pictures: noise, gradients, shapes, a scanned form,
colour, alpha). Two small captioners (Show-and-Tell: the guard, not the captions, is measured) are trained, one
on MedPix (reported on MedPix dev) and one on the chest X-rays (reported on their test patients); each is
evaluated with the other directories as out-of-domain sets, and `radcap caption` is run on the picture folders.
The encoder setups (`--setups`):
* random: the untrained DenseNet-121 (`random:SEED`);
* own: an encoder pretrained (CheXNet recipe, `--pretrain-epochs`, `--pretrain-size`) on each captioner's own
  training images only: the MedPix model's encoder never saw an X-ray, the X-ray model's never saw a CT;
* both: one encoder pretrained on the MedPix and chest X-ray train splits.
Each setup runs for every `--seeds` value (the pretraining seed; for random, the untrained weights' seed).
Prints, per setup and captioner, the share of studies flagged: by the combined score, by each signal alone (at
its own out-of-fold threshold), and with the modality and colour rules; `--json` keeps every number.

Which signals to combine (`domain.signals`): every subset of the guard's signals is fitted again on the same
training studies (the same out-of-fold calibration) and measured. The chest X-rays are split by patient into two
halves (`xrays-select`, `xrays-report`): the default is the subset with the highest share of `xrays-select`
flagged, of the phantoms and of the non-medical pictures (the worst of the three, as a guard must catch every
kind of intruder; mean over every setup and seed of the MedPix captioner), and the tables report
`xrays-report`, which no choice touched (the phantom and picture rows are not independent of the choice). The
last tables give the mean and range over seeds. `--json` also resumes: runs it already holds are not run again.

    .venv/bin/python benchmarks/domain_guard.py --setups random own both --seeds 0 1 2 --json out/bench/ood.json
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import radcap

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def covid_manifest(folder: Path) -> Path:
    meta = pd.read_csv(DATA / "covid_cxr" / "metadata.csv")
    manifest = pd.DataFrame(
        {
            "image": [str(DATA / "covid_cxr" / "images" / f) for f in meta["filename"]],
            "caption": meta["clinical_notes"].fillna(""),
            "patient_id": meta["patientid"].astype(str),
            "view": meta["view"].fillna(""),
            "modality": "CR",
            "labels": "finding:" + meta["finding"].astype(str),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def nonmedical_manifest(folder: Path, n: int = 60) -> Path:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        kind = k % 5
        if kind == 0:  # noise
            image = Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8))
        elif kind == 1:  # a gradient with colour
            x = np.linspace(0, 255, 256, dtype=np.uint8)
            image = Image.fromarray(
                np.stack(
                    [
                        np.tile(x, (256, 1)),
                        np.tile(x[:, None], (1, 256)),
                        np.full((256, 256), rng.integers(256), np.uint8),
                    ],
                    -1,
                )
            )
        elif kind == 2:  # shapes
            image = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(image)
            for _ in range(6):
                box = sorted(rng.integers(0, 256, 2)), sorted(rng.integers(0, 256, 2))
                draw.ellipse(
                    [box[0][0], box[1][0], box[0][1], box[1][1]], fill=tuple(int(v) for v in rng.integers(0, 256, 3))
                )
        elif kind == 3:  # a scanned form: lines of text on white
            image = Image.new("L", (256, 320), 245)
            draw = ImageDraw.Draw(image)
            for line in range(14):
                draw.text(
                    (12, 10 + 21 * line),
                    f"Field {line}: " + "".join(chr(rng.integers(65, 90)) for _ in range(18)),
                    fill=20,
                )
        else:  # RGBA with transparency
            pixels = rng.integers(0, 256, (200, 240, 4), dtype=np.uint8)
            pixels[..., 3] = np.where(rng.random((200, 240)) < 0.5, 0, 255)
            image = Image.fromarray(pixels, "RGBA")
        path = folder / f"picture{k:03d}.png"
        image.save(path)
        rows.append({"image": str(path), "caption": f"a picture of kind {kind}.", "split": "test"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def pretrained(dirs: list[Path], out: Path, name: str, seed: int, epochs: int, size: int) -> str:
    from radcap.core.settings import get_settings
    from radcap.flows.pretrain import pretrain_encoder_flow

    cfg = get_settings().encoder.model_copy(
        update={"epochs": epochs, "pretrain_size": size, "seed": seed, "registered_name": name}
    )
    return pretrain_encoder_flow(dirs, out, cfg)["registered"]


def run_setup(dirs: dict[str, Path], sources: dict[str, Path], out: Path, encoders: dict[str, str]) -> dict:
    """Features with each captioner's encoder, both captioners trained and evaluated; the guard's shares."""
    from radcap.core.settings import get_settings
    from radcap.flows.caption import caption_flow
    from radcap.flows.evaluate import evaluate_flow
    from radcap.flows.features import extract_features_flow
    from radcap.flows.train import train_flow

    cfg = get_settings().captioner.model_copy(
        update={
            "architecture": "show-tell",
            "units": 256,
            "embed_dim": 128,
            "epochs": 6,
            "min_epochs": 3,
            "beam_width": 1,
            "registered_name": "radcap-captioner-oodbench",
        }
    )
    results = {}
    for trained_on, split in (("medpix", "val"), ("covid", "test")):
        versions = {
            name: extract_features_flow(folder, encoders[trained_on], 32)["encoder_version"]
            for name, folder in dirs.items()
        }
        trained = train_flow(dirs[trained_on], out / f"captioner-{trained_on}", cfg, versions[trained_on])
        others = [dirs[name] for name in dirs if name != trained_on]
        evaluate_flow(
            dirs[trained_on],
            trained["registered"],
            split,
            out / f"evaluation-{trained_on}",
            meteor=False,
            ood_data=others,
        )
        quality = json.loads((out / f"evaluation-{trained_on}" / "metrics.json").read_text())["domain_guard"]
        quality["encoder"] = versions[trained_on]
        quality["subsets"] = signal_subsets(dirs, trained_on, split, versions)
        quality["captioned"] = {}
        # The guard as `radcap caption` applies it (score, modality and colour rules) on the picture folders.
        for name, folder in sources.items():
            caption_flow(
                folder, out / f"captions-{trained_on}-{name}", str(out / f"captioner-{trained_on}" / "captioner")
            )
            rows = radcap.read_captions(out / f"captions-{trained_on}-{name}")
            quality["captioned"][name] = {
                "images": len(rows),
                "flagged": float((~rows["in_domain"].astype(bool)).mean()),
            }
        results[trained_on] = quality
    return results


def xray_half(patient: str) -> str:
    """The half of the chest X-ray patients a patient is in: `select` (chooses the signals) or `report`."""
    return "select" if int(hashlib.sha256(patient.encode()).hexdigest()[:8], 16) % 2 == 0 else "report"


def signal_subsets(dirs: dict[str, Path], trained_on: str, split: str, versions: dict[str, str]) -> dict:
    """Every subset of the guard's signals, fitted on the captioner's training studies (train and selection carve,
    as training fits it) and measured on its held-out studies and the other directories' studies."""
    from radcap.captioning.data import CaptionSet, load_caption_sets, training_sets
    from radcap.core.catalog import DataCatalog
    from radcap.core.io import read_table
    from radcap.core.settings import get_settings
    from radcap.data_contracts import IMAGES, REPORTS
    from radcap.domain.guard import SIGNALS, domain_guard
    from radcap.evaluation.captioner import guard_quality, guarded_set
    from radcap.imaging.features import FeatureStore

    settings = get_settings()
    version = versions[trained_on]

    def guarded(name: str, splits: tuple[str, ...] | None = None, keep=None):
        catalog = DataCatalog(dirs[name])
        images, reports = read_table(catalog.images, IMAGES), read_table(catalog.reports, REPORTS)
        splits = splits or tuple(sorted(set(reports["split"])))
        found = load_caption_sets(dirs[name], version, splits, settings.captioner.max_views, min_size=0)
        data = CaptionSet.concat(list(found.values()))
        if keep is not None:
            data = data.subset([r for r, g in zip(data.report_ids, data.group_ids) if keep(g)])
        return guarded_set(data, images, FeatureStore(catalog.features), version)

    catalog = DataCatalog(dirs[trained_on])
    sets = training_sets(dirs[trained_on], version, settings.split, settings.captioner.max_views)
    images, reports = read_table(catalog.images, IMAGES), read_table(catalog.reports, REPORTS)
    held_out = guarded(trained_on, (split,))
    others = {name: guarded(name) for name in dirs if name not in (trained_on, "covid")}
    if trained_on != "covid":
        for half in ("select", "report"):
            others[f"xrays-{half}"] = guarded("covid", keep=lambda g, h=half: xray_half(g) == h)
    # Every subset is fitted on the same images: their statistics are read once, not once per subset.
    import radcap.domain.guard as guard_module

    reads: dict = {}
    originals = guard_module.set_statistics, guard_module.set_layers

    def once(function):
        def cached(image_ids, *args):
            key = (function.__name__, tuple(map(tuple, image_ids)))
            if key not in reads:
                reads[key] = function(image_ids, *args)
            return reads[key]

        return cached

    guard_module.set_statistics, guard_module.set_layers = once(originals[0]), once(originals[1])
    out = {}
    for size in range(1, len(SIGNALS) + 1):
        for subset in itertools.combinations(SIGNALS, size):
            cfg = settings.domain.model_copy(update={"signals": list(subset)})
            guard = domain_guard(
                [sets["train"], sets["val"]], images, reports, cfg, FeatureStore(catalog.features), version
            )
            quality = guard_quality(guard, held_out, others)
            out["+".join(subset)] = {
                "held_out": quality["held_out"]["flagged_by_score"],
                "calibration_flagged": guard.calibration.get("flagged"),
                **{name: o["flagged_by_score"] for name, o in quality["out_of_domain"].items()},
            }
    guard_module.set_statistics, guard_module.set_layers = originals
    return out


def subset_tables(runs: list[dict]) -> None:
    """The signal choice (on xrays-select) and, per subset, mean and range over seeds of every share."""
    medpix = [(run["setup"], run["seed"], run["results"]["medpix"]["subsets"]) for run in runs]
    names = list(medpix[0][2])
    chosen_on = ("xrays-select", "phantoms", "nonmedical")

    def worst(name: str) -> float:  # a guard must catch every kind of intruder: its weakest share counts
        return float(np.mean([min(subsets[name][c] for c in chosen_on) for _, _, subsets in medpix]))

    chosen = max(names, key=worst)
    print(f"\nsignals chosen on the worst of {', '.join(chosen_on)} (mean over {len(medpix)} runs): {chosen}")
    for name in names:
        print(f"  {name}: {worst(name):.1%}")
    columns = ["held_out", "xrays-report", "xrays-select", "phantoms", "nonmedical"]
    for trained_on in ("medpix", "covid"):
        print(f"\n{trained_on} captioner: share flagged, mean (min..max) over seeds\n")
        cols = [c for c in columns if c in runs[0]["results"][trained_on]["subsets"][names[0]]]
        if trained_on == "covid":
            cols = ["held_out", "medpix", "phantoms", "nonmedical"]
        print("| setup | signals | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for setup in dict.fromkeys(run["setup"] for run in runs):
            for name in names:
                values = [run["results"][trained_on]["subsets"][name] for run in runs if run["setup"] == setup]
                cells = []
                for c in cols:
                    v = [x[c] for x in values]
                    cells.append(f"{np.mean(v):.1%} ({min(v):.1%}..{max(v):.1%})")
                mark = " (default)" if name == chosen else ""
                print(f"| {setup} | {name}{mark} | " + " | ".join(cells) + " |")


def print_table(runs: list[dict]) -> None:
    """The trained guards (the default signals) as `radcap evaluate` and `radcap caption` report them."""
    print(
        "| encoder | captioner | held-out in-domain (two-view) | out-of-domain set | combined | each signal alone "
        "| with rules | `radcap caption` |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        for trained_on, q in run["results"].items():
            held = q["held_out"]
            multi = held.get("multi_view_flagged_by_score")
            own = f"{held['flagged_by_score']:.1%}" + (f" ({multi:.1%})" if multi is not None else "")
            for name, o in q["out_of_domain"].items():
                captioned = q["captioned"].get(name, {}).get("flagged")
                alone = ", ".join(
                    f"{key[len('flagged_by_') : -len('_alone')]} {value:.1%}"
                    for key, value in o.items()
                    if key.startswith("flagged_by_") and key.endswith("_alone")
                )
                print(
                    f"| {run['setup']} seed {run['seed']} ({q['encoder']}) | {trained_on} | {own} | {name} "
                    f"| {o['flagged_by_score']:.1%} | {alone} | {o['flagged_with_modality_rule']:.1%} "
                    f"| {'' if captioned is None else f'{captioned:.1%}'} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setups", nargs="+", default=["random"], choices=["random", "own", "both"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "ood")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--pretrain-size", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from radcap.core.runtime import apply_offline_defaults

    apply_offline_defaults()
    from radcap.core.settings import get_settings
    from radcap.flows.ingest import ingest_reports
    from radcap.ingestion.phantoms import write_sample

    settings, out = get_settings(), args.out.resolve()  # manifests name their files by absolute path
    dirs = {name: out / name for name in ("medpix", "covid", "phantoms", "nonmedical")}
    ingest_reports("medpix2", DATA / "medpix2", dirs["medpix"], settings=settings)
    ingest_reports("manifest", covid_manifest(out / "sources" / "covid"), dirs["covid"], settings=settings)
    sample = Path(write_sample(out / "sources" / "phantoms", settings.sample)["path"])
    ingest_reports(
        "iu-xml",
        sample / "ecgen-radiology",
        dirs["phantoms"],
        images=sample / "images",
        views=sample / "indiana_projections.csv",
        settings=settings,
    )
    pictures = nonmedical_manifest(out / "sources" / "nonmedical")
    ingest_reports("manifest", pictures, dirs["nonmedical"], settings=settings)
    sources = {"nonmedical": out / "sources" / "nonmedical", "phantoms": sample / "images"}
    # `--json` also resumes: the (setup, seed) runs it already holds are kept and not run again.
    runs = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
    for seed in args.seeds:  # every setup of a seed before the next seed: a cut-short run still compares them
        for setup in args.setups:
            if any(run["setup"] == setup and run["seed"] == seed for run in runs):
                continue
            folder = out / f"{setup}-seed{seed}"
            epochs, size = args.pretrain_epochs, args.pretrain_size
            if setup == "random":
                encoders = dict.fromkeys(("medpix", "covid"), f"random:{seed}")
            elif setup == "own":
                encoders = {
                    name: pretrained(
                        [dirs[name]], folder / f"encoder-{name}", f"radcap-encoder-ood-{name}", seed, epochs, size
                    )
                    for name in ("medpix", "covid")
                }
            else:
                both = pretrained(
                    [dirs["medpix"], dirs["covid"]], folder / "encoder", "radcap-encoder-ood-both", seed, epochs, size
                )
                encoders = dict.fromkeys(("medpix", "covid"), both)
            runs.append({"setup": setup, "seed": seed, "results": run_setup(dirs, sources, folder, encoders)})
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(runs, indent=2))
            print(f"done: {setup} seed {seed}", flush=True)
    print_table(runs)
    subset_tables(runs)


if __name__ == "__main__":
    main()
