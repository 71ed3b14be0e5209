"""What every signed-report parser returns, and the rules they share: which statuses are training data,
how a free-text report splits into findings and impression, and how radcap's own drafts are recognized.

A parser turns one input (a message, a resource, an SR file) into a `SignedReport` or raises `NotAReport`
with the reason; anything else it meets in hostile input becomes `NotAReport` too (`parse_safely`), so an
input is always a report or a reject. Patient attributes are read only where pairing needs them (the
patient id, for the split key) and never leave this process: `pairing` replaces them by keyed hashes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Statuses as each format writes them, mapped to the three radcap keeps apart.
FINAL, AMENDED = "final", "amended"
TRAINING_STATUSES = (FINAL, AMENDED)
MAX_TEXT = 200_000  # characters of report text: a longer "report" is an export gone wrong, not a report

# radcap's own drafts carry these (radcap.pacs.reports writes them): never training data.
RADCAP_NAME = "radcap"
DRAFT_PHRASE = "machine-generated draft"
DRAFT_TAG = ("urn:radcap", "draft")  # FHIR meta.tag of radcap's DiagnosticReports


class NotAReport(Exception):
    """An input that is not a usable signed report; the message is the reason (names no patient value)."""


@dataclass
class SignedReport:
    source: str  # file, and the message / line / entry within it
    item: str | None  # the report's id in its format (message control id, resource id, SOP Instance UID)
    fmt: str  # hl7 | fhir | dicom-sr
    status: str  # final | amended (anything else is a NotAReport)
    study_uid: str | None
    accession: str | None  # in memory only: pairing hashes it
    patient: str | None  # in memory only: pairing hashes it into the split group
    findings: str | None
    impression: str | None
    issued: str | None  # ISO 8601 time the report was signed, where the format gives one


_HEADING = re.compile(
    r"(?im)(?:^|(?<=[\n.]))[ \t]*(findings?|impressions?|conclusions?|opinion|indications?|clinical history|history|"
    r"comparisons?|technique|examination|exam|procedure)[ \t]*:"
)
_SECTION_OF = {
    "finding": "findings",
    "findings": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "opinion": "impression",
}


def split_sections(text: str | None) -> tuple[str | None, str | None]:
    """(findings, impression) of a free-text report by its headings ('FINDINGS:', 'IMPRESSION:',
    'CONCLUSION:'...); other sections (indication, comparison, technique) are left out. Text without any
    heading is the findings (choose_target falls back to it when there is no impression)."""
    if not text or not text.strip():
        return None, None
    matches = list(_HEADING.finditer(text))
    if not matches:
        return text.strip(), None
    found: dict[str, list[str]] = {"findings": [], "impression": []}
    for k, match in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        section = _SECTION_OF.get(match.group(1).lower())
        body = text[match.end() : end].strip()
        if section and body:
            found[section].append(body)
    return (" ".join(found["findings"]) or None, " ".join(found["impression"]) or None)


def looks_like_radcap_draft(*texts: str | None) -> bool:
    """A text that names radcap and says it is a machine-generated draft (what radcap's drafts say)."""
    joined = " ".join(t for t in texts if t).lower()
    return RADCAP_NAME in joined and DRAFT_PHRASE in joined


def checked_text(value: object, what: str) -> str | None:
    """A text field as a stripped string (None when empty); NotAReport when it is not text or is too long."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise NotAReport(f"{what} is not text ({type(value).__name__})")
    if len(value) > MAX_TEXT:
        raise NotAReport(f"{what} is {len(value):,} characters long (at most {MAX_TEXT:,})")
    return value.strip() or None


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every word of the patient values in `secrets` replaced by '***': a library's error message
    may quote the input it choked on, and a reason must never carry a patient value."""
    words = sorted({w for s in secrets if s for w in re.split(r"[\s^|~&\\/,.;:]+", str(s)) if len(w) >= 2}, key=len)
    for word in reversed(words):
        text = text.replace(word, "***")
    return text


def parse_safely(parse: Callable[[], SignedReport], what: str, secrets: Callable[[], list[str]]) -> SignedReport:
    """`parse()`, with anything a hostile input provokes in a library turned into NotAReport naming it; the
    reason has the input's patient values (`secrets()`) redacted."""
    try:
        return parse()
    except NotAReport as exc:
        raise NotAReport(redact(str(exc), _safe(secrets))) from None
    except RecursionError:
        raise NotAReport(f"{what}: nested too deeply") from None
    except Exception as exc:  # a library's error on malformed input: the input's fault, said in one line
        reason = f"{what}: unreadable ({type(exc).__name__}: {str(exc)[:160]})"
        raise NotAReport(redact(reason, _safe(secrets))) from None


def _safe(secrets: Callable[[], list[str]]) -> list[str]:
    try:
        return [str(s) for s in secrets()]
    except Exception:  # the patient values themselves unreadable: nothing can be quoted from them either
        return []


def require_training_status(status: str, raw: object) -> str:
    if status not in TRAINING_STATUSES:
        raise NotAReport(f"status '{str(raw)[:40]}' is not final or amended: not a signed report")
    return status
