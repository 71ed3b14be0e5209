"""Drafts back where radiologists read: a DICOM Structured Report filed in the patient's own study (highdicom),
a FHIR R4 DiagnosticReport (fhir.resources, R4B models: DiagnosticReport is the same in R4), and STOW-RS.

One report per captioned study, made from the captions table (what was committed), so it is idempotent and
survives a crash: a study's report is identified by its *content key* (the model, its version, the encoder
version and the SHA-256 of every source file), and the SR's SOP Instance UID is derived from it. Writing it
again, storing it again or a second process doing so gives the same instance (a PACS replaces or keeps it,
never adds one). A study whose content changes (a new view) gets a new SR naming the previous one in its
Predecessor Documents Sequence. A withheld study (`ood_policy = withhold`, no caption) gets none.

Layout: `OUT/sr/STUDY/SR_UID.dcm` (STUDY: the captions table's study id; SR files are the one output that
carries patient attributes, copied from the source so the SR files into the patient's study),
`OUT/sr/.stored/SERVER/SR_UID` (sent by STOW-RS), `OUT/fhir/studies/STUDY.json` (the newest per study) and
`OUT/fhir/DiagnosticReport.ndjson` (all of them, rewritten atomically).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from radcap.core.io import atomic_path
from radcap.core.uids import valid_uid
from radcap.pacs.dicomweb import Pacs, PacsError

NOT_DICOM = "not a DICOM study"
SERIES_NUMBER = 7701  # radcap's report series in a study
LOINC_IMAGING_REPORT = ("18748-4", "Diagnostic imaging study")
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section


@dataclass
class ReportCounts:
    sr_written: int = 0
    sr_stored: int = 0
    fhir_written: int = 0
    withheld: int = 0
    not_dicom: int = 0  # PNG/JPEG studies: no SR or FHIR report (no Study Instance UID to file it under)
    pending: dict[str, str] = field(default_factory=dict)  # study id -> why no report yet (retried next run)


def content_key(rows: pd.DataFrame) -> str:
    """What a study's report depends on: model, versions, caption, and the bytes of every source file."""
    first = rows.iloc[0]
    parts = [str(first[c]) for c in ("model", "model_version", "encoder_version", "caption")]
    parts += sorted(f"{p}:{s}" for p, s in zip(rows["source_path"], rows["sha256"]))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


RADCAP_NAMESPACE = uuid.UUID("5f0c6a52-5a1e-4a0e-9d7e-7261646361 70".replace(" ", ""))


def _uid(*parts: str) -> str:
    """A UID derived from `parts` alone (2.25. + a name-based UUID, PS3.5 B.2): the same report, the same UID.
    (pydicom's generate_uid ignores its entropy sources under the 2.25 root: its UIDs are random.)"""
    return f"2.25.{uuid.uuid5(RADCAP_NAMESPACE, chr(31).join(parts)).int}"


def _folder_name(study_id: str) -> str:
    """The study's folder: its id when it is a UID or a salted hash, else a hash of it (never a path)."""
    return (
        study_id
        if valid_uid(study_id) or all(c in "0123456789abcdef" for c in study_id)
        else (hashlib.sha256(study_id.encode()).hexdigest())
    )


def _ood_statement(first: pd.Series) -> str:
    if first.get("in_domain") == False:  # noqa: E712 (numpy's False too; None is not flagged)
        return f"Out-of-domain check: FLAGGED, unlike the model's training images ({first.get('ood_reason')})."
    score = first.get("ood_score")
    if score is None or pd.isna(score):
        return "Out-of-domain check: not available (model saved without a domain guard)."
    return f"Out-of-domain check: in domain (score {float(score):.2f})."


def build_sr(evidence: list, first: pd.Series, sr_uid: str, series_uid: str, previous: list):
    """A Comprehensive SR: Basic Diagnostic Imaging Report-style tree (TID 2000 shape), unverified, partial."""
    import highdicom as hd
    from pydicom.sequence import Sequence
    from pydicom.sr.codedict import codes

    CC = hd.sr.CodedConcept
    report = str(first["caption"])
    algorithm = f"radcap {first['model']}"
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("device", str(first["model"])),
            name="radcap",
            manufacturer_name="radcap",
            model_name=f"{first['model']} {first['model_version']}"[:64],
        ),
    )
    findings = hd.sr.ContainerContentItem(CC("121070", "DCM", "Findings"), relationship_type="CONTAINS")
    findings.ContentSequence = Sequence([hd.sr.TextContentItem(CC("121071", "DCM", "Finding"), report, "CONTAINS")])
    impression = hd.sr.ContainerContentItem(CC("121072", "DCM", "Impressions"), relationship_type="CONTAINS")
    impression.ContentSequence = Sequence(
        [hd.sr.TextContentItem(CC("121073", "DCM", "Impression"), report, "CONTAINS")]
    )
    notes = [
        hd.sr.TextContentItem(CC("111001", "DCM", "Algorithm Name"), algorithm[:1024], "CONTAINS"),
        hd.sr.TextContentItem(CC("111003", "DCM", "Algorithm Version"), str(first["model_version"]), "CONTAINS"),
        hd.sr.TextContentItem(
            CC("111002", "DCM", "Algorithm Parameters"), f"encoder version {first['encoder_version']}", "CONTAINS"
        ),
        hd.sr.TextContentItem(
            CC("121106", "DCM", "Comment"),
            "Machine-generated draft, not verified by a radiologist. " + _ood_statement(first),
            "CONTAINS",
        ),
    ]
    root = hd.sr.ContainerContentItem(CC(*LOINC_IMAGING_REPORT[:1], "LN", LOINC_IMAGING_REPORT[1]), template_id="2000")
    language = hd.sr.LanguageOfContentItemAndDescendants(CC("en-US", "RFC5646", "English (United States)"))
    root.ContentSequence = Sequence([*language, *device, findings, impression, *notes])
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=root,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sr_uid,
        instance_number=1,
        manufacturer="radcap",
        is_complete=False,  # CompletionFlag PARTIAL
        is_verified=False,  # VerificationFlag UNVERIFIED
        previous_versions=previous or None,
        series_description="radcap draft report (unverified)",
    )


def diagnostic_report(study_uid: str, sr_uid: str, first: pd.Series) -> dict:
    """A FHIR R4 DiagnosticReport (status preliminary), checked by fhir.resources before it is returned."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    model = f"{first['model']} version {first['model_version']} (encoder {first['encoder_version']})"
    statement = f"Machine-generated draft by radcap, model {model}; not verified by a radiologist."
    resource = {
        "resourceType": "DiagnosticReport",
        "id": hashlib.sha256(sr_uid.encode()).hexdigest()[:64],
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{sr_uid}"}],
        "meta": {"tag": [{"system": "urn:radcap", "code": "draft", "display": "radcap draft, never training data"}]},
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": LOINC_IMAGING_REPORT[0], "display": LOINC_IMAGING_REPORT[1]}
            ]
        },
        "imagingStudy": [
            {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}, "display": "the imaging study"}
        ],
        "issued": pd.Timestamp(first["captioned_at"]).isoformat(),
        "performer": [{"display": f"radcap {model}"}],
        "conclusion": str(first["caption"]),
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{_xml(statement)}</p>'
            f"<p>{_xml(_ood_statement(first))}</p><p>{_xml(str(first['caption']))}</p></div>",
        },
    }
    return json.loads(DiagnosticReport.model_validate(resource).model_dump_json(exclude_none=True))


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ReportWriter:
    """Writes (and stores) the reports of studies in the captions table that do not have their current one."""

    def __init__(self, out: Path, root: Path, sr: bool, fhir: bool, store: Pacs | None = None):
        self.out, self.root, self.sr, self.fhir, self.store = Path(out), Path(root), sr, fhir, store
        self.sr_dir, self.fhir_dir = self.out / "sr", self.out / "fhir"

    def write(self, captions: pd.DataFrame, counts: ReportCounts | None = None) -> ReportCounts:
        counts = counts or ReportCounts()
        if not (self.sr or self.fhir or self.store):
            return counts
        for study_id, rows in captions.groupby("study_id", sort=True):
            self._study(str(study_id), rows, counts)
        if self.fhir:
            self._bundle_fhir()
        return counts

    def _study(self, study_id: str, rows: pd.DataFrame, counts: ReportCounts) -> None:
        first = rows.iloc[0]
        if first["caption"] is None or pd.isna(first["caption"]):
            counts.withheld += 1
            return
        key = content_key(rows)
        folder = self.sr_dir / _folder_name(study_id)
        done_sr = not (self.sr or self.store) or any(folder.glob(f"*{key[:12]}*.dcm"))
        fhir_file = self.fhir_dir / "studies" / f"{_folder_name(study_id)}.json"
        done_fhir = not self.fhir or (fhir_file.exists() and key in fhir_file.read_text(encoding="utf-8"))
        stored = self.store is None or self._stored_marker(key).exists()
        if done_sr and done_fhir and stored:
            return
        evidence, problem = self._evidence(rows)
        if problem == NOT_DICOM:
            counts.not_dicom += 1
            return
        if problem:
            counts.pending[study_id] = problem
            return
        study_uid = str(evidence[0].StudyInstanceUID)
        sr_uid = _uid("sr", study_uid, key)
        sr_path = folder / f"{key[:12]}-{sr_uid}.dcm"
        if self.sr or self.store:
            if not sr_path.exists():
                previous = self._previous(folder, sr_path)
                series_uid = _uid("series", study_uid, str(first["model"]))
                document = build_sr(evidence, first, sr_uid, series_uid, previous)
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_path(sr_path) as tmp:
                    document.save_as(tmp, enforce_file_format=True)
                counts.sr_written += 1
            if self.store is not None and not self._stored_marker(key).exists():
                from pydicom import dcmread

                try:
                    self.store.store([dcmread(sr_path)])
                except PacsError as exc:
                    counts.pending[study_id] = f"SR not stored yet: {exc}"
                else:
                    marker = self._stored_marker(key)
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(sr_uid + "\n", encoding="utf-8")
                    counts.sr_stored += 1
        if self.fhir and not done_fhir:
            resource = diagnostic_report(study_uid, sr_uid, first)
            fhir_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(fhir_file) as tmp:
                tmp.write_text(json.dumps({"key": key, "resource": resource}), encoding="utf-8")
            counts.fhir_written += 1

    def _stored_marker(self, key: str) -> Path:
        assert self.store is not None
        return self.sr_dir / ".stored" / self.store.key / key

    def _evidence(self, rows: pd.DataFrame) -> tuple[list, str | None]:
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        evidence = []
        for source in rows["source_path"]:
            path = self.root / str(source)
            try:
                evidence.append(dcmread(path, stop_before_pixels=True))
            except InvalidDicomError:
                return [], NOT_DICOM
            except OSError as exc:
                return [], f"{source}: source file not readable for the SR ({type(exc).__name__})"
        if any(not hasattr(ds, "StudyInstanceUID") or not hasattr(ds, "SOPInstanceUID") for ds in evidence):
            return [], NOT_DICOM
        if len({str(ds.StudyInstanceUID) for ds in evidence}) != 1:
            return [], "sources of more than one Study Instance UID"
        return evidence, None

    @staticmethod
    def _previous(folder: Path, current: Path) -> list:
        from pydicom import dcmread

        others = sorted((p for p in folder.glob("*.dcm") if p != current), key=lambda p: p.stat().st_mtime)
        return [dcmread(others[-1])] if others else []

    def _bundle_fhir(self) -> None:
        files = sorted((self.fhir_dir / "studies").glob("*.json"))
        target = self.fhir_dir / "DiagnosticReport.ndjson"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8") as handle:
            for path in files:
                handle.write(json.dumps(json.loads(path.read_text(encoding="utf-8"))["resource"]) + "\n")
