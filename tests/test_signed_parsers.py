"""The three signed-report parsers (HL7 v2, FHIR, DICOM SR): what they read, what they refuse and why, and
property tests that any mutation of a valid input is a report or a reason, never a crash or a leaked patient
value."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radcap.ingestion.signed.common import NotAReport, SignedReport, split_sections
from radcap.ingestion.signed.dicom_sr import read_sr_file
from radcap.ingestion.signed.fhir import read_fhir_file
from radcap.ingestion.signed.hl7 import read_hl7_file
from tests.dicom_factory import make_dicom
from tests.signed_reports import PATIENT_VALUES, fhir_report, hl7_message, signed_sr

UID = "1.2.826.0.1.3680043.8.498.1234567"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def hl7(text: str | bytes, name: str = "m.hl7") -> list[SignedReport | NotAReport]:
    data = text.encode() if isinstance(text, str) else text
    return [r for _, r in read_hl7_file(Path(name), data)]


def fhir(resource, name: str = "r.json") -> list[SignedReport | NotAReport]:
    data = resource if isinstance(resource, bytes) else json.dumps(resource).encode()
    return [r for _, r in read_fhir_file(Path(name), data)]


def no_patient_value(results) -> None:
    for result in results:
        if isinstance(result, NotAReport):
            text = str(result)
        else:  # the patient id is kept in memory for pairing, which hashes it; nothing else may carry a value
            text = json.dumps({k: v for k, v in vars(result).items() if k != "patient"}, default=str)
        for value in PATIENT_VALUES:
            assert value not in text, (value, text)


# -- HL7 ----------------------------------------------------------------------------------------------------------


def test_hl7_sections_status_study_accession_and_time():
    (report,) = hl7(hl7_message(UID, "The lungs are clear.", "No acute disease.", accession="ACC-7"))
    assert isinstance(report, SignedReport)
    assert (report.findings, report.impression, report.status) == ("The lungs are clear.", "No acute disease.", "final")
    assert (report.study_uid, report.accession, report.issued) == (UID, "ACC-7", "2026-12-01T09:30:00+00:00")
    (amended,) = hl7(hl7_message(UID, "x", "Corrected.", status="C"))
    assert amended.status == "amended"


def test_hl7_free_text_is_split_by_headings_and_unescaped():
    text = r"INDICATION: cough.\.br\FINDINGS: Heart size normal \T\ lungs clear.\.br\IMPRESSION: No acute disease."
    (report,) = hl7(hl7_message(UID, None, None, free_text=text))
    assert report.findings == "Heart size normal & lungs clear."
    assert report.impression == "No acute disease."


def test_hl7_mllp_batches_and_lf_endings_give_one_report_per_message():
    one = hl7_message(UID, "a.", "First.", control_id="A")
    two = hl7_message(UID + ".2", "b.", "Second.", control_id="B")
    framed = f"\x0b{one}\x1c\r\x0b{two}\x1c\r"
    assert [r.impression for r in hl7(framed)] == ["First.", "Second."]
    batch = "FHS|^~\\&\rBHS|^~\\&\r" + one + two + "BTS|2\rFTS|1\r"
    assert [r.item for r in hl7(batch.replace("\r", "\n"))] == ["A", "B"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (hl7_message(UID, "x", "Prelim.", status="P"), "status 'P' is not final or amended"),
        (hl7_message(UID, "x", "Gone.", status="X"), "status 'X'"),
        (hl7_message(UID, "x", "y.").split("\r", 1)[1], "no MSH segment"),
        (hl7_message(UID, "x", "y.").replace("MSH|^~\\&", "MSH|^^\\&"), "encoding characters"),
        (hl7_message(UID, "x", "y.").replace("ORU^R01", "ADT^A01"), "is not ORU^R01"),
        (hl7_message(UID, None, None), "no report text"),
        (hl7_message(UID, "x", "y.", sending_app="RADCAP"), "radcap's own draft"),
    ],
)
def test_hl7_refusals_name_the_reason(message, reason):
    (result,) = hl7(message)
    assert isinstance(result, NotAReport) and reason in str(result), result


def test_hl7_segment_order_encoding_and_size():
    segments = hl7_message(UID, "x", "y.").strip("\r").split("\r")
    obx_first = "\r".join([segments[0], segments[1], segments[4], segments[2], segments[3], segments[5]])
    assert "segment order" in str(hl7(obx_first)[0])
    assert hl7(hl7_message(UID, "Lungenödem beidseits.", "Stauung.").encode())[0].findings == "Lungenödem beidseits."
    latin = hl7_message(UID, "Lungenödem.", "y.").replace("|2.5.1", "|2.5.1|||||||8859/1").encode("latin-1")
    assert hl7(latin)[0].findings == "Lungenödem."
    assert "not UTF-8" in str(hl7(hl7_message(UID, "Lungenödem.", "y.").encode("latin-1"))[0])
    huge = hl7(hl7_message(UID, "x" * 10_000_000, "y."))
    assert isinstance(huge[0], NotAReport) and "characters long" in str(huge[0])


@FUZZ
@given(data=st.data())
def test_any_mutation_of_an_hl7_message_is_a_report_or_a_reason(data):
    message = hl7_message(UID, "Lungs clear.", "No acute disease.", accession="ACC-1")
    segments = message.strip("\r").split("\r")
    kind = data.draw(st.sampled_from(["bytes", "segments", "fields", "text"]))
    if kind == "bytes":
        raw = bytearray(message.encode())
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        mutated: str | bytes = bytes(raw)
    elif kind == "segments":
        mutated = "\r".join(data.draw(st.permutations(segments))[: data.draw(st.integers(0, len(segments)))])
    elif kind == "fields":
        row = data.draw(st.integers(0, len(segments) - 1))
        fields = segments[row].split("|")
        fields[data.draw(st.integers(0, len(fields) - 1))] = data.draw(st.text(max_size=40))
        segments[row] = "|".join(fields)
        mutated = "\r".join(segments)
    else:
        mutated = data.draw(st.text(max_size=300))
    results = hl7(mutated)
    assert results and all(isinstance(r, SignedReport | NotAReport) for r in results)
    no_patient_value(results)


# -- FHIR ---------------------------------------------------------------------------------------------------------


def test_fhir_conclusion_presented_form_study_and_bundle(tmp_path):
    (report,) = fhir(fhir_report(UID, "No acute disease.", "Lungs clear.", accession="ACC-9"))
    assert (report.findings, report.impression, report.status) == ("Lungs clear.", "No acute disease.", "final")
    assert (report.study_uid, report.accession) == (UID, "ACC-9")
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": fhir_report(UID, "A.")}] * 2}
    assert [r.impression for r in fhir(bundle)] == ["A.", "A."]
    lines = (json.dumps(fhir_report(UID, "B.", status="amended")) + "\n\nnot json\n").encode()
    first, second = [r for _, r in read_fhir_file(Path("x.ndjson"), lines)]
    assert first.status == "amended" and "not JSON" in str(second)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"status": "preliminary"}, "status 'preliminary'"),
        ({"status": "cancelled"}, "status 'cancelled'"),
        ({"status": 3}, "not a valid FHIR R4 DiagnosticReport: status"),
        ({"conclusion": {"a": 1}}, "conclusion"),
        ({"code": None}, "code"),
        ({"resourceType": "Observation"}, "is not DiagnosticReport"),
        ({"conclusion": None, "presentedForm": [{"contentType": "text/plain", "data": "@@@"}]}, "not base64"),
        ({"conclusion": None}, "no report text"),
        ({"performer": [{"display": "radcap captioner version 3"}]}, "radcap's own draft"),
    ],
)
def test_fhir_refusals_name_the_reason(change, reason):
    resource = {**fhir_report(UID, "Impression."), **change}
    resource = {k: v for k, v in resource.items() if v is not None}
    (result,) = fhir(resource)
    assert isinstance(result, NotAReport) and reason in str(result), result
    no_patient_value([result])


def test_radcaps_own_fhir_draft_is_recognized():
    from radcap.pacs.reports import diagnostic_report

    first = pd.Series({"model": "m", "model_version": "1", "encoder_version": "e", "caption": "no acute disease."})
    first["captioned_at"], first["in_domain"], first["ood_score"] = pd.Timestamp("2026-12-01", tz="UTC"), True, 0.1
    draft = {**diagnostic_report(UID, UID + ".9", first), "status": "final"}  # even if a system marked it final
    (result,) = fhir(draft)
    assert isinstance(result, NotAReport) and "radcap's own draft" in str(result)


def _json_values():
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )


@FUZZ
@given(data=st.data())
def test_any_mutation_of_a_fhir_report_is_a_report_or_a_reason(data):
    resource = fhir_report(UID, "No acute disease.", "Lungs clear.", accession="ACC-1")
    mutated = copy.deepcopy(resource)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from([*mutated.keys(), "presentedForm", "contained", "imagingStudy", "meta"]))
        if data.draw(st.booleans()):
            mutated.pop(key, None)
        else:
            mutated[key] = data.draw(_json_values())
    raw = json.dumps(mutated).encode()
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(raw)))
        raw = raw[:cut] + data.draw(st.binary(max_size=8)) + raw[cut + 1 :]
    results = fhir(raw)
    assert len(results) == 1 and isinstance(results[0], SignedReport | NotAReport)
    no_patient_value(results)


# -- DICOM SR -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("image")
    return make_dicom(folder / "i.dcm", np.full((32, 32), 90, np.uint8), study_uid=UID, view_position="PA")


def test_a_verified_sr_is_read_and_an_unverified_one_refused(image, tmp_path):
    path = signed_sr(tmp_path / "s.dcm", image, "Lungs clear.", "No acute disease.")
    report = read_sr_file(path, path.read_bytes())
    assert isinstance(report, SignedReport)
    assert (report.findings, report.impression, report.study_uid, report.status) == (
        "Lungs clear.",
        "No acute disease.",
        UID,
        "final",
    )
    draft = signed_sr(tmp_path / "d.dcm", image, "x", "y", verified=False)
    assert "UNVERIFIED" in str(read_sr_file(draft, draft.read_bytes()))
    empty = signed_sr(tmp_path / "e.dcm", image, None, None)
    assert "no report text" in str(read_sr_file(empty, empty.read_bytes()))
    assert "Structured Report" in str(read_sr_file(image, image.read_bytes()))
    assert "unreadable" in str(read_sr_file(tmp_path / "n", b"not dicom at all"))


def test_radcaps_own_sr_and_a_cyclic_tree_are_refused(image, tmp_path):
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    from radcap.pacs.reports import build_sr

    first = pd.Series({"model": "m", "model_version": "1", "encoder_version": "e", "caption": "no acute disease."})
    first["in_domain"], first["ood_score"] = True, 0.1
    ours = build_sr([dcmread(image)], first, UID + ".5", UID + ".6", [])
    ours.VerificationFlag, ours.CompletionFlag = "VERIFIED", "COMPLETE"  # even when a system flipped its flags
    ours.save_as(tmp_path / "ours.dcm", enforce_file_format=True)
    assert "radcap's own draft" in str(read_sr_file(tmp_path / "ours.dcm", (tmp_path / "ours.dcm").read_bytes()))
    path = signed_sr(tmp_path / "c.dcm", image, "Lungs clear.", "Fine.")
    ds = dcmread(path)
    loop = Dataset()
    loop.RelationshipType, loop.ReferencedContentItemIdentifier = "CONTAINS", [1, 3]
    # root (1): observer type (1, 1), observer name (1, 2), Findings (1, 3) > Finding (1, 3, 1) > the loop
    ds.ContentSequence[2].ContentSequence[0].ContentSequence = [loop]
    ds.save_as(tmp_path / "c.dcm")
    assert "cyclic" in str(read_sr_file(tmp_path / "c.dcm", (tmp_path / "c.dcm").read_bytes()))


@pytest.fixture(scope="module")
def sr_bytes(image, tmp_path_factory) -> bytes:
    return signed_sr(tmp_path_factory.mktemp("sr") / "s.dcm", image, "Lungs clear.", "No acute disease.").read_bytes()


@FUZZ
@given(data=st.data())
def test_any_mutation_of_an_sr_is_a_report_or_a_reason(sr_bytes, data):
    raw = bytearray(sr_bytes)
    for _ in range(data.draw(st.integers(1, 12))):
        at = data.draw(st.integers(132, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            raw = raw[:at]
            if len(raw) <= 133:
                break
    result = read_sr_file(Path("s.dcm"), bytes(raw))
    assert isinstance(result, SignedReport | NotAReport)
    no_patient_value([result])


def test_split_sections():
    assert split_sections("Heart normal.") == ("Heart normal.", None)
    assert split_sections("COMPARISON: none. FINDINGS: Clear. CONCLUSION: Normal.") == ("Clear.", "Normal.")
    assert split_sections("  ") == (None, None)


def test_base64_helper_roundtrip():
    assert base64.b64decode(fhir_report(UID, "I.", "F.")["presentedForm"][0]["data"]).startswith(b"FINDINGS: F.")


# -- a PACS's answers ---------------------------------------------------------------------------------------------


class _Client:
    def __init__(self, answer):
        self.answer = answer

    def search_for_instances(self, **_):
        return self.answer

    def search_for_studies(self, **_):
        return self.answer

    def retrieve_instance(self, *uids):
        raise ValueError("no body")


class _Pacs:
    url = "http://pacs"

    def __init__(self, answer):
        self.client = _Client(answer)

    def fetch_study(self, study, into):
        return [], "not fetched"


@FUZZ
@given(answer=_json_values())
def test_any_qido_answer_for_srs_or_studies_is_inputs_or_reasons(answer, tmp_path):
    from radcap.core.pseudonyms import Pseudonyms
    from radcap.pacs.dicomweb import PacsError
    from radcap.pacs.studies import PacsStudyIndex, structured_reports

    if not isinstance(answer, list):  # the whole answer unusable: one error naming it, before any input
        with pytest.raises(PacsError, match="not a list"):
            list(structured_reports(_Pacs(answer)))  # type: ignore[arg-type]
    for source, data in structured_reports(_Pacs(answer)) if isinstance(answer, list) else []:  # type: ignore[arg-type]
        assert isinstance(source, str) and isinstance(data, bytes | PacsError)
    index = PacsStudyIndex(_Pacs(answer), tmp_path / "cache", Pseudonyms(tmp_path))  # type: ignore[arg-type]
    assert index.find(UID, None, "ACC-1") is None  # nothing fetched: the report stays pending


def test_pseudonyms_are_keyed_and_a_deployment_key_makes_them_the_same_everywhere(tmp_path):
    from radcap.core.pseudonyms import Pseudonyms

    one, two = Pseudonyms(tmp_path / "a"), Pseudonyms(tmp_path / "b")
    assert one("patient", "MRN-1") == Pseudonyms(tmp_path / "a")("patient", "MRN-1")  # the folder keeps its key
    assert one("patient", "MRN-1") != two("patient", "MRN-1")  # another folder, another key
    keyed = [Pseudonyms(tmp_path / d, "hospital-key")("patient", "MRN-1") for d in ("c", "d")]
    assert keyed[0] == keyed[1] != one("patient", "MRN-1") and "MRN" not in keyed[0]
    assert one("patient", "MRN-1") != one("accession", "MRN-1") and one("patient", None) is None
    assert not (tmp_path / "c").exists()  # a deployment key writes no key file


def test_hl7_fields_split_on_the_messages_own_repetition_character():
    """A message may declare other encoding characters (MSH-2): '#' here repeats a field, not '~'."""
    message = hl7_message(UID, "Lungs clear.", "No acute disease.").replace("MSH|^~\\&", "MSH|^#\\&")
    message = message.replace(f"ZDS|{UID}^RIS", f"ZDS|{UID}#1.2.3^RIS")
    (report,) = hl7(message)
    assert report.study_uid == UID and report.impression == "No acute disease."
