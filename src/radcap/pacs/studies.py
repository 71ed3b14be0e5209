"""The images of the studies signed reports name: a DICOM folder, or a PACS (QIDO-RS, then WADO-RS into a local
folder training reads from), and a PACS's structured reports (QIDO-RS for Modality SR, then WADO-RS).

Only image instances count (`is_image`: radcap's own SR, key objects and presentation states are not
images); the headers are read without pixel data, and the patient id is kept in memory only (pairing hashes
it into the split group)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from radcap.core.pseudonyms import Pseudonyms
from radcap.core.uids import valid_uid
from radcap.pacs.dicomweb import Pacs, PacsError, StudyFound, is_image, safe_url
from radcap.pacs.exports import view_of


@dataclass(frozen=True)
class StudyImage:
    path: str
    sop_uid: str
    view: str
    modality: str | None


@dataclass
class Study:
    uid: str
    images: list[StudyImage]
    patient: str | None = None  # in memory only


_TAGS = [
    "StudyInstanceUID",
    "SOPInstanceUID",
    "ViewPosition",
    "Modality",
    "AccessionNumber",
    "PatientID",
    "SOPClassUID",
]


def _header(path: Path):
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        # PixelData is asked for by tag so `is_image` can see it; stop_before_pixels would hide it
        return dcmread(path, specific_tags=[*_TAGS, "PixelData"], defer_size=256)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
        return None


class DicomFolderIndex:
    """Every DICOM image under a folder, by study (files that are not DICOM images are not studies)."""

    def __init__(self, root: Path, keys: Pseudonyms):
        self.studies: dict[str, Study] = {}
        self.by_accession: dict[str, str] = {}
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(folder) / name
                if name.startswith(".") or path.is_symlink():
                    continue
                ds = _header(path)
                if ds is None or not is_image(ds):
                    continue
                self.add(ds, str(path.resolve()), keys)

    def add(self, ds, path: str, keys: Pseudonyms) -> None:
        uid, sop = valid_uid(ds.get("StudyInstanceUID")), valid_uid(ds.get("SOPInstanceUID"))
        if uid is None or sop is None:
            return
        modality = str(ds.get("Modality", "")).strip().upper() or None
        study = self.studies.setdefault(uid, Study(uid, []))
        study.images.append(StudyImage(path, sop, view_of(ds.get("ViewPosition")), modality))
        study.patient = study.patient or (str(ds.get("PatientID", "")).strip() or None)
        accession = keys("accession", str(ds.get("AccessionNumber", "")).strip() or None)
        if accession:
            self.by_accession.setdefault(accession, uid)

    def find(self, study_uid: str | None, accession_key: str | None, accession: str | None = None) -> Study | None:
        uid = study_uid or self.by_accession.get(accession_key or "")
        return self.studies.get(uid) if uid else None


class PacsStudyIndex:
    """Studies looked up in a PACS by Study Instance UID (QIDO-RS); their images fetched once into `cache`."""

    def __init__(self, pacs: Pacs, cache: Path, keys: Pseudonyms):
        self.pacs, self.cache, self.keys = pacs, Path(cache), keys
        self.local = DicomFolderIndex(self.cache, keys) if self.cache.exists() else None

    def find(self, study_uid: str | None, accession_key: str | None, accession: str | None = None) -> Study | None:
        """By UID, else by accession number (the raw one, known only while the report's file is read: a pending
        report that names only an accession pairs from the images already fetched)."""
        if self.local is not None and (known := self.local.find(study_uid, accession_key)) is not None:
            return known
        search = {"StudyInstanceUID": study_uid} if study_uid else {"AccessionNumber": accession} if accession else None
        if search is None:
            return None
        try:
            found = self.pacs.client.search_for_studies(search_filters=search, fields=["StudyInstanceUID"], limit=2)
        except Exception:  # the PACS's answer, not the report's fault: the report stays pending
            return None
        uids = {_first(item, "0020000D") for item in found} - {None} if isinstance(found, list) else set()
        if len(uids) != 1:
            return None  # none, or an accession number naming two studies: not paired on a guess
        study_uid = uids.pop()
        assert study_uid is not None
        written, problem = self.pacs.fetch_study(StudyFound(study_uid, -1, ()), self.cache)
        if problem or not written:
            return None
        for path in written:
            deidentify(path, self.keys)
        index = DicomFolderIndex(self.cache / study_uid, self.keys)
        return index.studies.get(study_uid)


# What a training copy keeps of who the patient is: nothing but the pseudonym (PS3.15's basic profile goes further
# for sharing data; this copy stays inside the data directory, and no table reads more than the grouping tags).
IDENTIFYING = (
    "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "PatientComments",
    "PatientMotherBirthName", "MilitaryRank", "EthnicGroup", "ReferringPhysicianName", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "OperatorsName", "InstitutionName", "InstitutionAddress", "AccessionNumber",
    "IssuerOfPatientID", "RequestingPhysician", "StudyID",
)  # fmt: skip


def deidentify(path: Path, keys: Pseudonyms) -> None:
    """Rewrite a fetched image without the patient's attributes: PatientID becomes its keyed hash (the split group
    stays the same on every run), the other identifying attributes and all private tags are removed."""
    from pydicom import dcmread

    ds = dcmread(path)
    patient = str(ds.get("PatientID", "")).strip()
    for keyword in IDENTIFYING:
        if keyword in ds:
            delattr(ds, keyword)
    ds.remove_private_tags()
    ds.PatientID = keys("patient", patient) or ""
    ds.PatientIdentityRemoved = "YES"
    tmp = path.with_name(path.name + ".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


def structured_reports(pacs: Pacs) -> Iterator[tuple[str, bytes | PacsError]]:
    """(source, the SR's bytes or why it could not be fetched) for every SR instance in the PACS."""
    from pydicom.filebase import DicomBytesIO

    try:
        items = pacs.client.search_for_instances(search_filters={"Modality": "SR"})
    except Exception as exc:
        raise PacsError(
            f"QIDO-RS for structured reports failed: {type(exc).__name__}: {safe_url(str(exc))[:200]}"
        ) from exc
    if not isinstance(items, list):
        raise PacsError(f"QIDO-RS for structured reports answered a {type(items).__name__}, not a list of instances")
    for item in items:
        uids = [_first(item, tag) for tag in ("0020000D", "0020000E", "00080018")]
        source = f"{safe_url(pacs.url)}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}"
        if None in uids:
            yield source, PacsError("QIDO-RS entry without valid study, series and SOP Instance UIDs")
            continue
        try:
            ds = pacs.client.retrieve_instance(str(uids[0]), str(uids[1]), str(uids[2]))
            buffer = DicomBytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            yield source, buffer.getvalue()
        except Exception as exc:
            yield source, PacsError(f"WADO-RS failed: {type(exc).__name__}: {safe_url(str(exc))[:200]}")


def _first(item: object, tag: str) -> str | None:
    try:
        return valid_uid(item[tag]["Value"][0])  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None
