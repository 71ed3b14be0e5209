"""The PACS round trip against a real Orthanc: studies in by DICOMweb (QIDO-RS, WADO-RS), drafts out as DICOM SR
(checked by dciodvfy), stored back by STOW-RS, and as FHIR DiagnosticReports; exactly once across re-runs, a new
view, a PACS that fails, answers badly or dies mid-run; fuzzed answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from radcap import read_caption_rejects, read_captions
from radcap.core.settings import PacsSettings
from radcap.pacs.dicomweb import Pacs, StudyFound, parse_studies
from tests.conftest import missing, run_cli_here
from tests.dicom_factory import FAKE_PATIENT, make_dicom
from tests.pacs_fixtures import PASSWORD, USER, FaultyProxy, Orthanc, free_port, pacs_env

pytestmark = pytest.mark.realdata


@pytest.fixture
def orthanc(tmp_path):
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


def export(shared_data: Path, into: Path) -> dict[str, list[Path]]:
    """A PACS-like export from real chest X-ray pixels with fake patient attributes: study A frontal + lateral,
    studies B and C frontal only."""
    files = sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[:4]
    pixels = [np.asarray(Image.open(f).convert("L").resize((96, 96))) for f in files]
    into.mkdir(parents=True, exist_ok=True)
    studies = {"A": "1.2.826.0.1.3680043.10.1.1", "B": "1.2.826.0.1.3680043.10.1.2", "C": "1.2.826.0.1.3680043.10.1.3"}
    made = {
        "A": [
            make_dicom(into / "a-pa.dcm", pixels[0], study_uid=studies["A"], view_position="PA"),
            make_dicom(into / "a-ll.dcm", pixels[1], study_uid=studies["A"], view_position="LL"),
        ],
        "B": [make_dicom(into / "b-pa.dcm", pixels[2], study_uid=studies["B"], view_position="PA")],
        "C": [make_dicom(into / "c-ap.dcm", pixels[3], study_uid=studies["C"], view_position="AP")],
    }
    return {studies[k]: v for k, v in made.items()}


def caption(source: str, out: Path, model: Path, *extra: str, env: dict | None = None):
    done = run_cli_here(
        "--json", "caption", "--input", source, "--out", str(out), "--model", str(model), *extra,
        env={**pacs_env(), **(env or {})},
    )  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    return done, summary


def every_instance_once(out: Path, expected: set[str]) -> None:
    captions, rejects = read_captions(out), read_caption_rejects(out)
    paths = list(captions["source_path"]) + list(rejects["source_path"])
    assert len(paths) == len(set(paths)) and {p.split("/")[-1].removesuffix(".dcm") for p in paths} == expected


def sop_uids(files: list[Path]) -> set[str]:
    from pydicom import dcmread

    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def dciodvfy_errors(path: Path) -> list[str]:
    binary = shutil.which("dciodvfy")
    if binary is None:
        missing("dciodvfy (Debian package dicom3tools)")
    done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def text_values(ds) -> list[str]:
    found = []
    for item in getattr(ds, "ContentSequence", []):
        if getattr(item, "ValueType", "") == "TEXT":
            found.append(str(item.TextValue))
        found += text_values(item)
    return found


@pytest.mark.slow
def test_caption_a_pacs_file_srs_back_and_a_rerun_stores_nothing_new(
    orthanc, shared_data, tmp_path, tiny_captioner, prefect_api
):
    from pydicom import dcmread

    studies = export(shared_data, tmp_path / "export")
    orthanc.upload([f for files in studies.values() for f in files])
    out = tmp_path / "out"
    done, summary = caption(orthanc.dicomweb, out, tiny_captioner, "--sr", "--fhir", "--store", orthanc.dicomweb)
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary["captioned"] == 4 and summary["sr_written"] == 3 and summary["sr_stored"] == 3
    every_instance_once(out, set().union(*(sop_uids(f) for f in studies.values())))
    captions = read_captions(out).groupby("study_id")["caption"].first()

    local = {str(dcmread(p).SOPInstanceUID): p for p in (out / "sr").rglob("*.dcm")}
    assert len(local) == 3
    for study_uid, files in studies.items():
        in_pacs = orthanc.instances(study_uid, "SR")
        assert len(in_pacs) == 1  # one SR per study, in the patient's own study
        sr_uid = in_pacs[0]["00080018"]["Value"][0]
        sr = dcmread(local[sr_uid])
        assert sr.StudyInstanceUID == study_uid and sr.Modality == "SR"
        assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "PARTIAL"
        assert str(sr.PatientName) == FAKE_PATIENT["PatientName"]  # filed into the patient's study
        assert captions[study_uid] in text_values(sr)
        assert any("FLAGGED" in t or "Out-of-domain check" in t for t in text_values(sr))
        evidence = {
            str(item.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence
        }
        assert evidence == sop_uids(files)
        assert dciodvfy_errors(local[sr_uid]) == []

    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    lines = (out / "fhir" / "DiagnosticReport.ndjson").read_text().splitlines()
    reports = [DiagnosticReport.model_validate_json(line) for line in lines]
    assert len(reports) == 3 and {r.status for r in reports} == {"preliminary"}
    assert {r.imagingStudy[0].identifier.value for r in reports} == {f"urn:oid:{uid}" for uid in studies}
    assert {r.conclusion for r in reports} == set(captions)

    # No patient attribute anywhere but in the SR files.
    for path in out.rglob("*"):
        if path.is_file() and "sr" not in path.relative_to(out).parts:
            blob = path.read_bytes()
            assert all(v.encode() not in blob for v in FAKE_PATIENT.values()), path
    assert all(v not in done.stdout + done.stderr for v in FAKE_PATIENT.values())
    # The PACS password is in no output and no log line.
    logs = list(Path(os.environ["RADCAP_WORKSPACE"]).rglob("*.log"))
    assert all(PASSWORD.encode() not in p.read_bytes() for p in [*out.rglob("*"), *logs] if p.is_file())
    assert PASSWORD not in done.stdout + done.stderr

    # Again: nothing new captioned, written or stored.
    again, summary = caption(orthanc.dicomweb, out, tiny_captioner, "--sr", "--fhir", "--store", orthanc.dicomweb)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary["studies_found"] == 0 and summary["sr_stored"] == 0 and summary["captioned"] == 0
    assert len(orthanc.instances(modality="SR")) == 3
    # Everything radcap knew of its reports lost (the SR files, what was stored, the watermark): the same SRs
    # are made again with the same UIDs, so storing them again replaces them in the PACS, never adds.
    shutil.rmtree(out / "sr")
    shutil.rmtree(out / ".dicomweb")
    again, summary = caption(orthanc.dicomweb, out, tiny_captioner, "--sr", "--store", orthanc.dicomweb)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary["captioned"] == 0 and summary["sr_written"] == 3 and summary["sr_stored"] == 3
    assert sorted(i["00080018"]["Value"][0] for i in orthanc.instances(modality="SR")) == sorted(local)

    # A lateral arrives for study B: B is captioned again from both views, its new SR names the old one.
    b_uid = next(uid for uid, files in studies.items() if len(files) == 1)
    old_sr = orthanc.instances(b_uid, "SR")[0]["00080018"]["Value"][0]
    lateral = make_dicom(tmp_path / "b-ll.dcm", np.full((96, 96), 90, np.uint8), study_uid=b_uid, view_position="LL")
    orthanc.upload([lateral])
    third, summary = caption(orthanc.dicomweb, out, tiny_captioner, "--sr", "--fhir", "--store", orthanc.dicomweb)
    assert third.returncode == 0, third.stderr[-3000:]
    assert summary["studies_found"] == 1 and summary["captioned"] == 2 and summary["sr_stored"] == 1
    new = [i["00080018"]["Value"][0] for i in orthanc.instances(b_uid, "SR")]
    assert len(new) == 2 and old_sr in new
    newest = dcmread(
        next(p for p in (out / "sr").rglob("*.dcm") if str(dcmread(p).SOPInstanceUID) in set(new) - {old_sr})
    )
    assert (
        newest.PredecessorDocumentsSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        == old_sr
    )
    assert len((out / "fhir" / "DiagnosticReport.ndjson").read_text().splitlines()) == 3  # newest per study


def test_a_pacs_that_is_down_is_one_line(tmp_path, tiny_captioner, prefect_api):
    done, _ = caption(f"dicomweb:http://127.0.0.1:{free_port()}/dicom-web", tmp_path / "out", tiny_captioner,
                      env={"RADCAP_PACS__RETRIES": "1", "RADCAP_PACS__BACKOFF_SECONDS": "0.05"})  # fmt: skip
    assert done.returncode == 2 and "cannot be reached" in done.stderr and "Traceback" not in done.stderr
    wrong = run_cli_here("caption", "--input", "dicomweb:ftp://x", "--out", str(tmp_path / "o"), "--model", "m")
    assert wrong.returncode == 2 and "not a DICOMweb address" in wrong.stderr


@pytest.mark.slow
def test_faults_are_retried_or_left_pending_and_the_next_run_finishes(
    orthanc, shared_data, tmp_path, tiny_captioner, prefect_api
):
    studies = export(shared_data, tmp_path / "export")
    orthanc.upload([f for files in studies.values() for f in files])
    stubborn = sorted(studies)[0]  # its WADO-RS answer never ends, or is cut, or mislabelled
    faults = {"n": 0, "healthy": False}

    def fault(number: int, method: str, path: str):
        if faults["healthy"]:
            return None
        if number <= 2:
            return "503"  # the first two requests: retried
        if number == 3:
            return "timeout"  # no answer within the timeout: retried
        if "/studies/" in path and path.rstrip("/").endswith(stubborn):
            faults["n"] += 1
            return ["endless", "truncate", "content-type", "close"][(faults["n"] - 1) % 4]
        return None

    proxy = FaultyProxy(orthanc.url, fault)
    out = tmp_path / "out"
    env = {
        "RADCAP_PACS__RETRIES": "3",
        "RADCAP_PACS__BACKOFF_SECONDS": "0.05",
        "RADCAP_PACS__MAX_RESPONSE_MB": "1",
        "RADCAP_PACS__RESPONSE_SECONDS": "3",
        "RADCAP_PACS__TIMEOUT_SECONDS": "3",
    }
    try:
        done, summary = caption(proxy.dicomweb, out, tiny_captioner, "--sr", env=env)
        assert done.returncode == 1, done.stderr[-3000:]  # finished, one study pending
        assert summary["studies_pending"] == 1 and summary["captioned"] == 2  # the other two, one image each
        assert stubborn not in set(read_captions(out)["study_id"])
        assert faults["n"] >= 3  # tried, cut, tried again
        # The PACS answers well again: the pending study is captioned, nothing twice.
        faults["healthy"] = True
        done, summary = caption(proxy.dicomweb, out, tiny_captioner, "--sr", env=env)
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary["studies_found"] == 1 and summary["studies_pending"] == 0
    every_instance_once(out, set().union(*(sop_uids(f) for f in studies.values())))
    assert len(list((out / "sr").rglob("*.dcm"))) == 3


@pytest.mark.slow
def test_orthanc_killed_mid_run_then_restarted_resumes_exactly_once(
    orthanc, shared_data, tmp_path, tiny_captioner, prefect_api
):
    studies = export(shared_data, tmp_path / "export")
    orthanc.upload([f for files in studies.values() for f in files])
    killed = {"done": False}
    second = sorted(studies)[1]

    def fault(number: int, method: str, path: str):
        if not killed["done"] and path.rstrip("/").endswith(second) and "/studies/" in path:
            killed["done"] = True
            orthanc.kill()  # the PACS dies while the run fetches the second study
        return None

    proxy = FaultyProxy(orthanc.url, fault)
    out = tmp_path / "out"
    env = {"RADCAP_PACS__STUDIES_PER_CHUNK": "1", "RADCAP_PACS__RETRIES": "1", "RADCAP_PACS__BACKOFF_SECONDS": "0.05"}
    try:
        done, _ = caption(proxy.dicomweb, out, tiny_captioner, "--sr", "--store", proxy.dicomweb, env=env)
        assert killed["done"] and done.returncode == 2 and "cannot be reached" in done.stderr
        assert "Traceback" not in done.stderr
        first = set(read_captions(out)["study_id"])
        assert first == {sorted(studies)[0]}  # the first chunk was committed, and kept
        orthanc.start()  # same storage
        done, summary = caption(proxy.dicomweb, out, tiny_captioner, "--sr", "--store", proxy.dicomweb, env=env)
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr[-3000:]
    # The two not done, and the first again if its SR could not be stored before the PACS died (the next chunk
    # is fetched while one is committed); the first is not captioned again.
    assert summary["studies_found"] in (2, 3) and summary["captioned"] == 2
    every_instance_once(out, set().union(*(sop_uids(f) for f in studies.values())))
    assert {uid: len(orthanc.instances(uid, "SR")) for uid in studies} == dict.fromkeys(studies, 1)


# -- fuzzing what a PACS returns ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
qido_item = st.dictionaries(
    st.sampled_from(["0020000D", "00201208", "00080061", "00080020", "garbage"]),
    st.fixed_dictionaries({"vr": st.text(max_size=3)}, optional={"Value": json_values}) | json_values,
    max_size=5,
)


@given(st.lists(qido_item, max_size=6) | json_values)
@settings(max_examples=300, deadline=None)
def test_any_qido_answer_parses_to_valid_studies_or_reasons(answer):
    from radcap.core.uids import UID

    studies, problems = parse_studies(answer)
    for study in studies:
        assert UID.match(study.uid) and len(study.uid) <= 64 and "/" not in study.uid
    if isinstance(answer, list):
        assert len(studies) + len(problems) == len(answer)


@pytest.fixture(scope="module")
def one_study_pacs(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("fuzz-orthanc")
    server = Orthanc(root / "orthanc").start()
    files = export(shared_data, root / "export")
    uid = next(u for u, f in files.items() if len(f) == 2)
    server.upload(files[uid])
    yield server, uid
    server.stop()


@given(data=st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_mangled_wado_answer_is_the_whole_study_or_pending_never_a_crash(one_study_pacs, tmp_path, data):
    server, uid = one_study_pacs
    cut = data.draw(st.floats(0, 1))
    flips = data.draw(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6))
    content_type = data.draw(st.sampled_from([None, "text/html", "multipart/related; boundary=nope"]))

    def mangle(body: bytes) -> bytes:
        body = bytearray(body[: max(0, int(len(body) * cut))] if cut < 1 else body)
        for where, value in flips:
            if body:
                body[int(where * (len(body) - 1))] = value
        return bytes(body)

    proxy = FaultyProxy(server.url, lambda n, m, p: ("mangle", mangle, content_type) if "/studies/" in p else None)
    spool = tmp_path / f"spool-{data.draw(st.integers(0, 10**9))}"
    try:
        pacs = Pacs(proxy.dicomweb, PacsSettings(username=USER, password=PASSWORD, retries=0, timeout_seconds=5))
        paths, problem = pacs.fetch_study(StudyFound(uid, 2, ("CR",)), spool)
    finally:
        proxy.close()
    if problem is None:
        assert len(paths) == 2 and all(p.is_relative_to(spool) for p in paths)
    else:
        assert paths == [] and isinstance(problem, str)
    assert all(p.is_relative_to(spool) for p in spool.rglob("*")) if spool.exists() else True


def test_the_bounded_session_cuts_an_endless_answer(tmp_path):
    proxy = FaultyProxy("http://127.0.0.1:9", lambda n, m, p: "endless-local")
    try:
        pacs = Pacs(proxy.dicomweb, PacsSettings(retries=0, max_response_mb=1, timeout_seconds=2))
        paths, problem = pacs.fetch_study(StudyFound("1.2.3", 1, ()), tmp_path)
    finally:
        proxy.close()
    assert paths == [] and "larger than 1 MB" in problem


def test_a_withheld_study_gets_no_report_and_a_png_study_none_either(tmp_path):
    import pandas as pd

    from radcap.pacs.reports import ReportWriter

    (tmp_path / "in").mkdir()
    source = make_dicom(
        tmp_path / "in" / "x.dcm", np.zeros((32, 32), np.uint8), study_uid="1.2.3.4", view_position="PA"
    )
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "in" / "p.png")
    row = {
        "image_id": "i", "view": "frontal", "sha256": "0" * 64, "model": "m", "model_version": "1",
        "encoder_version": "e", "captioned_at": pd.Timestamp("2026-01-01", tz="UTC"), "ood_score": 0.9,
    }  # fmt: skip
    captions = pd.DataFrame(
        [
            {**row, "study_id": "1.2.3.4", "source_path": source.name, "caption": None, "in_domain": False,
             "ood_reason": "unlike the training images"},
            {**row, "study_id": "abc", "source_path": "p.png", "caption": "clear lungs.", "in_domain": True,
             "ood_reason": None},
        ]
    )  # fmt: skip
    counts = ReportWriter(tmp_path / "out", tmp_path / "in", sr=True, fhir=True).write(captions)
    assert counts.withheld == 1 and counts.not_dicom == 1 and counts.sr_written == counts.fhir_written == 0
    assert not counts.pending and not list((tmp_path / "out").rglob("*.dcm"))
