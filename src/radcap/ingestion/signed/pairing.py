"""Signed reports paired with their study's images: the rows of reports/images, the rejects, and `pending`.

A report is paired by its Study Instance UID, else by its accession number, with a study of the image index
(a DICOM folder or a PACS; `radcap.pacs.studies`). A study may have several signed reports (a final, then an
amendment): the last signed wins, the others are rejects naming it. A report whose study has no images yet is
pending: a row of `pending.parquet` that the next run tries again (from the table: the source file may be
gone by then), until `max_pending_days` have passed, when it becomes a reject saying so.

Privacy: the accession number and the patient id are replaced by keyed hashes (`radcap.core.pseudonyms`: the
deployment's key, else the data directory's own) before anything is kept: the patient's hash is the split group (a
patient's studies never span two splits), the accession's hash lets a pending report pair on a later run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import pandas as pd

from radcap.core.pseudonyms import Pseudonyms
from radcap.core.settings import TextRules
from radcap.core.uids import valid_uid
from radcap.ingestion.common import Parsed, image_row, natural_key, report_row
from radcap.ingestion.signed.common import NotAReport, SignedReport


class StudyImage(Protocol):
    path: str
    sop_uid: str
    view: str
    modality: str | None


class Study(Protocol):
    uid: str
    images: list  # of StudyImage
    patient: str | None  # in memory only


class ImageIndex(Protocol):
    """Where the studies' images are (`radcap.pacs.studies`): `find` by Study Instance UID or keyed accession hash."""

    def find(self, study_uid: str | None, accession_key: str | None, accession: str | None = None) -> Study | None: ...


def candidate(report: SignedReport, keys: Pseudonyms) -> dict:
    """A report as `pending.parquet` keeps it: identifiers replaced by keyed hashes."""
    key = hashlib.sha256(
        "\x1f".join(
            str(v)
            for v in (report.fmt, report.item, report.study_uid, report.accession, report.findings, report.impression)
        ).encode()
    ).hexdigest()[:32]
    return {
        "report_key": key,
        "source": report.source,
        "item": report.item,
        "format": report.fmt,
        "status": report.status,
        "study_uid": report.study_uid,
        "accession_key": keys("accession", report.accession),
        "group_key": keys("patient", report.patient),
        "findings_raw": report.findings,
        "impression_raw": report.impression,
        "reported_at": _time(report.issued),
        "first_seen": datetime.now(UTC),
        "reason": None,
    }


def _time(value: str | None) -> pd.Timestamp | None:
    if not value:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def pair_reports(
    inputs: Iterable[tuple[str, SignedReport | NotAReport]],
    previous_pending: pd.DataFrame,
    index: ImageIndex,
    keys: Pseudonyms,
    rules: TextRules,
    max_pending_days: int,
) -> Parsed:
    """Every input a report row (with its images), a reject or a pending row (`Parsed.pending`); see the module
    doc."""
    parsed = Parsed()
    candidates: list[dict] = []
    seen: set[str] = set()
    accessions: dict[str, str | None] = {}
    for source, result in inputs:
        parsed.inputs += 1
        if isinstance(result, NotAReport):
            parsed.reject(source, str(result))
            continue
        row = candidate(result, keys)
        accessions[row["report_key"]] = result.accession  # raw, in memory only: a PACS is searched by it
        if row["report_key"] in seen:
            parsed.reject(source, "the same report again (same id and text as an earlier input)", item=result.item)
            continue
        seen.add(row["report_key"])
        candidates.append(row)
    for row in previous_pending.to_dict("records"):
        if row["report_key"] not in seen:  # its file is gone or unchanged: tried again from the table
            parsed.inputs += 1
            seen.add(row["report_key"])
            candidates.append({**row, "reason": None})
    by_study: dict[str, list[tuple[dict, Study]]] = {}
    now = datetime.now(UTC)
    for row in candidates:
        uid = row["study_uid"]
        if uid is not None and valid_uid(uid) != uid:
            parsed.reject(row["source"], f"Study Instance UID '{uid[:70]}' is not a DICOM UID", item=row["item"])
            continue
        if uid is None and row["accession_key"] is None:
            parsed.reject(row["source"], "names no study (no Study Instance UID, no accession number)", row["item"])
            continue
        study = index.find(uid, row["accession_key"], accessions.get(row["report_key"]))
        if study is None or not study.images:
            waited = now - pd.Timestamp(row["first_seen"]).to_pydatetime()
            if waited > timedelta(days=max_pending_days):
                parsed.reject(
                    row["source"],
                    f"its study's images did not arrive in {max_pending_days} days (pending since "
                    f"{pd.Timestamp(row['first_seen']).date()})",
                    item=row["item"],
                )
            else:
                what = f"study {uid}" if uid else "the study of its accession number"
                parsed.pending.append({**row, "reason": f"no images of {what} yet"})
            continue
        by_study.setdefault(study.uid, []).append((row, study))
    for uid in sorted(by_study):
        ordered = sorted(by_study[uid], key=_signing_order)
        for row, _ in ordered[:-1]:
            winner = ordered[-1][0]
            parsed.reject(row["source"], f"superseded by the later report {winner['source']}", item=row["item"])
        row, study = ordered[-1]
        _add_report(parsed, row, study, keys, rules)
    return parsed


def _signing_order(entry: tuple[dict, Study]) -> tuple:
    """Reports without a signing time first, then by the time signed; at one time an amendment after a final."""
    row = entry[0]
    signed = row["reported_at"]
    known = signed is not None and not pd.isna(signed)
    return (
        known,
        pd.Timestamp(signed) if known else pd.Timestamp(0, tz="UTC"),
        row["status"] == "amended",
        natural_key(Path(str(row["source"]))),
    )


def _add_report(parsed: Parsed, row: dict, study: Study, keys: Pseudonyms, rules: TextRules) -> None:
    group = row["group_key"] or keys("patient", study.patient) or keys("study", study.uid)
    report = report_row(
        report_id=study.uid,
        study_id=study.uid,
        group_id=f"patient:{group}",
        dataset=row["format"],
        source=row["source"],
        rules=rules,
        findings_raw=row["findings_raw"],
        impression_raw=row["impression_raw"],
    )
    if report["target"] is None:
        parsed.reject(row["source"], report["_unusable"] or "report has neither findings nor impression", row["item"])
        return
    reported_at = row["reported_at"]
    report["reported_at"] = None if reported_at is None or pd.isna(reported_at) else pd.Timestamp(reported_at)
    report["report_status"] = row["status"]
    parsed.reports.append(report)
    for image in sorted(study.images, key=lambda i: i.sop_uid):
        parsed.add_image(
            image_row(image.sop_uid, report, path=image.path, view=image.view, modality=image.modality), row["source"]
        )
