"""Ingestion tasks: read a report collection, assign splits, build and write the contract tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
from prefect.logging import get_run_logger

from radcap.core.catalog import DataCatalog
from radcap.core.errors import RadcapError
from radcap.core.io import read_table, write_json, write_table
from radcap.core.pseudonyms import Pseudonyms
from radcap.core.settings import Settings
from radcap.data_contracts import IMAGES, PENDING, REJECTS, REPORTS
from radcap.ingestion.common import Parsed
from radcap.ingestion.iu import read_iu_csv, read_iu_xml
from radcap.ingestion.manifest import read_manifest
from radcap.ingestion.medpix import read_medpix
from radcap.ingestion.signed.pairing import pair_reports
from radcap.ingestion.signed.reader import SIGNED_FORMATS, parse_inputs, source_files
from radcap.ingestion.splits import apply_hash_split, apply_r2gen, enforce_no_leakage, read_r2gen_split
from radcap.pacs.dicomweb import Pacs, is_dicomweb
from radcap.pacs.studies import DicomFolderIndex, PacsStudyIndex, structured_reports
from radcap.tasks import uncached


@uncached
def read_source(
    fmt: str,
    source: Path | str,
    settings: Settings,
    images: Path | str | None = None,
    views: Path | None = None,
    out: Path | None = None,
) -> Parsed:
    """Parse one collection into rows and rejects (no split yet, except official ones)."""
    rules = settings.text
    if fmt in SIGNED_FORMATS:
        assert out is not None
        return read_signed(fmt, source, settings, images, out)
    source = Path(source)
    images = Path(images) if images is not None else None
    if fmt == "iu-xml":
        return read_iu_xml(source, rules, images, views)
    if fmt == "iu-csv":
        return read_iu_csv(source, rules, images, views)
    if fmt == "medpix2":
        return read_medpix(source, rules, images)
    if fmt == "manifest":
        return read_manifest(source, rules, images)
    raise ValueError(f"unknown format {fmt}")


def read_signed(fmt: str, source: Path | str, settings: Settings, images: Path | str | None, out: Path) -> Parsed:
    """Signed clinical reports paired with their images (a DICOM folder or `dicomweb:URL`); the pending reports
    of the previous run are tried again. See radcap.ingestion.signed.pairing."""
    catalog = DataCatalog(out)
    key = settings.ingest.pseudonym_salt
    keys = Pseudonyms(out, key.get_secret_value() if key is not None else "")
    pacs_settings = settings.pacs
    if images is None:
        raise RadcapError("--images is needed with signed reports: a DICOM folder or dicomweb:URL of a PACS")
    index: DicomFolderIndex | PacsStudyIndex
    if is_dicomweb(str(images)):
        image_pacs = Pacs(str(images), pacs_settings)
        image_pacs.check()  # a PACS that is down is one line, not every report pending
        index = PacsStudyIndex(image_pacs, catalog.pacs_images, keys)
    else:
        index = DicomFolderIndex(Path(images), keys)
    if is_dicomweb(str(source)):
        if fmt != "dicom-sr":
            raise RadcapError(f"--source dicomweb:URL is for --format dicom-sr, not {fmt}")
        pacs = Pacs(str(source), pacs_settings)
        pacs.check()
        inputs = parse_inputs(fmt, structured_reports(pacs))
    else:
        inputs = parse_inputs(fmt, source_files(Path(source)))
    previous = read_table(catalog.pending, PENDING) if catalog.pending.exists() else PENDING.empty()
    return pair_reports(inputs, previous, index, keys, settings.text, settings.ingest.max_pending_days)


@uncached
def assign_splits(parsed: Parsed, settings: Settings, split_file: Path | None = None) -> Parsed:
    """R2Gen split when a file is given (IU), else official/manifest splits, else the hash split."""
    if split_file is not None:
        apply_r2gen(parsed, read_r2gen_split(split_file))
    else:
        apply_hash_split(parsed, settings.split)
    enforce_no_leakage(parsed)
    return parsed


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    # An empty table gets object columns: float ones (pandas' default) could not become Arrow lists or strings.
    return (
        pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    )


@uncached
def build_tables(parsed: Parsed) -> dict[str, pa.Table]:
    """Contract-checked tables; images follow their report (split, existence), counts are derived."""
    reports = _frame(parsed.reports, REPORTS.column_names)
    images = _frame(parsed.images, [*IMAGES.column_names, "_source"])
    # Images of a report rejected after parsing (split conflict, leakage) go with it, as rejects.
    orphan = ~images["report_id"].isin(reports["report_id"])
    for row in images.loc[orphan, ["_source", "image_id", "report_id"]].to_dict("records"):
        parsed.reject(row["_source"], f"its report {row['report_id']} was rejected", item=row["image_id"], kind="image")
    images = images.loc[~orphan, IMAGES.column_names].copy()
    split_of = dict(zip(reports["report_id"], reports["split"]))
    images["split"] = images["report_id"].map(split_of)
    counts = images.groupby("report_id").size()
    reports["n_images"] = reports["report_id"].map(counts).fillna(0).astype("int32")
    rejects = _frame(parsed.rejects, REJECTS.column_names)
    pending = _frame(parsed.pending, PENDING.column_names)
    check_accounting(parsed, len(reports), len(images), rejects, len(pending))
    return {
        "reports": REPORTS.validate(reports),
        "images": IMAGES.validate(images),
        "rejects": REJECTS.validate(rejects),
        "pending": PENDING.validate(pending),
    }


def check_accounting(parsed: Parsed, reports: int, images: int, rejects: pd.DataFrame, pending: int = 0) -> None:
    """Every input is a row, a reject or pending, once: a mismatch is a bug in a reader, and stops the run."""
    report_rejects, image_rejects = int((rejects["kind"] == "report").sum()), int((rejects["kind"] == "image").sum())
    if reports + report_rejects + pending != parsed.inputs or images + image_rejects != parsed.image_inputs:
        raise RuntimeError(
            f"ingest accounting broke: {reports} reports + {report_rejects} rejects + {pending} pending != "
            f"{parsed.inputs} "
            f"inputs, or {images} images + {image_rejects} rejects != {parsed.image_inputs} inputs"
        )


def data_version(tables: dict[str, pa.Table]) -> str:
    """Content hash of the reports and images tables: the version training runs are tagged with."""
    digest = hashlib.sha256()
    for name in ("reports", "images"):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, tables[name].schema) as writer:
            writer.write_table(tables[name])
        digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()[:16]


@uncached
def write_ingest_outputs(tables: dict[str, pa.Table], parsed: Parsed, out: Path, meta: dict) -> dict:
    """Write the three tables atomically, then `ingest.json` last (its presence marks a complete run)."""
    catalog = DataCatalog(out)
    catalog.ingest_summary.unlink(missing_ok=True)
    write_table(tables["reports"], catalog.reports, REPORTS)
    write_table(tables["images"], catalog.images, IMAGES)
    write_table(tables["rejects"], catalog.rejects, REJECTS)
    write_table(tables["pending"], catalog.pending, PENDING)
    reports, images = tables["reports"].to_pandas(), tables["images"].to_pandas()
    rejects = tables["rejects"].to_pandas()
    summary = {
        **meta,
        "data_version": data_version(tables),
        "report_inputs": parsed.inputs,
        "reports": len(reports),
        "report_rejects": int((rejects["kind"] == "report").sum()),
        "images": len(images),
        "image_inputs": parsed.image_inputs,
        "image_rejects": int((rejects["kind"] == "image").sum()),
        "pending": len(tables["pending"]),
        "images_found": int(images["path"].notna().sum()),
        "splits": reports["split"].value_counts().sort_index().to_dict(),
    }
    write_json(summary, catalog.ingest_summary)
    logger = get_run_logger()
    logger.info(
        "%d of %d report inputs ingested, %d rejected; %d images (%d files found); splits %s",
        summary["reports"],
        summary["report_inputs"],
        summary["report_rejects"],
        summary["images"],
        summary["images_found"],
        summary["splits"],
    )
    return summary
