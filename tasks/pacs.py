"""Tasks of the PACS round trip: find what is new in a PACS, fetch it, write and store the reports."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect.logging import get_run_logger

from radcap.core.delta import is_delta, read_snapshot
from radcap.core.settings import get_settings
from radcap.data_contracts import CAPTIONS
from radcap.pacs.dicomweb import Pacs, StudyFound, Watermark, safe_url
from radcap.pacs.reports import ReportWriter
from radcap.tasks import uncached


@dataclass(frozen=True)
class ReportTargets:
    sr: bool = False
    fhir: bool = False
    store: str | None = None  # dicomweb:URL

    @property
    def wanted(self) -> bool:
        return self.sr or self.fhir or self.store is not None


@uncached
def connect(location: str) -> Pacs:
    """The PACS, checked with one query: down or refusing us is one line (exit 2), before any work."""
    pacs = Pacs(location, get_settings().pacs)
    pacs.check()
    return pacs


@uncached
def new_studies(pacs: Pacs, out: Path) -> tuple[list[StudyFound], list[str]]:
    """The studies new or changed since the last committed poll, and what QIDO returned that is not a study."""
    studies, problems = pacs.find_studies()
    todo = sorted(Watermark(out, pacs).todo(studies), key=lambda s: s.uid)  # a stable order of chunks
    get_run_logger().info("%s: %d studies, %d new or changed", safe_url(pacs.url), len(studies), len(todo))
    return todo, problems


@uncached
def fetch_studies(pacs: Pacs, studies: list[StudyFound], spool: Path) -> tuple[list[StudyFound], dict[str, str]]:
    """WADO-RS: each study's instances into `spool/STUDY/...`; a study that does not arrive whole is pending."""
    fetched, pending = [], {}
    for study in studies:
        _, problem = pacs.fetch_study(study, spool)
        if problem:
            shutil.rmtree(spool / study.uid, ignore_errors=True)  # never half a study
            pending[study.uid] = problem
            get_run_logger().warning("study %s pending: %s", study.uid, problem)
        else:
            fetched.append(study)
    return fetched, pending


@uncached
def write_reports(out: Path, root: Path, targets: ReportTargets, sources: set[str] | None = None) -> dict:
    """SR, FHIR and STOW for every captioned study lacking its current report (only studies with a source path
    in `sources`, when given: the PACS chunk at hand)."""
    if not targets.wanted or not is_delta(out / "captions"):
        return {}
    if sources is None:
        captions = read_snapshot(out / "captions", CAPTIONS)
    else:
        captions = read_snapshot(out / "captions", CAPTIONS, where={"source_path": sorted(sources)})
        studies = set(captions["study_id"])
        captions = read_snapshot(out / "captions", CAPTIONS, where={"study_id": sorted(studies)})
    store = Pacs(targets.store, get_settings().pacs) if targets.store else None
    counts = ReportWriter(out, root, targets.sr, targets.fhir, store).write(captions)
    for study, reason in counts.pending.items():
        get_run_logger().warning("study %s: report pending: %s", study, reason)
    return {
        "sr_written": counts.sr_written,
        "sr_stored": counts.sr_stored,
        "fhir_written": counts.fhir_written,
        "reports_withheld": counts.withheld,
        "reports_pending": len(counts.pending),
    }


@uncached
def advance_watermark(pacs: Pacs, out: Path, studies: list[StudyFound], spool: Path) -> None:
    Watermark(out, pacs).advance(studies, spool)
