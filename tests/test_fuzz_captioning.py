"""`radcap caption` on a fuzzed PACS export: valid two-view studies among several hundred mutated DICOM files
(truncations, byte flips, absurd lengths, missing and multi-valued tags, wrong transfer syntaxes, frames,
zero/huge sizes, deep and huge sequences, patient values where UIDs belong), links and special files.

Asserted, as a user running a PACS export would need: the run finishes (exit 1: some rejected), every input
file is in exactly one of the captions / caption_rejects tables, no patient value is in any output byte or
anything printed, the valid studies get one report from both views, and a re-run adds and changes nothing.
The mutations are seeded (RADCAP_FUZZ_SEED, default 0): a failure is reproducible with the same seed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radcap import read_caption_rejects, read_captions
from tests.conftest import run_cli_here
from tests.dicom_mutations import MUTATIONS, SECRETS, base_dataset, to_bytes

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
MUTATED_FILES = 300


def _pixels(shared_data: Path, n: int) -> list[np.ndarray]:
    files = sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[:n]
    return [np.asarray(Image.open(f).convert("L").resize((96, 96))) for f in files]


def _export(root: Path, shared_data: Path, seed: int) -> dict:
    from pydicom.uid import generate_uid

    rng = random.Random(seed)
    pixels = _pixels(shared_data, 12)
    studies = {}
    for s in range(6):  # valid studies, frontal + lateral
        uid = generate_uid()
        folder = root / f"valid{s % 2}" / f"S{s:02d}"
        folder.mkdir(parents=True)
        for v, view in enumerate(("PA", "LL")):
            (folder / f"IM{v}").write_bytes(to_bytes(base_dataset(pixels[2 * s + v], uid, view)))
        studies[uid] = [f"valid{s % 2}/S{s:02d}/IM0", f"valid{s % 2}/S{s:02d}/IM1"]
    base = base_dataset(pixels[0], generate_uid(), "PA")
    data, kinds = to_bytes(base), sorted(MUTATIONS)
    for n in range(MUTATED_FILES):
        kind = kinds[n % len(kinds)]
        folder = root / "fuzz" / kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"F{n:04d}").write_bytes(MUTATIONS[kind](rng, data, base))
    special = root / "special"
    special.mkdir()
    (special / "link-inside").symlink_to(root / "valid0" / "S00" / "IM0")
    (special / "link-outside").symlink_to("/etc/hostname")
    (special / "link-broken").symlink_to(root / "nowhere")
    (special / "folder-link").symlink_to(root / "valid1")
    os.mkfifo(special / "a-fifo")
    (special / ".complete").write_text("")  # hidden: a marker, not an input
    return {"studies": studies}


def _inputs(root: Path) -> set[str]:
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            if not name.startswith("."):
                found.add((Path(folder) / name).relative_to(root).as_posix())
    return found


def test_fuzzed_pacs_export_every_file_once_no_patient_value_rerun_adds_nothing(
    tmp_path, shared_data, tiny_captioner, prefect_api
):
    seed = int(os.environ.get("RADCAP_FUZZ_SEED", "0"))
    export, out = tmp_path / "export", tmp_path / "out"
    made = _export(export, shared_data, seed)
    inputs = _inputs(export)
    assert len(inputs) == 12 + MUTATED_FILES + 5

    done = run_cli_here(
        "--verbose",
        "caption",
        "--input",
        str(export),
        "--out",
        str(out),
        "--model",
        str(tiny_captioner),
        "--batch-size",
        "16",
    )  # verbose: every log line is checked for patient values
    assert done.returncode == 1, done.stderr[-4000:]  # finished, with rejects; never a traceback
    assert "Traceback" not in done.stderr
    captions, rejects = read_captions(out), read_caption_rejects(out)
    assert captions["source_path"].is_unique and rejects["source_path"].is_unique
    assert set(captions["source_path"]).isdisjoint(rejects["source_path"])
    assert set(captions["source_path"]) | set(rejects["source_path"]) == inputs
    assert len(captions) > 12 and len(rejects) > 50  # many mutations still decode; many cannot
    print(
        f"fuzzed export (seed {seed}): {len(inputs)} inputs -> {len(captions)} captioned, {len(rejects)} rejected; "
        f"reasons: {rejects['reason'].str.split('(').str[0].str.strip().value_counts().head(8).to_dict()}"
    )
    reasons = dict(zip(rejects["source_path"], rejects["reason"]))
    assert "outside the input folder" in reasons["special/link-outside"]
    assert "inside the input folder" in reasons["special/link-inside"] and "broken" in reasons["special/link-broken"]
    assert "not a regular file" in reasons["special/a-fifo"] and "folder" in reasons["special/folder-link"]
    assert (
        rejects.loc[~rejects["source_path"].str.startswith("special/"), "sha256"].str.len() == 64
    ).all()  # read once
    for uid, paths in made["studies"].items():
        study = captions[captions["source_path"].isin(paths)]
        assert len(study) == 2 and set(study["study_id"]) == {uid} and study["caption"].nunique() == 1
        assert sorted(study["view"]) == ["frontal", "lateral"]
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file()) + done.stdout.encode() + done.stderr.encode()
    for secret in SECRETS:
        assert secret not in blob, secret

    again = run_cli_here(
        "--json",
        "caption",
        "--input",
        str(export),
        "--out",
        str(out),
        "--model",
        str(tiny_captioner),
        "--batch-size",
        "16",
    )
    assert again.returncode == 1, again.stderr[-4000:]
    assert read_captions(out).equals(captions)
    assert read_caption_rejects(out)[["source_path", "sha256", "reason"]].equals(
        rejects[["source_path", "sha256", "reason"]]
    )
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["new_images"] == 0 and summary["captioned"] == 0 and summary["rejected"] == len(rejects)
