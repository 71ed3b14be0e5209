"""FHIR R4 DiagnosticReport resources (fhir.resources, R4B models): NDJSON files (one resource per line) and JSON
files holding a resource or a Bundle of them. Each resource is validated before anything is read from it.

- status: final -> final; amended, corrected, appended -> amended; anything else is not a signed report;
- text: `conclusion` is the impression; `presentedForm` attachments of type text/plain (inline `data`, base64)
  are split by their headings; contained Observations coded LOINC 18782-3 / 19005-8 (valueString) are the
  findings / impression;
- Study Instance UID: an `imagingStudy` reference's identifier (urn:dicom:uid, 'urn:oid:' prefix dropped) or a
  contained ImagingStudy's; accession number: an identifier of type ACSN (v2-0203) on the report or its
  contained ImagingStudy; signed at: `issued`; patient: `subject` (for the split group only; never written).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from pathlib import Path

from radcap.ingestion.signed.common import (
    AMENDED,
    DRAFT_TAG,
    FINAL,
    MAX_TEXT,
    NotAReport,
    SignedReport,
    checked_text,
    looks_like_radcap_draft,
    parse_safely,
    require_training_status,
    split_sections,
)

STATUS = {"final": FINAL, "amended": AMENDED, "corrected": AMENDED, "appended": AMENDED}
FINDINGS_CODE, IMPRESSION_CODE = "18782-3", "19005-8"


def read_fhir_file(path: Path, data: bytes) -> Iterator[tuple[str, SignedReport | NotAReport]]:
    """(source, report or the reason it is not one) for each DiagnosticReport in the file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        yield str(path), NotAReport("not UTF-8 text (FHIR JSON is UTF-8)")
        return
    if path.suffix.lower() == ".ndjson":
        lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if not lines:
            yield str(path), NotAReport("empty NDJSON file")
        for number, line in lines:
            yield from _resources(f"{path}:{number}", line)
    else:
        yield from _resources(str(path), text)


def _resources(source: str, text: str) -> Iterator[tuple[str, SignedReport | NotAReport]]:
    try:
        resource = json.loads(text)
    except (ValueError, RecursionError) as exc:
        yield source, NotAReport(f"not JSON ({type(exc).__name__}: {str(exc)[:80]})")
        return
    if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
        entries = resource.get("entry")
        if not isinstance(entries, list) or not entries:
            yield source, NotAReport("a Bundle without entries")
            return
        for number, entry in enumerate(entries):
            where = f"{source}#entry{number}"
            inner = entry.get("resource") if isinstance(entry, dict) else None
            yield where, _one(where, inner)
    else:
        yield source, _one(source, resource)


def _one(source: str, resource: object) -> SignedReport | NotAReport:
    try:
        return parse_safely(lambda: parse_resource(resource, source), "DiagnosticReport", lambda: _subject(resource))
    except NotAReport as exc:
        return exc


def _subject(resource: object) -> list[str]:
    if not isinstance(resource, dict):
        return []
    patients = [
        c for c in resource.get("contained") or [] if isinstance(c, dict) and c.get("resourceType") == "Patient"
    ]
    return [json.dumps(resource.get("subject")), *(json.dumps(p) for p in patients)]


def parse_resource(resource: object, source: str) -> SignedReport:
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from pydantic import ValidationError

    if not isinstance(resource, dict):
        raise NotAReport(f"a JSON {type(resource).__name__}, not a FHIR resource")
    kind = resource.get("resourceType")
    if kind != "DiagnosticReport":
        raise NotAReport(f"resourceType '{str(kind)[:40]}' is not DiagnosticReport")
    raw_status = resource.get("status")
    try:
        report = DiagnosticReport.model_validate(resource)
    except ValidationError as exc:
        error = exc.errors()[0]  # where and what, never the value (it may be a patient's)
        where = ".".join(str(p) for p in error["loc"])
        raise NotAReport(f"not a valid FHIR R4 DiagnosticReport: {where}: {error['msg']}") from None
    tags = [(t.system, t.code) for t in (report.meta.tag or [])] if report.meta else []
    performers = " ".join(p.display or "" for p in report.performer or [])
    narrative = report.text.div if report.text else None
    if DRAFT_TAG in tags or performers.lower().startswith("radcap") or looks_like_radcap_draft(performers, narrative):
        raise NotAReport("radcap's own draft (tagged or performed by radcap): never training data")
    status = require_training_status(STATUS.get(str(report.status), str(report.status)), raw_status)
    contained = [c.model_dump(mode="json", exclude_none=True) for c in report.contained or []]
    findings, impression = [], []
    for observation in (c for c in contained if c.get("resourceType") == "Observation"):
        codes = {c.get("code") for c in observation.get("code", {}).get("coding", [])}
        value = checked_text(observation.get("valueString"), "Observation.valueString")
        if value and FINDINGS_CODE in codes:
            findings.append(value)
        elif value and IMPRESSION_CODE in codes:
            impression.append(value)
    # the raw attachments: fhir.resources decodes base64 itself and makes an invalid one b"" without a word
    for attachment in resource.get("presentedForm") or []:
        text = _attachment_text(attachment)
        if text:
            free_findings, free_impression = split_sections(text)
            findings += [free_findings] if free_findings else []
            impression += [free_impression] if free_impression and not report.conclusion else []
    conclusion = checked_text(report.conclusion, "conclusion")
    impression = [conclusion] if conclusion else impression
    if not (findings or impression):
        raise NotAReport("no report text (no conclusion, text/plain presentedForm or findings Observation)")
    study_uid, accession = _study(report, contained)
    return SignedReport(
        source=source,
        item=(report.id or None),
        fmt="fhir",
        status=status,
        study_uid=study_uid,
        accession=accession,
        patient=_patient_key(report),
        findings=checked_text("\n".join(findings), "findings"),
        impression=checked_text("\n".join(impression), "impression"),
        issued=report.issued.isoformat() if report.issued else None,
    )


def _attachment_text(attachment: dict) -> str | None:
    """An attachment (as validated: a dict with string fields) as text, when it is inline text/plain."""
    content_type = str(attachment.get("contentType") or "").split(";")[0].strip().lower()
    data = attachment.get("data")
    if content_type != "text/plain" or not isinstance(data, str):
        return None  # a PDF or a URL: radcap reads inline plain text only
    if len(data) > 2 * MAX_TEXT:
        raise NotAReport(f"presentedForm is {len(data):,} characters of base64 (at most {2 * MAX_TEXT:,})")
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise NotAReport("presentedForm.data is not base64") from None
    try:
        return checked_text(decoded.decode("utf-8"), "presentedForm text")
    except UnicodeDecodeError:
        raise NotAReport("presentedForm text/plain is not UTF-8") from None


def _uid_of(identifier: dict | None) -> str | None:
    value = (identifier or {}).get("value")
    if not isinstance(value, str):
        return None
    return value.removeprefix("urn:oid:").strip() or None


def _is_accession(identifier: dict) -> bool:
    codings = (identifier.get("type") or {}).get("coding") or []
    return any(c.get("code") == "ACSN" for c in codings)


def _study(report, contained: list[dict]) -> tuple[str | None, str | None]:
    identifiers = [i.model_dump(mode="json", exclude_none=True) for i in report.identifier or []]
    study_uid = None
    for reference in report.imagingStudy or []:
        if reference.identifier is not None:
            study_uid = study_uid or _uid_of(reference.identifier.model_dump(mode="json", exclude_none=True))
    for study in (c for c in contained if c.get("resourceType") == "ImagingStudy"):
        for identifier in study.get("identifier", []):
            if identifier.get("system") == "urn:dicom:uid":
                study_uid = study_uid or _uid_of(identifier)
            identifiers.append(identifier)
    accession = next((i.get("value") for i in identifiers if _is_accession(i) and i.get("value")), None)
    return study_uid, accession


def _patient_key(report) -> str | None:
    subject = report.subject
    if subject is None:
        return None
    if subject.identifier is not None and subject.identifier.value:
        return f"{subject.identifier.system or ''}|{subject.identifier.value}"
    return subject.reference or None
