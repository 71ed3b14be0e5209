"""Signed reports as hospitals send them, made in tests: HL7 v2 ORU^R01, FHIR R4 DiagnosticReport, DICOM SR
(highdicom), each carrying fake patient attributes (which must never reach an output)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.dicom_factory import FAKE_PATIENT

PATIENT_VALUES = ("Zzfake", "FAKE-ID-9731", "19010101", "Qqprivate", "MRN-55821")


def hl7_message(
    study_uid: str | None,
    findings: str | None,
    impression: str | None,
    *,
    status: str = "F",
    accession: str = "",
    control_id: str = "MSG1",
    sending_app: str = "RIS",
    when: str = "20261201093000",
    free_text: str | None = None,
    patient: str = "MRN-55821",
) -> str:
    """An ORU^R01 with PID (fake patient), OBR (accession in OBR-18, status in OBR-25), ZDS (the study) and
    LOINC-coded TX observations."""
    obr = ["OBR", "1", "ORD1", "FIL1", "36643-5^XR Chest 2V^LN", "", "", when] + [""] * 11
    obr[18] = accession
    obr += [""] * 3 + [when, "", "", status]  # OBR-22 result time, OBR-25 result status
    segments = [
        f"MSH|^~\\&|{sending_app}|HOSP|RADCAP|HOSP|{when}||ORU^R01|{control_id}|P|2.5.1",
        f"PID|1||{patient}^^^HOSP^MR||Qqprivate^Jane||19010101|F",
        "|".join(obr),
    ]
    if study_uid:
        segments.append(f"ZDS|{study_uid}^RIS^Application^DICOM")
    n = 0
    for code, text in (("18782-3^Findings^LN", findings), ("19005-8^Impression^LN", impression)):
        if text:
            n += 1
            segments.append(f"OBX|{n}|TX|{code}|{n}|{text}||||||{status}")
    if free_text:
        n += 1
        segments.append(f"OBX|{n}|FT|&GDT^Report^L|{n}|{free_text}||||||{status}")
    return "\r".join(segments) + "\r"


def fhir_report(
    study_uid: str | None,
    impression: str | None,
    findings: str | None = None,
    *,
    status: str = "final",
    resource_id: str = "r1",
    issued: str = "2026-12-01T09:30:00+00:00",
    accession: str | None = None,
) -> dict:
    resource: dict = {
        "resourceType": "DiagnosticReport",
        "id": resource_id,
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
        "subject": {"reference": "Patient/MRN-55821", "display": "Qqprivate Jane"},
        "issued": issued,
    }
    if study_uid:
        resource["imagingStudy"] = [{"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}}]
    if accession:
        resource["identifier"] = [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "value": accession,
            }
        ]
    if impression:
        resource["conclusion"] = impression
    if findings:
        text = f"FINDINGS: {findings}\nIMPRESSION: {impression or ''}"
        resource["presentedForm"] = [{"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}]
    return resource


def write_ndjson(path: Path, resources: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")
    return path


def signed_sr(
    path: Path,
    image: Path,
    findings: str | None,
    impression: str | None,
    *,
    verified: bool = True,
    manufacturer: str = "Hospital RIS",
) -> Path:
    """A Comprehensive SR filed into `image`'s study, verified by a (fake) radiologist when `verified`."""
    import highdicom as hd
    from pydicom import dcmread
    from pydicom.sequence import Sequence
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    source = dcmread(image, stop_before_pixels=True)
    CC = hd.sr.CodedConcept
    items = []
    for container, concept, text in (
        (("121070", "Findings"), ("121071", "Finding"), findings),
        (("121072", "Impressions"), ("121073", "Impression"), impression),
    ):
        if text:
            box = hd.sr.ContainerContentItem(CC(container[0], "DCM", container[1]), relationship_type="CONTAINS")
            box.ContentSequence = Sequence([hd.sr.TextContentItem(CC(concept[0], "DCM", concept[1]), text, "CONTAINS")])
            items.append(box)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Qqprivate^Doctor"),
    )
    root = hd.sr.ContainerContentItem(CC("18748-4", "LN", "Diagnostic imaging study"), template_id="2000")
    root.ContentSequence = Sequence([*observer, *items])
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=verified,
        is_verified=verified,
        verifying_observer_name="Qqprivate^Doctor" if verified else None,
        verifying_organization="Hospital" if verified else None,
    )
    sr.save_as(path, enforce_file_format=True)
    return path


__all__ = ["FAKE_PATIENT", "PATIENT_VALUES", "fhir_report", "hl7_message", "signed_sr", "write_ndjson"]
