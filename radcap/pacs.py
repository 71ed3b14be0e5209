"""Finding the images of a PACS export (or a folder of PNG/JPEG files) and grouping them into studies.

Every regular file under the input folder is an input, whatever its name (PACS exports often have no
extensions), except hidden files and folders (names starting with '.', e.g. the inbox's `.complete`
marker). The type is sniffed from the bytes. DICOM headers are read without pixel data to group instances
by StudyInstanceUID and to take the view from ViewPosition. A PNG/JPEG file is a study of its own.

Privacy: only UIDs and ViewPosition are read from headers; patient attributes are never read into
anything that is written or logged. With `identifiers="hash"` even the UIDs are replaced by salted hashes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from radcap.imaging import file_sha256, sniff

FRONTAL, LATERAL = {"PA", "AP", "PA_ERECT", "AP_SUPINE"}, {"LL", "RL", "LAT", "LATERAL", "RLD", "LLD"}
_HEADER_TAGS = ["StudyInstanceUID", "SOPInstanceUID", "ViewPosition"]


@dataclass(frozen=True)
class InputImage:
    path: Path  # absolute
    source_path: str  # relative to the input folder, '/'-separated
    sha256: str
    kind: str  # png, jpeg, dicom
    study_id: str
    image_id: str
    view: str  # frontal, lateral, unknown


def input_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Regular files under `root` (or `root` itself), hidden names skipped, in a stable order; `exclude`
    (the output folder, when a user puts it inside the input) is skipped too."""
    if root.is_file():
        return [root]
    found, skip = [], exclude.resolve() if exclude else None
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(folder) / d).resolve() != skip)
        found.extend(Path(folder) / f for f in sorted(files) if not f.startswith("."))
    return [p for p in found if p.is_file() and not p.is_symlink()]


def view_of(view_position: str | None) -> str:
    value = (view_position or "").strip().upper()
    return "frontal" if value in FRONTAL else "lateral" if value in LATERAL else "unknown"


class Identifiers:
    """DICOM UIDs as they are, or salted SHA-256 (first 32 hex digits) when `mode == "hash"`."""

    def __init__(self, mode: str = "uid", salt: str = ""):
        self.mode, self.salt = mode, salt

    def __call__(self, uid: str) -> str:
        if self.mode == "uid":
            return uid
        return hashlib.sha256(f"{self.salt}\x00{uid}".encode()).hexdigest()[:32]


def relative_path(path: Path, root: Path) -> str:
    """How outputs name an input: its path relative to the input folder ('/'-separated)."""
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def scan(root: Path, ids: Identifiers, exclude: Path | None = None) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Every input under `root`: the images, and (relative path, reason) for the files that cannot be one."""
    images, unreadable = [], []
    for path in input_files(root, exclude):
        item = describe(path, root, ids)
        if isinstance(item, str):
            unreadable.append((relative_path(path, root), item))
        else:
            images.append(item)
    return images, unreadable


def describe(path: Path, root: Path, ids: Identifiers) -> InputImage | str:
    """The input's identity, or the reason it cannot be an image (a reject)."""
    relative = relative_path(path, root)
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
        digest = file_sha256(path)
    except OSError as exc:
        return f"cannot read file: {exc.strerror}"
    if not head:
        return "empty file (0 bytes)"
    kind = sniff(head)
    if kind is None:
        return "not a PNG, JPEG or DICOM file (unrecognized content)"
    content_id = digest[:32]
    if kind != "dicom":
        return InputImage(path, relative, digest, kind, content_id, content_id, "unknown")
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        return f"cannot read DICOM header: {type(exc).__name__}"
    study = str(getattr(header, "StudyInstanceUID", "") or "")
    instance = str(getattr(header, "SOPInstanceUID", "") or "")
    # Without UIDs the file is still captioned, as a study of its own, under its content hash.
    return InputImage(path, relative, digest, kind, ids(study) if study else content_id,
                      ids(instance) if instance else content_id, view_of(getattr(header, "ViewPosition", None)))
