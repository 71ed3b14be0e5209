"""The clinical loop closed: drafts written by `radcap caption`, edited by a "radiologist" into signed HL7, FHIR
and DICOM SR reports, ingested back (paired with their images, pending until the images arrive, radcap's own
drafts refused), and `radcap monitor`'s agreement checked against values computed here by hand; then the drift
alarm, tripped by a shifted stream and not by an unshifted one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radcap import read_captions
from radcap.text.labeler import OBSERVATIONS, BinaryLabels
from radcap.text.vocab import tokenize
from tests.conftest import run_cli_here
from tests.dicom_factory import make_dicom
from tests.signed_reports import PATIENT_VALUES, fhir_report, hl7_message, signed_sr, write_ndjson


def _image(folder: Path, name: str, uid: str, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)
    return make_dicom(folder / f"{name}.dcm", pixels, study_uid=uid, view_position="PA")


def no_patient_value_under(folder: Path, *texts: str) -> None:
    for path in [p for p in folder.rglob("*") if p.is_file() and p.name != ".pseudonym_salt"]:
        # DATA/pacs-images holds the fetched images without patient attributes (checked too)
        data = path.read_bytes()
        for value in PATIENT_VALUES:
            assert value.encode() not in data, (value, path)
    for text in texts:
        for value in PATIENT_VALUES:
            assert value not in text, value


def test_drafts_edited_into_signed_reports_come_back_paired_and_monitor_scores_them(
    tmp_path, tiny_captioner, prefect_api
):
    dicom, sources = tmp_path / "dicom", {f: tmp_path / f for f in ("hl7", "fhir", "sr")}
    for folder in (dicom, *sources.values()):
        folder.mkdir()
    uids = [f"1.2.826.0.1.3680043.8.498.{k + 1}7531" for k in range(5)]
    images = [_image(dicom, f"s{k}", uid, k) for k, uid in enumerate(uids[:4])]  # study 4's image comes later
    out = tmp_path / "out"
    done = run_cli_here(
        "caption", "--input", str(dicom), "--out", str(out), "--model", str(tiny_captioner), "--sr", "--fhir"
    )
    assert done.returncode == 0, done.stderr
    drafts = read_captions(out).groupby("study_id")["caption"].first().to_dict()
    signed = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y%m%d%H%M%S")  # signed after the drafts

    # The radiologist: study 0 signed as drafted (HL7), 1 with a finding added (FHIR), 2 cut and rewritten (SR),
    # 3 left preliminary (HL7), 4 signed before its images reached the archive (HL7, pending).
    words = tokenize(drafts[uids[2]])
    kept = words[: max(1, len(words) // 2)]
    finals = {
        uids[0]: drafts[uids[0]],
        uids[1]: drafts[uids[1]] + " small left pleural effusion.",
        uids[2]: " ".join(kept) + " heart size is normal.",
    }
    (sources["hl7"] / "0.hl7").write_text(hl7_message(uids[0], None, finals[uids[0]], when=signed))
    (sources["hl7"] / "3.hl7").write_text(hl7_message(uids[3], None, "Preliminary read.", status="P", when=signed))
    (sources["hl7"] / "4.hl7").write_text(hl7_message(uids[4], None, "No acute disease.", when=signed))
    (sources["hl7"] / "bad.hl7").write_text(hl7_message("not-a-uid", None, "x.", when=signed))
    issued = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ours = [json.loads(line) for line in (out / "fhir" / "DiagnosticReport.ndjson").read_text().splitlines()]
    write_ndjson(sources["fhir"] / "reports.ndjson", [fhir_report(uids[1], finals[uids[1]], issued=issued), *ours])
    signed_sr(sources["sr"] / "final.dcm", images[2], None, finals[uids[2]])
    for k, ours_sr in enumerate(sorted((out / "sr").rglob("*.dcm"))):
        (sources["sr"] / f"radcap-{k}.dcm").write_bytes(ours_sr.read_bytes())

    data = {fmt: tmp_path / f"data-{fmt}" for fmt in ("hl7", "fhir", "dicom-sr")}
    outputs = []
    for fmt, folder in zip(data, sources.values()):
        done = run_cli_here(
            "--json",
            "ingest",
            "--format",
            fmt,
            "--source",
            str(folder),
            "--images",
            str(dicom),
            "--out",
            str(data[fmt]),
        )
        outputs.append(done.stdout + done.stderr)
        assert done.returncode in (0, 1), done.stderr
    reports = {fmt: pd.read_parquet(d / "reports.parquet") for fmt, d in data.items()}
    rejects = {fmt: pd.read_parquet(d / "rejects.parquet") for fmt, d in data.items()}
    assert set(reports["hl7"]["study_id"]) == {uids[0]}
    assert set(reports["fhir"]["study_id"]) == {uids[1]} and set(reports["dicom-sr"]["study_id"]) == {uids[2]}
    assert len(pd.read_parquet(data["hl7"] / "images.parquet")) == 1
    reasons = " | ".join(rejects["hl7"]["reason"])
    assert "status 'P'" in reasons and "is not a DICOM UID" in reasons
    assert pd.read_parquet(data["hl7"] / "pending.parquet")["study_uid"].tolist() == [uids[4]]
    assert len(ours) == 4 and (rejects["fhir"]["reason"].str.contains("radcap's own draft")).sum() == 4
    assert (rejects["dicom-sr"]["reason"].str.contains("radcap's own draft")).sum() == 4
    for fmt in data:  # every input is a report, a reject or pending
        summary = json.loads((data[fmt] / "ingest.json").read_text())
        assert summary["report_inputs"] == summary["reports"] + summary["report_rejects"] + summary["pending"]

    # Study 4's image arrives, its report is gone from the inbox: the next run pairs it from pending.parquet.
    _image(dicom, "s4", uids[4], 4)
    (sources["hl7"] / "4.hl7").unlink()
    done = run_cli_here(
        "ingest", "--format", "hl7", "--source", str(sources["hl7"]), "--images", str(dicom), "--out", str(data["hl7"])
    )
    outputs.append(done.stdout + done.stderr)
    assert set(pd.read_parquet(data["hl7"] / "reports.parquet")["study_id"]) == {uids[0], uids[4]}
    assert pd.read_parquet(data["hl7"] / "pending.parquet").empty
    for folder in data.values():
        no_patient_value_under(folder, *outputs)

    done = run_cli_here(
        "--json", "monitor", "--captions", str(out), *(a for d in data.values() for a in ("--reports", str(d)))
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["studies_with_signed_report"] == 3 and summary["drafts"] == 4
    studies = pd.read_parquet(out / "monitor" / "studies.parquet").set_index("study_id")
    finals_normalized = {uid: reports[fmt].set_index("study_id").loc[uid, "target"] for fmt, uid in zip(data, uids)}

    # words kept, by hand: all of draft 0 and 1, the first half of draft 2
    assert studies.loc[uids[0], "words_kept"] == 1.0 and studies.loc[uids[1], "words_kept"] == 1.0
    assert studies.loc[uids[2], "words_kept"] == pytest.approx(len(kept) / len(words))
    # CIDEr-D, by pycocoevalcap's own scorer on the same three pairs
    from pycocoevalcap.cider.cider import Cider

    ids = sorted(finals_normalized)
    gts = {i: [" ".join(tokenize(finals_normalized[i]))] for i in ids}
    res = {i: [" ".join(tokenize(drafts[i]))] for i in ids}
    expected = dict(zip(ids, Cider().compute_score(gts, res)[1]))
    for uid in ids:
        assert studies.loc[uid, "cider"] == pytest.approx(expected[uid], abs=1e-9)
    # clinical F1: the labeler's observations of each text, counted here
    labels = BinaryLabels(1.0)
    tp = fp = fn = 0
    for uid in ids:
        ref, hyp = labels(finals_normalized[uid]), labels(drafts[uid])
        tp += sum(ref[o] and hyp[o] for o in OBSERVATIONS)
        fp += sum(hyp[o] and not ref[o] for o in OBSERVATIONS)
        fn += sum(ref[o] and not hyp[o] for o in OBSERVATIONS)
    (week,) = summary["weeks"]
    assert week["signed"] == 3 and week["drafted"] == 4
    assert week["words_kept"] == pytest.approx(np.mean([1.0, 1.0, len(kept) / len(words)]))
    assert week["CIDEr"] == pytest.approx(np.mean(list(expected.values())), abs=1e-9)
    if tp + fp + fn:
        assert week["clinical_F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert fn >= 1  # the finding the radiologist added is one the draft missed
    assert week["words_kept_low"] <= week["words_kept"] <= week["words_kept_high"]


def test_signed_srs_and_their_images_straight_from_a_pacs(tmp_path, prefect_api):
    """--source dicomweb:URL queries the PACS's SR instances; --images dicomweb:URL fetches the studies they name
    (WADO-RS, into DATA/pacs-images). radcap's own SR in the same PACS is refused as a draft."""
    from pydicom import dcmread

    from radcap.pacs.reports import build_sr
    from tests.pacs_fixtures import Orthanc, pacs_env

    server = Orthanc(tmp_path / "orthanc").start()
    try:
        uids = [f"1.2.826.0.1.3680043.8.498.{k + 1}8642" for k in range(3)]
        images = [_image(tmp_path, f"i{k}", uid, k) for k, uid in enumerate(uids)]
        signed = [
            signed_sr(tmp_path / f"sr{k}.dcm", images[k], "Lungs clear.", f"Impression {word}.")
            for k, word in enumerate(("alpha", "beta"))
        ]
        first = pd.Series({"model": "m", "model_version": "1", "encoder_version": "e", "caption": "no acute disease."})
        first["in_domain"], first["ood_score"] = True, 0.1
        ours = build_sr([dcmread(images[2])], first, uids[2] + ".5", uids[2] + ".6", [])
        ours.save_as(tmp_path / "ours.dcm", enforce_file_format=True)
        server.upload([*images[:1], *signed, tmp_path / "ours.dcm"])  # study 1's image is not in the PACS yet
        pacs = server.dicomweb
        data = tmp_path / "data"
        done = run_cli_here(
            "ingest", "--format", "dicom-sr", "--source", pacs, "--images", pacs, "--out", str(data), env=pacs_env()
        )
        assert done.returncode == 1, done.stderr  # radcap's own SR is a reject
        reports = pd.read_parquet(data / "reports.parquet")
        assert list(reports["study_id"]) == [uids[0]] and list(reports["target"]) == ["impression alpha."]
        fetched = pd.read_parquet(data / "images.parquet")["path"].tolist()
        assert (
            len(fetched) == 1 and Path(fetched[0]).is_relative_to(data / "pacs-images") and Path(fetched[0]).is_file()
        )
        assert pd.read_parquet(data / "pending.parquet")["study_uid"].tolist() == [uids[1]]
        assert "radcap's own draft" in " ".join(pd.read_parquet(data / "rejects.parquet")["reason"])
        server.upload([images[1]])  # the image arrives: the next run pairs the pending report
        done = run_cli_here(
            "ingest", "--format", "dicom-sr", "--source", pacs, "--images", pacs, "--out", str(data), env=pacs_env()
        )
        assert sorted(pd.read_parquet(data / "reports.parquet")["study_id"]) == sorted(uids[:2])
        assert pd.read_parquet(data / "pending.parquet").empty
        no_patient_value_under(data, done.stdout, done.stderr)  # the fetched images kept no patient attribute
    finally:
        server.stop()


def test_nightly_retrains_on_signed_reports_shows_their_agreement_and_monitors_the_drafts(
    tmp_path, tiny_captioner, prefect_api, monkeypatch
):
    """The nightly flow on signed HL7 reports of a DICOM folder: ingest, features, train, evaluate, promote (the
    record shows each version's agreement with the latest signed reports), then monitor the drafts. Every read of
    a split is recorded: the test split is never read before the promotion decision is recorded."""
    import radcap.captioning.data as caption_data
    import radcap.registry.store as registry
    import radcap.tasks.evaluate
    import radcap.tasks.promote

    events: list[tuple[str, str]] = []
    load, tag = caption_data.load_caption_sets, registry.tag_version

    def spy_load(data_dir, encoder_version, splits, *args, **kwargs):
        events.extend(("read", split) for split in splits)
        return load(data_dir, encoder_version, splits, *args, **kwargs)

    def spy_tag(name, version, tags):
        if "promotion" in tags:
            events.append(("decided", str(tags["promotion"]["split"])))
        return tag(name, version, tags)

    for module in (caption_data, radcap.tasks.evaluate, radcap.tasks.promote):
        monkeypatch.setattr(module, "load_caption_sets", spy_load)
    monkeypatch.setattr(registry, "tag_version", spy_tag)
    texts = ("no acute disease.", "small left pleural effusion.", "mild cardiomegaly.", "right lower lobe opacity.")
    dicom, hl7_dir = tmp_path / "dicom", tmp_path / "hl7"
    dicom.mkdir()
    hl7_dir.mkdir()
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y%m%d%H%M%S")
    for k in range(32):
        uid = f"1.2.826.0.1.3680043.8.498.{k + 1}9753"
        _image(dicom, f"s{k}", uid, k)
        (hl7_dir / f"{k}.hl7").write_text(
            hl7_message(uid, None, texts[k % 4], control_id=f"M{k}", when=later, patient=f"MRN-{k}")
        )
    out = tmp_path / "captions"
    assert (
        run_cli_here("caption", "--input", str(dicom), "--out", str(out), "--model", str(tiny_captioner)).returncode
        == 0
    )
    env = {
        "RADCAP_CAPTIONER__UNITS": "16",
        "RADCAP_CAPTIONER__EMBED_DIM": "8",
        "RADCAP_CAPTIONER__ARCHITECTURE": "show-tell",
        "RADCAP_CAPTIONER__MIN_COUNT": "1",
        "RADCAP_CAPTIONER__EPOCHS": "2",
        "RADCAP_CAPTIONER__MIN_EPOCHS": "1",
        "RADCAP_CAPTIONER__BEAM_WIDTH": "1",
        "RADCAP_CAPTIONER__REGISTERED_NAME": "radcap-captioner-signedtest",
        "RADCAP_SPLIT__SELECT_FRACTION": "0.3",
        # a deployment's key: the same pseudonyms, so the same splits, on every machine (a data directory's own
        # random key would split these 32 patients differently on each run of the test)
        "RADCAP_INGEST__PSEUDONYM_SALT": "radcap-test-key",
    }
    done = run_cli_here(
        "--json", "nightly", "--format", "hl7", "--source", str(hl7_dir), "--images", str(dicom),
        "--workdir", str(tmp_path / "nightly"), "--encoder", "random:0", "--captions", str(out), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["reports"] == 32 and summary["promotion"] == "promoted"
    latest = summary["latest_signed_reports"]
    (version,) = latest["versions"]
    assert latest["reports"] >= 1 and 0.0 <= latest["versions"][version]["words_kept"] <= 1.0
    assert summary["monitor"] == "not enough data"  # a champion of one night has no baseline yet
    decided = events.index(("decided", "val"))
    assert ("read", "test") not in events[:decided] and ("read", "test") in events[decided:], events
    assert ("read", "val") in events[:decided] and summary["decided_on"] == "val" and "test_CIDEr" in summary
    assert (out / "monitor" / "weeks.parquet").exists()
