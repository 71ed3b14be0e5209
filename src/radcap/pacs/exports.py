"""Finding the images of a PACS export (or a folder of PNG/JPEG files) and grouping them into studies.

Every regular file under the input folder is an input, whatever its name (PACS exports often have no
extensions), except hidden files and folders (names starting with '.', e.g. the inbox's `.complete`
marker). The type is sniffed from the bytes. DICOM headers are read without pixel data and with only the
tags grouping and the domain guard need (StudyInstanceUID, SOPInstanceUID, ViewPosition, Modality); a
PNG/JPEG file is a study of its own.

What is not an input is a reject with its reason, never silently skipped:
* symbolic links are never followed: a link pointing outside the input folder could expose any file of the
  machine, and a link pointing inside would caption its target twice (the target is captioned under its
  own path); broken links, FIFOs, sockets and devices are rejects too, and so is a folder that cannot be listed;
* a file whose header cannot be read is a reject with the reason and the file's SHA-256, so an unchanged bad
  file is not read again by the next run, and a repaired one is.

Privacy: only the four tags above are read, and a value is used only if it is well-formed (a UID; a
modality code of 2-4 capitals), so a header that carries a patient attribute there cannot bring it into an
output. With
`identifiers="hash"` even the UIDs are replaced by salted hashes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

from radcap.core.runtime import workspace_salt
from radcap.core.uids import valid_uid
from radcap.imaging.decode import ImageRejected, check_dicom_header, quiet_pydicom, read_bytes, sniff

FRONTAL, LATERAL = {"PA", "AP", "PA_ERECT", "AP_SUPINE"}, {"LL", "RL", "LAT", "LATERAL", "RLD", "LLD"}
_HEADER_TAGS = ["StudyInstanceUID", "SOPInstanceUID", "ViewPosition", "Modality"]
_MODALITY = re.compile(r"^[A-Z]{2,4}$")


@dataclass(frozen=True)
class InputImage:
    path: Path  # as found under the input root
    source_path: str  # relative to the input root, '/'-separated
    sha256: str
    kind: str  # png, jpeg, dicom
    study_id: str
    image_id: str
    view: str  # frontal, lateral, unknown
    modality: str | None = None  # the DICOM Modality code (CR, DX, CT, MR...), when it is one


@dataclass(frozen=True)
class Reject:
    source_path: str
    sha256: str  # '' when the file could not be read
    reason: str


@dataclass(frozen=True)
class Done:
    source_path: str
    sha256: str


@dataclass
class Scan:
    images: list[InputImage]  # new or changed inputs
    rejects: list[Reject]  # inputs that cannot be images (new or changed)
    done: int = 0  # inputs whose (path, sha256) is already in the output
    done_rejected: int = 0  # of those, the ones that were rejected (still rejected: nothing changed)


def relative_path(path: Path, root: Path) -> str:
    """How outputs name an input: its path relative to the input folder ('/'-separated)."""
    return path.name if root.is_file() else path.relative_to(root).as_posix()


def _inside(target: Path, root: Path) -> bool:
    try:
        target.relative_to(root)
        return True
    except ValueError:
        return False


def _link_reason(link: Path, root: Path) -> str:
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        return "broken symbolic link (not followed)"
    if not _inside(target, root.resolve()):
        return "symbolic link pointing outside the input folder (not followed)"
    kind = "folder" if target.is_dir() else "file"
    return (
        f"symbolic link to the {kind} '{target.relative_to(root.resolve()).as_posix()}' inside the input "
        "folder (not followed: the target is captioned under its own path)"
    )


def walk_inputs(root: Path, under: Path | None = None, exclude: Path | None = None) -> tuple[list[Path], list[Reject]]:
    """Regular files under `under` (default: `root`), hidden names skipped, in a stable order; links and
    special files as rejects. `exclude` (the output folder, when a user puts it inside the input) is skipped."""
    if root.is_file() and not root.is_symlink():
        return [root], []
    start = under or root
    skip = exclude.resolve() if exclude else None
    files, rejects = [], []

    def unreadable(error: OSError) -> None:
        where = Path(error.filename) if error.filename else start
        rejects.append(
            Reject(
                relative_path(where, root) if _inside(where, root) else str(where),
                "",
                f"cannot list folder: {error.strerror or type(error).__name__}",
            )
        )

    if start.is_symlink():
        return [], [Reject(relative_path(start, root), "", _link_reason(start, root))]
    for folder, dirs, names in os.walk(start, onerror=unreadable):
        here = Path(folder)
        kept = []
        for name in sorted(dirs):
            path = here / name
            if name.startswith(".") or (skip is not None and path.resolve() == skip):
                continue
            if path.is_symlink():
                rejects.append(Reject(relative_path(path, root), "", _link_reason(path, root)))
            else:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = here / name
            try:
                mode = os.lstat(path).st_mode
            except OSError as exc:
                rejects.append(Reject(relative_path(path, root), "", f"cannot read file: {exc.strerror}"))
                continue
            if stat.S_ISLNK(mode):
                rejects.append(Reject(relative_path(path, root), "", _link_reason(path, root)))
            elif not stat.S_ISREG(mode):
                rejects.append(Reject(relative_path(path, root), "", "not a regular file (FIFO, socket or device)"))
            else:
                files.append(path)
    return files, rejects


def view_of(view_position: object) -> str:
    value = view_position.strip().upper() if isinstance(view_position, str) else ""
    return "frontal" if value in FRONTAL else "lateral" if value in LATERAL else "unknown"


class Identifiers:
    """DICOM UIDs as they are, or salted SHA-256 (first 32 hex digits) when `mode == "hash"`."""

    def __init__(self, mode: str = "uid", salt: str = ""):
        if mode == "hash" and not salt:
            raise ValueError("hashed identifiers need a salt")  # radcap.core.settings.id_salt() provides one
        self.mode, self.salt = mode, salt

    def __call__(self, uid: str) -> str:
        if self.mode == "uid":
            return uid
        return hashlib.sha256(f"{self.salt}\x00{uid}".encode()).hexdigest()[:32]


def identifiers(mode: str, salt: str = "") -> Identifiers:
    """The output identifiers of a run: with `hash` and no salt configured, the workspace's own salt (random,
    made once and kept in `WORKSPACE/id_salt`), so hashes never come from an empty, guessable salt."""
    if mode == "hash" and not salt:
        salt = workspace_salt()
    return Identifiers(mode, salt)


def describe(
    path: Path, root: Path, ids: Identifiers, done: set[tuple[str, str]] | None = None
) -> InputImage | Reject | Done:
    """The input's identity, a Reject with the reason, or Done when (path, sha256) is in `done`."""
    relative = relative_path(path, root)
    try:
        data = read_bytes(path)
    except ImageRejected as exc:
        if done is not None and (relative, exc.sha256) in done:
            return Done(relative, exc.sha256)
        return Reject(relative, exc.sha256, str(exc))
    digest = hashlib.sha256(data).hexdigest()
    if done is not None and (relative, digest) in done:
        return Done(relative, digest)
    kind = sniff(data[:132])
    if kind is None:
        return Reject(relative, digest, "not a PNG, JPEG or DICOM file (unrecognized content)")
    content_id = digest[:32]
    if kind != "dicom":
        return InputImage(path, relative, digest, kind, content_id, content_id, "unknown")
    try:
        study, instance, view, modality = dicom_identity(data)
    except ImageRejected as exc:
        return Reject(relative, digest, str(exc))
    except Exception as exc:
        return Reject(relative, digest, f"cannot read DICOM header ({type(exc).__name__})")
    # Without UIDs the file is still captioned, as a study of its own, under its content hash.
    return InputImage(
        path,
        relative,
        digest,
        kind,
        ids(study) if study else content_id,
        ids(instance) if instance else content_id,
        view,
        modality,
    )


def dicom_identity(data: bytes) -> tuple[str | None, str | None, str, str | None]:
    """(StudyInstanceUID, SOPInstanceUID, view, modality) from a DICOM's header, each None ('unknown' for the
    view) unless well-formed; nothing else of the header is read."""
    check_dicom_header(data)
    header = quiet_pydicom().dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    modality = header.get("Modality")
    modality = (
        modality.strip().upper() if isinstance(modality, str) and _MODALITY.match(modality.strip().upper()) else None
    )
    return (
        valid_uid(header.get("StudyInstanceUID")),
        valid_uid(header.get("SOPInstanceUID")),
        view_of(header.get("ViewPosition")),
        modality,
    )


def scan(
    root: Path,
    ids: Identifiers,
    exclude: Path | None = None,
    done: set[tuple[str, str]] | None = None,
    under: Path | None = None,
    rejected: Set[tuple[str, str]] = frozenset(),
    walked: tuple[list[Path], list[Reject]] | None = None,
) -> Scan:
    """Every input under `under` (default `root`; paths relative to `root`): the new or changed images,
    the rejects, and how many were already `done` ((source_path, sha256) pairs of a previous run; those
    also in `rejected` were rejected then, and still are). `walked`: `walk_inputs(root, under, exclude)`,
    when the caller already has it."""
    files, rejects = walked if walked is not None else walk_inputs(root, under, exclude)
    # A link or special file already listed as such is not listed again.
    result = Scan([], [r for r in rejects if done is None or (r.source_path, r.sha256) not in done])
    result.done = result.done_rejected = len(rejects) - len(result.rejects)
    for path in files:
        item = describe(path, root, ids, done)
        if isinstance(item, Done):
            result.done += 1
            result.done_rejected += (item.source_path, item.sha256) in rejected
        elif isinstance(item, Reject):
            result.rejects.append(item)
        else:
            result.images.append(item)
    return result
