"""The production loop: gated promotion and rollback in the registry, bulk captioning of a PACS-like export
(grouping, privacy, bad files), a kill in the middle of a run followed by a re-run, and overlapping inbox runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radcap import read_caption_rejects, read_captions
from tests.conftest import ingested_sample, run_cli
from tests.dicom_factory import FAKE_PATIENT, make_dicom

pytestmark = pytest.mark.slow
MODEL_NAME = "radcap-captioner-prodtest"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, prefect_api) -> Path:
    """60 phantom studies, ingested, with features from the untrained encoder (random:0)."""
    from radcap.flows.features import extract_features_flow

    data = ingested_sample(tmp_path_factory.mktemp("production"), studies=60, image_size=128)
    extract_features_flow(data, "random:0", 8)
    return data


def _train_bundle(data_dir: Path, out: Path, epochs: int, learning_rate: float, seed: int) -> Path:
    """A tiny Show-and-Tell through the real training code; 1 epoch at a negligible rate = an untrained model."""
    from radcap.captioning.data import load_caption_sets
    from radcap.captioning.training import train_captioner
    from radcap.core.settings import get_settings
    from radcap.text.vocab import Vocabulary

    cfg = get_settings().captioner.model_copy(
        update={
            "architecture": "show-tell",
            "embed_dim": 16,
            "units": 32,
            "min_count": 1,
            "batch_size": 8,
            "epochs": epochs,
            "min_epochs": epochs,
            "patience": epochs,
            "learning_rate": learning_rate,
            "seed": seed,
            "beam_width": 1,
            "registered_name": MODEL_NAME,
        }
    )
    sets = load_caption_sets(data_dir, "random-seed0", ("train", "val"), 2)
    train, val = sets["train"], sets["val"]
    extra = {
        "encoder_version": "random-seed0",
        "encoder_spec": "random:0",
        "data_version": "test",
        "decoding": {"beam_width": 1},
    }
    result = train_captioner(train, val, Vocabulary.build(train.texts, 1, 60), cfg, extra)
    result.bundle.save(out)
    return out


def _register(bundle: Path, tag: str, name: str = MODEL_NAME) -> str:
    import mlflow

    from radcap.registry.store import register_captioner

    mlflow.set_experiment("radcap-tests")
    with mlflow.start_run():
        return register_captioner(bundle, name, {"test_model": tag})


@pytest.fixture(scope="module")
def bundles(data_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "trained": _train_bundle(data_dir, root / "trained", 40, 3e-3, 0),
        "untrained": _train_bundle(data_dir, root / "untrained", 1, 1e-9, 1),
    }


def test_promotion_gate_and_rollback(data_dir: Path, bundles: dict[str, Path]):
    import mlflow

    from radcap.core.errors import RadcapError
    from radcap.core.settings import PromotionSettings
    from radcap.flows.promote import promote_flow, rollback_flow
    from radcap.registry.store import champion, history

    cfg = PromotionSettings()  # decides on val
    weak = _register(bundles["untrained"], "untrained")
    first = promote_flow(data_dir, MODEL_NAME, weak, cfg)
    assert first["outcome"] == "promoted" and "first model" in first["reason"] and champion(MODEL_NAME) == weak

    strong = _register(bundles["trained"], "trained")
    dry = promote_flow(data_dir, MODEL_NAME, strong, cfg, dry_run=True)
    assert dry["outcome"] == "dry-run" and champion(MODEL_NAME) == weak  # a dry run moves nothing
    promoted = promote_flow(data_dir, MODEL_NAME, strong, cfg)
    assert promoted["outcome"] == "promoted", promoted["reason"]
    assert promoted["metrics"][strong]["CIDEr"] > promoted["metrics"][weak]["CIDEr"]
    assert promoted["metrics"][strong]["reports"] == promoted["metrics"][weak]["reports"]  # same held-out reports
    assert champion(MODEL_NAME) == strong and history(MODEL_NAME) == [weak, strong]

    worse = _register(bundles["untrained"], "untrained-again")
    refused = promote_flow(data_dir, MODEL_NAME, worse, cfg)
    assert refused["outcome"] == "refused" and "CIDEr" in refused["reason"] and champion(MODEL_NAME) == strong
    tags = mlflow.MlflowClient().get_model_version(MODEL_NAME, worse).tags
    assert (
        '"refused"' in tags["promotion"]
        and f"challenged_by_{worse}" in mlflow.MlflowClient().get_model_version(MODEL_NAME, strong).tags
    )

    restored = rollback_flow(MODEL_NAME)
    assert restored == {"model": MODEL_NAME, "champion": weak, "replaced": strong} and champion(MODEL_NAME) == weak
    with pytest.raises(RadcapError, match="no previous champion"):
        rollback_flow(MODEL_NAME)


@pytest.fixture(scope="module")
def champion_uri(data_dir: Path, bundles) -> str:
    """The trained bundle registered under its own name and promoted (first version: becomes champion)."""
    from radcap.core.settings import PromotionSettings
    from radcap.flows.promote import promote_flow

    name = f"{MODEL_NAME}-captioning"
    version = _register(bundles["trained"], "trained", name)
    assert promote_flow(data_dir, name, version, PromotionSettings())["outcome"] == "promoted"
    return f"models:/{name}@champion"


def _real_pixels(shared_data: Path, n: int) -> list[np.ndarray]:
    files = sorted((shared_data / "covid_cxr").rglob("*.png"))[:n]
    return [np.asarray(Image.open(f).convert("L")) for f in files]


def _pacs_export(root: Path, shared_data: Path, studies: int) -> dict:
    """Nested folders, names with and without extensions; frontal + lateral DICOMs per study."""
    from pydicom.uid import generate_uid

    pixels = _real_pixels(shared_data, 2 * studies)
    uids = []
    for s in range(studies):
        uid = generate_uid()
        uids.append(uid)
        folder = root / f"export{s % 2}" / f"STUDY{s:03d}" / "SERIES1"
        folder.mkdir(parents=True)
        make_dicom(folder / f"IM{2 * s:05d}", pixels[2 * s], study_uid=uid, view_position="PA")
        make_dicom(folder / f"IM{2 * s + 1:05d}.dcm", pixels[2 * s + 1], study_uid=uid, view_position="LL")
    return {"study_uids": uids, "files": 2 * studies}


def _summary(stdout: str) -> dict:
    """The summary a command printed with --json (its last line)."""
    return json.loads(stdout.strip().splitlines()[-1])


def _all_output_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_caption_pacs_export_groups_studies_rejects_bad_files_and_keeps_patients_private(
    champion_uri: str, bundles, tmp_path: Path, shared_data: Path
):
    export = tmp_path / "export"
    made = _pacs_export(export, shared_data, 3)
    bad = export / "bad"
    bad.mkdir()
    good_dicom = next(export.rglob("IM00000")).read_bytes()
    (bad / "truncated").write_bytes(good_dicom[: len(good_dicom) // 2])
    make_dicom(bad / "nopixels.dcm", _real_pixels(shared_data, 1)[0], with_pixels=False)
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("not an image, a text file named .png")
    sixteen = _real_pixels(shared_data, 1)[0].astype(np.uint16) * 257
    Image.fromarray(sixteen).save(export / "scan16.png")  # 16-bit PNG: supported, captioned
    (export / ".complete").write_text("")  # hidden: a marker, not an input

    out = tmp_path / "captions"
    done = run_cli(
        "--verbose", "caption", "--input", str(export), "--out", str(out), "--model", champion_uri, "--batch-size", "4"
    )  # verbose: the logs are checked for patient values too
    assert done.returncode == 1, done.stderr[-3000:]  # finished, with rejects
    captions, rejects = read_captions(out), read_caption_rejects(out)
    inputs = made["files"] + 5
    assert len(captions) + len(rejects) == inputs
    assert set(captions["source_path"]) | set(rejects["source_path"]) == {
        p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file() and not p.name.startswith(".")
    }
    reasons = dict(zip(rejects["source_path"], rejects["reason"]))
    assert reasons == {
        "bad/empty.png": "empty file (0 bytes)",
        "bad/notes.png": "not a PNG, JPEG or DICOM file (unrecognized content)",
        "bad/nopixels.dcm": "DICOM has no pixel data",
        "bad/truncated": reasons["bad/truncated"],
    } and reasons["bad/truncated"].startswith("cannot")
    # One report per study: both views of a study share the study's UID and its caption.
    dicoms = captions[captions["source_path"] != "scan16.png"]
    assert sorted(dicoms["study_id"].unique()) == sorted(made["study_uids"])
    assert (dicoms.groupby("study_id")["caption"].nunique() == 1).all()
    assert sorted(dicoms["view"]) == ["frontal"] * 3 + ["lateral"] * 3
    assert (captions["model"] == f"{MODEL_NAME}-captioning").all() and (captions["caption"].str.len() > 0).all()
    assert len(pd.read_csv(out / "captions.csv")) == len(captions)
    # Privacy: no fake patient attribute anywhere in the outputs or in what the run printed.
    blob = _all_output_bytes(out) + done.stdout.encode() + done.stderr.encode()
    for value in FAKE_PATIENT.values():
        assert value.encode() not in blob, value

    again = run_cli("--json", "caption", "--input", str(export), "--out", str(out), "--model", champion_uri)
    assert again.returncode == 1 and _summary(again.stdout)["new_images"] == 0
    assert read_captions(out).equals(captions)  # nothing re-captioned, nothing duplicated

    hashed = tmp_path / "hashed"
    done = run_cli(
        "caption",
        "--input",
        str(export / "export0"),
        "--out",
        str(hashed),
        "--model",
        str(bundles["trained"]),
        "--identifiers",
        "hash",
        env={"RADCAP_CAPTION__ID_SALT": "site-secret"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    blob = _all_output_bytes(hashed) + done.stdout.encode() + done.stderr.encode()
    assert not any(uid.encode() in blob for uid in made["study_uids"])


def test_missing_champion_is_a_clear_error(tmp_path: Path, data_dir: Path):
    png = tmp_path / "in"
    png.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png / "a.png")
    done = run_cli(
        "caption", "--input", str(png), "--out", str(tmp_path / "o"), "--model", "models:/no-such-captioner@champion"
    )
    assert done.returncode == 2 and "no-such-captioner" in done.stderr and "Traceback" not in done.stderr


def test_killed_run_then_rerun_captions_every_image_exactly_once(bundles, tmp_path: Path, shared_data: Path):
    export = tmp_path / "export"
    made = _pacs_export(export, shared_data, 16)
    out = tmp_path / "out"
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    command = [
        sys.executable,
        "-m",
        "radcap.cli",
        "--json",
        "caption",
        "--input",
        str(export),
        "--out",
        str(out),
        "--model",
        str(bundles["trained"]),
        "--batch-size",
        "2",
    ]
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None and not list((out / ".parts").glob("captions-*.parquet")):
        time.sleep(0.02)
    # Frozen the moment its first part exists (no timing guess), then killed: a crash inside the run.
    child.send_signal(signal.SIGSTOP)
    child.send_signal(signal.SIGKILL)
    child.wait()
    if (out / "captions").exists():
        pytest.skip("the run finished before it could be stopped (a machine far faster than this test assumes)")
    partial = len(list((out / ".parts").glob("captions-*.parquet")))
    assert partial >= 1

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    captions = read_captions(out)
    assert len(captions) == made["files"] and captions["source_path"].is_unique
    assert pd.read_csv(out / "captions.csv")["source_path"].is_unique and len(read_caption_rejects(out)) == 0
    assert not list((out / ".parts").glob("*.parquet"))
    # The re-run captioned only what the killed run had not written.
    assert 0 < _summary(done.stdout)["new_images"] <= made["files"] - 2 * partial


def test_ledger_lets_exactly_one_of_many_claimants_take_a_batch(tmp_path: Path):
    from radcap.operations.inbox import Ledger

    ledger, wins = Ledger(tmp_path), []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        wins.append(ledger.claim("batch-1", timeout=3600))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [w for w in wins if w is not None]
    assert len(wins) == 8 and len(winners) == 1
    assert winners[0].finish({"captioned": 1})
    assert ledger.claim("batch-1", timeout=0) is None  # done: never taken again, even with an expired claim
    first = ledger.claim("batch-2", timeout=3600)
    assert first is not None and ledger.claim("batch-2", timeout=3600) is None
    time.sleep(0.05)
    second = ledger.claim("batch-2", timeout=0.01)  # a stale claim (crashed run) is taken over
    assert second is not None
    first.release()  # the first owner's release must not remove the new owner's claim
    assert not first.finish({"late": True}) and ledger.claim_file("batch-2").exists()
    assert second.finish({"captioned": 2}) and ledger.is_done("batch-2")


def test_two_overlapping_inbox_runs_caption_each_batch_once(bundles, tmp_path: Path, shared_data: Path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    pixels = _real_pixels(shared_data, 6)
    for b in range(3):
        folder = inbox / f"batch{b}"
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(pixels[2 * b + i]).save(folder / f"img{i}.png")
        if b < 2:
            (folder / ".complete").write_text("")
    # batch2 has no marker and has just changed: with a long settle time it is not complete yet.
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or "", "RADCAP_CAPTION__SETTLE_SECONDS": "3600"}
    command = [
        sys.executable,
        "-m",
        "radcap.cli",
        "--json",
        "caption-inbox",
        "--inbox",
        str(inbox),
        "--out",
        str(out),
        "--model",
        str(bundles["trained"]),
    ]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [r.communicate(timeout=600) for r in runs]
    assert all(r.returncode == 0 for r in runs), [e[-2000:] for _, e in results]
    taken = sorted(b for stdout, _ in results for b in _summary(stdout)["captioned_batches"])
    assert taken == ["batch0", "batch1"]  # each complete batch by exactly one run; batch2 not settled
    captions = read_captions(out)  # one store for the inbox: paths BATCH/FILE
    assert sorted(captions["source_path"]) == [
        "batch0/img0.png",
        "batch0/img1.png",
        "batch1/img0.png",
        "batch1/img1.png",
    ]
    for b in ("batch0", "batch1"):
        assert (out / ".ledger" / f"{b}.done.json").exists()
    third = run_cli(
        "--json",
        "caption-inbox",
        "--inbox",
        str(inbox),
        "--out",
        str(out),
        "--model",
        str(bundles["trained"]),
        "--settle-seconds",
        "0",
    )
    assert third.returncode == 0 and _summary(third.stdout)["captioned_batches"] == ["batch2"]


def test_nightly_run_twice_recomputes_nothing_unchanged(tmp_path: Path, prefect_api):
    from radcap.core.settings import get_settings
    from radcap.ingestion.phantoms import write_sample

    sample = Path(
        write_sample(tmp_path / "sample", get_settings().sample.model_copy(update={"studies": 30, "image_size": 128}))[
            "path"
        ]
    )
    env = {
        "RADCAP_CAPTIONER__UNITS": "32",
        "RADCAP_CAPTIONER__EMBED_DIM": "16",
        "RADCAP_CAPTIONER__ARCHITECTURE": "show-tell",
        "RADCAP_CAPTIONER__MIN_COUNT": "1",
        "RADCAP_CAPTIONER__EPOCHS": "3",
        "RADCAP_CAPTIONER__MIN_EPOCHS": "1",
        "RADCAP_CAPTIONER__BEAM_WIDTH": "1",
        "RADCAP_CAPTIONER__REGISTERED_NAME": "radcap-captioner-nightlytest",
    }
    args = (
        "nightly",
        "--source",
        str(sample / "ecgen-radiology"),
        "--images",
        str(sample / "images"),
        "--views",
        str(sample / "indiana_projections.csv"),
        "--workdir",
        str(tmp_path / "nightly"),
        "--encoder",
        "random:0",
    )
    first = run_cli("--json", *args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = _summary(first.stdout)
    assert summary["features_encoded"] == 60 and summary["retrained"] is True and summary["promotion"] == "promoted"

    second = run_cli("--json", "--verbose", *args, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = _summary(second.stdout)
    assert "ingestion skipped" in second.stderr and summary["features_encoded"] == 0
    assert summary["retrained"] is False and "not retrained" in second.stderr
    assert summary["promotion"] == "refused" and "already the champion" in summary["promotion_reason"]
