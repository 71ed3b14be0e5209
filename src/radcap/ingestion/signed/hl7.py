"""HL7 v2 ORU^R01 result messages (hl7apy): a file holds one message, several, or MLLP-framed batches.

Where each part of a radiology result is read (IHE Radiology's conventions, with the common variants):
- status: OBR-25 result status (F final, C corrected = amended; P, R, I, S, O not signed; X cancelled);
  when OBR-25 is empty, the text observations' OBX-11;
- accession number: OBR-18 (placer field 1, IHE), else OBR-3 (filler order number);
- Study Instance UID: ZDS-1, else an OBX whose identifier is DCM 110180 / 'Study Instance UID';
- text: OBX of type TX, FT or ST, in order; LOINC 18782-3 / 'Findings' and 19005-8 / 'Impression' (in OBX-3
  or the OBX-4 sub-id) name their section; other text is split by its headings ('IMPRESSION:');
- signed at: OBR-22, else OBR-7, else MSH-7; patient: PID-3 (for the split group only; never written).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path

from radcap.ingestion.signed.common import (
    AMENDED,
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

MLLP_START, MLLP_END = "\x0b", "\x1c"
BATCH_SEGMENTS = ("FHS", "BHS", "BTS", "FTS")
TEXT_TYPES = ("TX", "FT", "ST")
FINDINGS_CODE, IMPRESSION_CODE = "18782-3", "19005-8"  # LOINC
STUDY_UID_IDS = ("110180", "study instance uid", "studyinstanceuid")
RESULT_STATUS = {"F": FINAL, "C": AMENDED, "P": "preliminary", "R": "preliminary", "I": "registered"}
RESULT_STATUS |= {"S": "registered", "O": "registered", "X": "cancelled", "D": "deleted", "W": "wrong patient"}
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?")


def messages(text: str) -> Iterator[str]:
    """The messages of a file: MLLP frames and batch envelopes removed, one string per MSH, segments
    separated by CR (files saved with LF or CRLF endings too)."""
    text = text.replace(MLLP_START, "\r").replace(MLLP_END, "\r").replace("\r\n", "\r").replace("\n", "\r")
    current: list[str] = []
    for segment in text.split("\r"):
        if not segment.strip() or segment[:3] in BATCH_SEGMENTS:
            continue
        if segment.startswith("MSH") and current:
            yield "\r".join(current) + "\r"
            current = []
        current.append(segment)
    if current:
        yield "\r".join(current) + "\r"


def read_hl7_file(path: Path, data: bytes) -> Iterator[tuple[str, SignedReport | NotAReport]]:
    """(source, report or the reason it is not one) for each message of the file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # HL7's default character set is ASCII; MSH-18 may name Latin-1. Anything else cannot be read as text.
        if b"8859/1" not in data[:2000]:
            yield str(path), NotAReport("not UTF-8 text, and MSH-18 names no other character set (8859/1)")
            return
        text = data.decode("latin-1")
    found = list(messages(text))
    if not found:
        yield str(path), NotAReport("no HL7 segments in the file")
        return
    for number, message in enumerate(found, start=1):
        source = str(path) if len(found) == 1 else f"{path}#{number}"
        try:
            yield source, parse_safely(partial(parse_message, message, source), "HL7 message", partial(_pid, message))
        except NotAReport as exc:
            yield source, exc


def _pid(message: str) -> list[str]:
    """What a reason must never quote: the fields of every segment but the report's own (MSH, ORC, OBR, OBX, NTE,
    ZDS), so PID, PD1, PV1, NK1 and any segment whose name a damaged file garbled are all covered."""
    report = ("MSH", "ORC", "OBR", "OBX", "NTE", "ZDS")
    return [line[4:] for line in message.split("\r") if line[:3] not in report]


def _unescape(value: str, escape: str) -> str:
    """HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\.br\\ \\Xhh\\, highlighting) as the text they stand for."""
    if not escape or escape not in value:
        return value
    e = re.escape(escape)
    table = {"F": "|", "S": "^", "T": "&", "R": "~", "E": escape, ".br": "\n", "H": "", "N": ""}

    def sub(match: re.Match) -> str:
        code = match.group(1)
        if code in table:
            return table[code]
        if code.startswith("X") and re.fullmatch(r"X([0-9A-Fa-f]{2})+", code):
            return bytes.fromhex(code[1:]).decode("latin-1")
        return ""  # an escape radcap does not know (formatting: .sp, .in...): dropped, not shown as code

    return re.sub(f"{e}([^{e}]{{1,40}}){e}", sub, value)


def _fields(segment: str, separator: str) -> list[str]:
    """A segment's fields, numbered as HL7 numbers them (MSH-1 is the separator itself)."""
    parts = segment.split(separator)
    return [parts[0], separator, *parts[1:]] if parts[0] == "MSH" else parts


def _component(field: str, components: str, repetition: str) -> str:
    """The first component of the field's first repetition (with the message's own separators)."""
    return field.split(repetition, 1)[0].split(components)[0] if field else ""


def _section(identifier: str, sub_id: str, components: str) -> str:
    """findings, impression or text (to be split by its headings), from OBX-3 (code^name) and OBX-4."""
    code = identifier.split(components)
    code_id, names = code[0].strip(), " ".join([*code[1:2], sub_id]).lower()
    if code_id == FINDINGS_CODE or "finding" in names:
        return "findings"
    if code_id == IMPRESSION_CODE or "impression" in names or "conclusion" in names:
        return "impression"
    return "text"


def parse_message(message: str, source: str) -> SignedReport:
    from hl7apy.parser import parse_message as hl7apy_parse

    if not message.startswith("MSH"):
        raise NotAReport("no MSH segment: not an HL7 v2 message")
    if len(message) > 4 * MAX_TEXT:
        raise NotAReport(f"message is {len(message):,} characters long (at most {4 * MAX_TEXT:,})")
    separator = message[3]
    encoding = message[4:8].split(separator, 1)[0]
    if separator.isalnum() or len(encoding) < 4 or len(set(separator + encoding[:4])) != 5:
        raise NotAReport(f"MSH encoding characters '{message[3:8]}' are not five distinct separators")
    components, repetition, escape = encoding[0], encoding[1], encoding[2]
    # hl7apy parses and checks the structure (segment names, field syntax) ...
    hl7apy_parse(message, find_groups=False, force_validation=False)
    # ... and the clinical reading follows the fields as numbered in the standard.
    segments = [(raw[:3], _fields(raw, separator)) for raw in message.strip("\r").split("\r")]
    names = [name for name, _ in segments]
    msh = segments[0][1]
    message_type = (msh[9] if len(msh) > 9 else "").split(components)
    if message_type[:2] != ["ORU", "R01"]:
        raise NotAReport(f"message type '{(msh[9] if len(msh) > 9 else '')[:20]}' is not ORU^R01")
    if names.count("OBR") != 1:
        raise NotAReport(f"{names.count('OBR')} OBR segments (radcap reads one report per message)")
    obr_at = names.index("OBR")
    if "OBX" in names[:obr_at]:
        raise NotAReport("segment order: an OBX before the OBR it belongs to")
    if "PID" in names[obr_at:]:
        raise NotAReport("segment order: PID after the OBR")

    def field(fields: list[str], number: int) -> str:
        return fields[number] if len(fields) > number else ""

    obr = segments[obr_at][1]
    observations = [fields for name, fields in segments if name == "OBX"]
    texts = [o for o in observations if field(o, 2).upper() in TEXT_TYPES]
    authors = [field(msh, 3), field(obr, 32), *(field(o, 16) for o in observations)]
    if any("radcap" in author.lower() for author in authors):
        raise NotAReport("radcap's own draft (names radcap as its author): never training data")
    raw_status = field(obr, 25).strip().upper()[:1]
    if not raw_status:
        statuses = {field(o, 11).strip().upper()[:1] for o in texts} - {""}
        raw_status = "C" if "C" in statuses else (statuses.pop() if len(statuses) == 1 else "")
    status = require_training_status(RESULT_STATUS.get(raw_status, raw_status or "missing"), raw_status or "(none)")

    def unescaped(value: str) -> str:
        return _unescape(value.replace(repetition, "\n"), escape)

    sections: dict[str, list[str]] = {"findings": [], "impression": [], "text": []}
    for obx in texts:
        value = checked_text(unescaped(field(obx, 5)), "OBX-5 text") or ""
        name = _section(field(obx, 3), field(obx, 4), components)
        if value:
            sections[name].append(value)
    free_findings, free_impression = split_sections("\n".join(sections["text"]))
    findings = checked_text("\n".join(sections["findings"]) or free_findings, "findings")
    impression = checked_text("\n".join(sections["impression"]) or free_impression, "impression")
    if looks_like_radcap_draft(findings, impression):
        raise NotAReport("radcap's own draft (says so in its text): never training data")
    if not (findings or impression):
        raise NotAReport("no report text (no TX, FT or ST observation with text)")
    study_uid = None
    for name, fields in segments:
        if name == "ZDS" and _component(field(fields, 1), components, repetition):
            study_uid = _component(field(fields, 1), components, repetition)
        elif name == "OBX" and any(i in field(fields, 3).lower() for i in STUDY_UID_IDS) and field(fields, 5):
            study_uid = study_uid or _component(field(fields, 5), components, repetition)
    pid = next((fields for name, fields in segments if name == "PID"), [])
    accession = _component(field(obr, 18), components, repetition) or _component(field(obr, 3), components, repetition)
    return SignedReport(
        source=source,
        item=field(msh, 10)[:64] or None,
        fmt="hl7",
        status=status,
        study_uid=study_uid.strip() or None if study_uid else None,
        accession=accession.strip() or None,
        patient=_component(field(pid, 3), components, repetition).strip() or None,
        findings=findings,
        impression=impression,
        issued=hl7_time(field(obr, 22) or field(obr, 7) or field(msh, 7)),
    )


def hl7_time(value: str) -> str | None:
    """HL7 DTM (YYYY[MM[DD[HH[MM[SS]]]]][.S][+/-ZZZZ]) as ISO 8601 (UTC offset kept); None when not a time."""
    match = _DTM.match(value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second = (
        g or d for g, d in zip(match.groups(), ("", "01", "01", "00", "00", "00"))
    )
    offset = re.search(r"([+-])(\d{2})(\d{2})$", value.strip())
    zone = f"{offset.group(1)}{offset.group(2)}:{offset.group(3)}" if offset else "+00:00"
    iso = f"{year}-{month}-{day}T{hour}:{minute}:{second}{zone}"
    try:
        datetime.fromisoformat(iso)
    except ValueError:
        return None
    return iso
