"""The inputs of `radcap ingest --format hl7|fhir|dicom-sr`: every file under the source folder (or the one file
given), each parsed by its format's reader into reports or the reasons they are not."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from radcap.ingestion.common import natural_key
from radcap.ingestion.signed.common import NotAReport, SignedReport
from radcap.ingestion.signed.dicom_sr import read_sr_file
from radcap.ingestion.signed.fhir import read_fhir_file
from radcap.ingestion.signed.hl7 import read_hl7_file

SIGNED_FORMATS = ("hl7", "fhir", "dicom-sr")
MAX_FILE_BYTES = 64 * 2**20
Result = tuple[str, SignedReport | NotAReport]


def source_files(source: Path) -> Iterator[tuple[str, bytes | NotAReport]]:
    """(path, bytes or the reason they cannot be read) for every regular file under `source`, in natural order;
    hidden files and folders are skipped, a symbolic link is never followed (a reject, like any odd file)."""
    if source.is_file():
        yield str(source), _read(source)
        return
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=lambda d: natural_key(Path(d)))
        for name in sorted((f for f in files if not f.startswith(".")), key=lambda f: natural_key(Path(f))):
            path = Path(folder) / name
            yield str(path), _read(path)


def _read(path: Path) -> bytes | NotAReport:
    if path.is_symlink():
        return NotAReport("a symbolic link (not followed)")
    if not path.is_file():
        return NotAReport("not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return NotAReport(f"file is {size / 2**20:.0f} MiB (at most {MAX_FILE_BYTES // 2**20} MiB)")
    try:
        return path.read_bytes()
    except OSError as exc:
        return NotAReport(f"cannot be read ({type(exc).__name__})")


def parse_inputs(fmt: str, inputs: Iterable[tuple[str, bytes | Exception]]) -> Iterator[Result]:
    """Each input file (or PACS instance) as reports or reasons."""
    if fmt not in SIGNED_FORMATS:
        raise ValueError(f"unknown signed-report format {fmt}")
    for source, data in inputs:
        if isinstance(data, Exception):
            yield source, data if isinstance(data, NotAReport) else NotAReport(str(data))
        elif fmt == "hl7":
            yield from read_hl7_file(Path(source), data)
        elif fmt == "fhir":
            yield from read_fhir_file(Path(source), data)
        else:
            yield source, read_sr_file(Path(source), data)
