"""DICOM Structured Reports (pydicom), from files or from a PACS (QIDO-RS for Modality SR, then WADO-RS).

- status: VerificationFlag VERIFIED and CompletionFlag COMPLETE -> final (amended when it names a predecessor
  document); UNVERIFIED or PARTIAL is a draft, not a signed report;
- text: TEXT items under a Findings container (DCM 121070) or coded Finding (121071) are the findings; under
  Impressions (121072) / Impression (121073) or a Conclusion, the impression; other TEXT items of the report
  body (not algorithm identification or comments) are split by their headings;
- the study is the SR's own Study Instance UID (an SR is filed into the study it reports on); accession from
  AccessionNumber; signed at: the verifying observer's time, else ContentDate/ContentTime; patient: PatientID
  (for the split group only; never written).

radcap's own drafts are Manufacturer 'radcap' or name a device observer 'radcap'. The content tree is walked
depth-first to at most MAX_DEPTH levels; by-reference relationships are not followed, and one that points at
its own ancestor (a cyclic tree) rejects the SR.
"""

from __future__ import annotations

import io
from pathlib import Path

from radcap.ingestion.signed.common import (
    AMENDED,
    FINAL,
    NotAReport,
    SignedReport,
    checked_text,
    parse_safely,
    split_sections,
)

SR_CLASSES = "1.2.840.10008.5.1.4.1.1.88."
MAX_DEPTH, MAX_ITEMS = 64, 100_000
FINDINGS = {"121070", "121071"}
IMPRESSION = {"121072", "121073", "121076", "121077"}  # Impressions, Impression, Conclusions, Conclusion
# algorithm identification, comments, observer identification (TID 1002/1004): not what the radiologist wrote
NOT_REPORT_TEXT = {"111001", "111002", "111003", "121106", "113012", "121013", "121014", "121015", "121016"}
PATIENT_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientAddress")


def read_sr_file(path: Path, data: bytes) -> SignedReport | NotAReport:
    from pydicom import dcmread

    def parse() -> SignedReport:
        return parse_sr(dcmread(io.BytesIO(data)), str(path))

    def secrets() -> list[str]:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=list(PATIENT_ATTRIBUTES))
        return [str(ds.get(name, "")) for name in PATIENT_ATTRIBUTES]

    try:
        return parse_safely(parse, "DICOM SR", secrets)
    except NotAReport as exc:
        return exc


def _code(item) -> str:
    try:
        return str(item.ConceptNameCodeSequence[0].CodeValue)
    except (AttributeError, IndexError, KeyError):
        return ""


def parse_sr(ds, source: str) -> SignedReport:
    sop_class = str(ds.get("SOPClassUID", ""))
    if not sop_class.startswith(SR_CLASSES):
        raise NotAReport(f"SOP class {sop_class[:64] or '(none)'} is not a Structured Report")
    if str(ds.get("Manufacturer", "")).strip().lower() == "radcap":
        raise NotAReport("radcap's own draft (Manufacturer radcap): never training data")
    verified = str(ds.get("VerificationFlag", "")).upper() == "VERIFIED"
    complete = str(ds.get("CompletionFlag", "")).upper() == "COMPLETE"
    if not (verified and complete):
        flags = f"{ds.get('VerificationFlag', '(no flag)')}, {ds.get('CompletionFlag', '(no flag)')}"
        raise NotAReport(f"SR is {flags}: not a signed report (needs VERIFIED and COMPLETE)")
    sections: dict[str, list[str]] = {"findings": [], "impression": [], "text": []}
    _walk(ds, (1,), None, sections, [0])  # the root is item 1, as Referenced Content Item Identifiers count
    free_findings, free_impression = split_sections("\n".join(sections["text"]))
    findings = checked_text("\n".join(sections["findings"]) or free_findings, "findings")
    impression = checked_text("\n".join(sections["impression"]) or free_impression, "impression")
    if not (findings or impression):
        raise NotAReport("SR has no report text (no TEXT content item)")
    study_uid = str(ds.get("StudyInstanceUID", "")).strip() or None
    return SignedReport(
        source=source,
        item=str(ds.get("SOPInstanceUID", "")).strip()[:64] or None,
        fmt="dicom-sr",
        status=AMENDED if "PredecessorDocumentsSequence" in ds else FINAL,
        study_uid=study_uid,
        accession=str(ds.get("AccessionNumber", "")).strip() or None,
        patient=str(ds.get("PatientID", "")).strip() or None,
        findings=findings,
        impression=impression,
        issued=_signed_at(ds),
    )


def _walk(node, position: tuple[int, ...], section: str | None, sections: dict, count: list[int]) -> None:
    if len(position) > MAX_DEPTH:
        raise NotAReport(f"SR content tree deeper than {MAX_DEPTH} levels")
    for number, item in enumerate(node.get("ContentSequence", []) or [], start=1):
        count[0] += 1
        if count[0] > MAX_ITEMS:
            raise NotAReport(f"SR content tree has more than {MAX_ITEMS:,} items")
        here = (*position, number)
        if "ReferencedContentItemIdentifier" in item:
            target = tuple(int(v) for v in item.ReferencedContentItemIdentifier)
            if len(target) <= len(here) and here[: len(target)] == target:
                raise NotAReport(f"cyclic SR content tree: item {here} refers to its ancestor {target}")
            continue  # by-reference: its content is somewhere else in the tree, read there
        if _is_radcap_device(item):
            raise NotAReport("radcap's own draft (device observer radcap): never training data")
        code = _code(item)
        here_section = "findings" if code in FINDINGS else "impression" if code in IMPRESSION else section
        if str(item.get("ValueType", "")).upper() == "TEXT" and code not in NOT_REPORT_TEXT:
            text = checked_text(item.get("TextValue"), "SR TEXT item")
            if text:
                sections[here_section or "text"].append(text)
        _walk(item, here, here_section, sections, count)


def _is_radcap_device(item) -> bool:
    # DCM 121013 Device Observer Name (TID 1004): radcap names itself there
    return _code(item) == "121013" and str(item.get("TextValue", "")).strip().lower() == "radcap"


def _signed_at(ds) -> str | None:
    from pydicom.valuerep import DT

    for observer in ds.get("VerifyingObserverSequence", []) or []:
        value = str(observer.get("VerificationDateTime", "")).strip()
        if value:
            try:
                return DT(value).isoformat()
            except ValueError:
                break
    date, time = str(ds.get("ContentDate", "")).strip(), str(ds.get("ContentTime", "")).strip()
    if len(date) == 8 and date.isdigit():
        try:
            return DT(date + (time.split(".")[0] if time[:6].isdigit() else "")).isoformat()
        except ValueError:
            return None
    return None
