"""The out-of-domain guard on real data: does a captioner know when an image is unlike its training images?

Four data directories, each ingested and encoded with the same encoder: `--encoder` (default `random:0`, an
untrained DenseNet-121), or, with `--pretrain-epochs N`, an encoder pretrained here first (CheXNet recipe) on
the MedPix and chest X-ray train splits:
* medpix: MedPix 2.0 (CT/MR, official split; placeholder captions rejected);
* covid: the 553 real chest X-rays of ../shared/data/covid_cxr, as a manifest (clinical notes as captions,
  split 70/10/20 by patient);
* phantoms: the embedded synthetic radiographs (60 studies);
* nonmedical: 60 made-up pictures (noise, gradients, shapes, a scanned-form look, colour, alpha).
Two captioners are trained (a small Show-and-Tell: the guard, not the captions, is measured here), each
selecting on a set carved from its train split, so the reported split is untouched: one on MedPix (reported
on MedPix dev), one on the chest X-rays (reported on their test patients). Each is evaluated with the other
directories as out-of-domain sets. Prints the share of studies flagged.

    .venv/bin/python benchmarks/domain_guard.py [--encoder models:/radcap-encoder/3] [--out out/bench/ood]
    .venv/bin/python benchmarks/domain_guard.py --pretrain-epochs 4 --pretrain-size 128
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--encoder", default="random:0")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "ood")
    parser.add_argument("--pretrain-epochs", type=int, default=0)
    parser.add_argument("--pretrain-size", type=int, default=128)
    args = parser.parse_args()
    from radcap.core.runtime import apply_offline_defaults

    apply_offline_defaults()
    from radcap.core.settings import get_settings
    from radcap.flows.caption import caption_flow
    from radcap.flows.evaluate import evaluate_flow
    from radcap.flows.features import extract_features_flow
    from radcap.flows.ingest import ingest_reports
    from radcap.flows.pretrain import pretrain_encoder_flow
    from radcap.flows.train import train_flow
    from radcap.ingestion.phantoms import write_sample

    settings, out = get_settings(), args.out
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
    ingest_reports(
        "manifest", nonmedical_manifest(out / "sources" / "nonmedical"), dirs["nonmedical"], settings=settings
    )
    encoder = args.encoder
    if args.pretrain_epochs:
        cfg = settings.encoder.model_copy(
            update={
                "epochs": args.pretrain_epochs,
                "pretrain_size": args.pretrain_size,
                "registered_name": "radcap-encoder-oodbench",
            }
        )
        encoder = pretrain_encoder_flow([dirs["medpix"], dirs["covid"]], out / "encoder", cfg)["registered"]
    versions = {name: extract_features_flow(folder, encoder, 32)["encoder_version"] for name, folder in dirs.items()}
    version = versions["medpix"]
    cfg = settings.captioner.model_copy(
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
    results, captioned = {}, {}
    for trained_on, split in (("medpix", "val"), ("covid", "test")):
        trained = train_flow(dirs[trained_on], out / f"captioner-{trained_on}", cfg, version)
        others = [dirs[name] for name in dirs if name != trained_on]
        evaluate_flow(
            dirs[trained_on],
            trained["registered"],
            split,
            out / f"evaluation-{trained_on}",
            meteor=False,
            ood_data=others,
        )
        results[trained_on] = json.loads((out / f"evaluation-{trained_on}" / "metrics.json").read_text())[
            "domain_guard"
        ]
        # The guard as `radcap caption` applies it (score, modality and colour rules) on picture folders.
        for name, folder in (("nonmedical", out / "sources" / "nonmedical"), ("phantoms", sample / "images")):
            caption_flow(
                folder, out / f"captions-{trained_on}-{name}", str(out / f"captioner-{trained_on}" / "captioner")
            )
            rows = pd.read_parquet(out / f"captions-{trained_on}-{name}" / "captions.parquet")
            captioned[(trained_on, name)] = (len(rows), float((~rows["in_domain"].astype(bool)).mean()))
    print(f"encoder {version}")
    for trained_on, quality in results.items():
        held = quality["held_out"]
        print(
            f"\ncaptioner trained on {trained_on} (modalities {quality['modalities']}; "
            f"threshold {quality['threshold']:.3f}, "
            f"{quality['percentile']:g}th percentile of its training images, out of fold)"
        )
        print(
            f"  held-out {trained_on} ({held['studies']} studies): flagged {held['flagged_by_score']:.1%} by score, "
            f"{held['flagged_with_modality_rule']:.1%} with the modality rule"
        )
        for name, q in quality["out_of_domain"].items():
            print(
                f"  {name} ({q['studies']} studies): caught {q['flagged_by_score']:.1%} by score, "
                f"{q['flagged_with_modality_rule']:.1%} with the modality rule (median score {q['median_score']:.2f})"
            )
        for (model, name), (n, share) in captioned.items():
            if model == trained_on:
                print(
                    f"  `radcap caption` of the {name} files ({n} images; score, modality and colour rules): "
                    f"{share:.1%} flagged"
                )


if __name__ == "__main__":
    main()
