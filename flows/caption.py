"""`radcap caption` (one folder) and `caption_new_batches` (the scheduled inbox flow)."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from radcap.core.errors import RadcapError
from radcap.core.io import exclusive_lock
from radcap.core.runtime import apply_offline_defaults
from radcap.core.settings import BulkCaptioningSettings, get_settings
from radcap.operations.cluster import dask_client
from radcap.operations.inbox import Ledger, complete_batches
from radcap.pacs.dicomweb import is_dicomweb
from radcap.tasks.caption import caption_batch, consolidate, load_model, scan_inputs
from radcap.tasks.pacs import (
    ReportTargets,
    advance_watermark,
    connect,
    fetch_studies,
    new_studies,
    write_reports,
)


def _caption(
    root: Path,
    out: Path,
    model_name: str,
    cfg: BulkCaptioningSettings,
    get_model,
    under: Path | None = None,
    wait: float | None = None,
    cluster=None,
    encoder: str | None = None,
) -> dict:
    """scan -> caption what is new (in process, or across the Dask `cluster`) -> consolidate, holding the output
    folder's lock (waiting `wait` seconds, default `cfg.lock_wait_seconds`, for another writer); `get_model()`
    loads the model only when there is work."""
    with exclusive_lock(out / ".lock", cfg.lock_wait_seconds if wait is None else wait, str(out)):
        return _caption_locked(root, out, model_name, cfg, get_model, under, cluster, encoder)


def _caption_locked(
    root: Path,
    out: Path,
    model_name: str,
    cfg: BulkCaptioningSettings,
    get_model,
    under: Path | None = None,
    cluster=None,
    encoder: str | None = None,
) -> dict:
    """`_caption`, for a caller that holds the output folder's lock."""
    found = scan_inputs(root, out, cfg, under)
    captioned = rejected = studies = out_of_domain = 0
    if found.todo:
        result = caption_batch(quote(found.todo), quote(get_model()), out, cfg, quote(cluster), encoder)
        captioned, rejected, studies, out_of_domain = (
            result.captioned,
            result.rejected,
            result.studies,
            result.out_of_domain,
        )
    totals = consolidate(out)
    return {
        "input": str(under or root),
        "model": model_name,
        "new_images": found.new,
        "captioned": captioned,
        "studies": studies,
        "out_of_domain_studies": out_of_domain,
        "rejected": rejected + found.rejected,
        "already_done": found.already_done,
        **totals,
    }


@flow(name="caption-images")
def caption_flow(
    input_path: Path | str,
    out: Path,
    model: str | None = None,
    settings: BulkCaptioningSettings | None = None,
    encoder: str | None = None,
    cluster: str | None = None,
    sr: bool = False,
    fhir: bool = False,
    store: str | None = None,
) -> dict:
    """Caption a folder, or a PACS (`input_path` = dicomweb:URL); with `sr`/`fhir`/`store` (dicomweb:URL), also
    write each captioned study's DICOM SR / FHIR DiagnosticReport, and send the SR to that PACS."""
    cfg = settings or get_settings().caption
    model_name = model or cfg.model
    get_model = cache(lambda: load_model(model_name, encoder, cfg.precision))
    targets = ReportTargets(sr, fhir, store)
    if is_dicomweb(input_path):
        return caption_pacs(str(input_path), out, model_name, cfg, get_model, targets, cluster, encoder)
    input_path = Path(input_path)
    with exclusive_lock(out / ".lock", cfg.lock_wait_seconds, str(out)):
        summary = _caption_locked(
            input_path, out, model_name, cfg, get_model, cluster=cluster or get_settings().cluster, encoder=encoder
        )
        if targets.wanted:
            summary.update(write_reports(out, input_path, targets))
    return summary


@flow(name="caption-pacs")
def caption_pacs_flow(
    pacs: str,
    out: Path,
    model: str | None = None,
    sr: bool = True,
    fhir: bool = False,
    store: str | None = None,
    cluster: str | None = None,
) -> dict:
    """The scheduled PACS poll (deployment `pacs`): caption the studies that are new or changed since the last
    successful poll, file each one's SR back into the PACS (`store`, default: the same PACS)."""
    apply_offline_defaults()  # a deployment's entry point
    cfg = get_settings().caption
    model_name = model or cfg.model
    get_model = cache(lambda: load_model(model_name, None, cfg.precision))
    targets = ReportTargets(sr, fhir, store if store is not None else (pacs if sr else None))
    return caption_pacs(pacs, out, model_name, cfg, get_model, targets, cluster, None)


@flow(name="caption-new-batches")
def caption_new_batches(
    inbox: Path,
    out: Path,
    model: str | None = None,
    settings: BulkCaptioningSettings | None = None,
    cluster: str | None = None,
) -> dict:
    """Caption every complete, not yet taken batch folder of `inbox` into the one store `out/` (source paths
    `BATCH/...`), so a study whose views arrive in two batches gets one report from all of them. The ledger
    claim is held in the flow: it spans the batch's tasks, which no single task could hold for its caller."""
    apply_offline_defaults()  # a deployment's entry point
    cfg = settings or get_settings().caption
    ledger = Ledger(out)
    model_name = model or cfg.model
    get_model = cache(
        lambda: load_model(model_name, None, cfg.precision)
    )  # loaded once per run, at the first batch with work
    taken: list[str] = []
    failed: list[str] = []
    batches = list(complete_batches(inbox, cfg.ready_marker, cfg.settle_seconds))
    # One cluster for every batch of the run, and none started when no batch is complete.
    with dask_client((cluster or get_settings().cluster) if batches else None) as client:
        _caption_batches(inbox, out, model_name, cfg, get_model, ledger, batches, client, taken, failed)
    if failed:
        raise RadcapError(f"batches not captioned (will be retried by the next run): {', '.join(failed)}")
    return {"inbox": str(inbox), "captioned_batches": taken}


def _caption_batches(
    inbox: Path,
    out: Path,
    model_name: str,
    cfg: BulkCaptioningSettings,
    get_model,
    ledger: Ledger,
    batches: list[Path],
    client,
    taken: list[str],
    failed: list[str],
) -> None:
    logger = get_run_logger()
    for batch in batches:
        claim = ledger.claim(batch.name, cfg.claim_timeout_seconds)
        if claim is None:
            continue  # done already, or another run holds it
        try:
            with claim.kept_alive():
                # One store for the whole inbox: an overlapping run waits its turn (its claim kept alive).
                summary = _caption(
                    inbox, out, model_name, cfg, get_model, under=batch, wait=cfg.claim_timeout_seconds, cluster=client
                )
        except RadcapError as exc:
            claim.release()  # the next run retries it
            logger.error("batch %s not captioned: %s; released for the next run", batch.name, exc)
            failed.append(batch.name)
            continue
        except Exception:
            claim.release()
            logger.exception("batch %s failed; released for the next run", batch.name)
            failed.append(batch.name)
            continue
        if not claim.finish(summary):
            # Our heartbeat stalled and another run took the batch over; what we wrote is kept (the store
            # skips what is written), and the batch is recorded by the run that holds it now.
            logger.warning("batch %s was taken over by another run while captioned; left to it", batch.name)
            continue
        taken.append(batch.name)


COUNTED = ("new_images", "captioned", "studies", "out_of_domain_studies", "rejected", "already_done")


def caption_pacs(
    location: str,
    out: Path,
    model_name: str,
    cfg: BulkCaptioningSettings,
    get_model,
    targets: ReportTargets,
    cluster: str | None,
    encoder: str | None,
) -> dict:
    """QIDO-RS -> the studies new or changed since the last committed poll -> in chunks of
    `pacs.studies_per_chunk`: WADO-RS into a spool folder, the folder path (same grouping, guards, rejects,
    exactly-once), reports and STOW, then the watermark. The next chunk is fetched while this one is captioned
    (two spool folders: disk and memory hold two chunks, never the archive). The PACS stopping mid-run stops
    the run with what was committed kept; the next run resumes."""
    pacs = connect(location)
    spools = [out / ".dicomweb" / "spool-a", out / ".dicomweb" / "spool-b"]
    summary: dict = {"input": pacs.url.split("@")[-1], "model": model_name, **dict.fromkeys(COUNTED, 0)}
    summary.update(studies_found=0, studies_pending=0, sr_written=0, sr_stored=0, fhir_written=0)
    summary.update(captions=str(out / "captions"), rejects=str(out / "caption_rejects"))
    pending: dict[str, str] = {}
    with exclusive_lock(out / ".lock", cfg.lock_wait_seconds, str(out)):
        todo, problems = new_studies(pacs, out)
        summary["studies_found"], summary["pacs_answer_problems"] = len(todo), len(problems)
        # Chunks of even size, at most `studies_per_chunk`: no small last chunk, whose smaller forward pass would
        # cost the encoder a trace of its own (a chunk's batches are padded to its largest).
        count = -(-len(todo) // get_settings().pacs.studies_per_chunk)
        size = -(-len(todo) // count) if count else 1
        chunks = [todo[k : k + size] for k in range(0, len(todo), size)]

        def fetch(number: int):
            spool = spools[number % 2]
            shutil.rmtree(spool, ignore_errors=True)
            spool.mkdir(parents=True)
            return fetch_studies.submit(pacs, chunks[number], spool)

        upcoming = fetch(0) if chunks else None
        for number in range(len(chunks)):
            assert upcoming is not None
            fetched, missing = upcoming.result()
            upcoming = fetch(number + 1) if number + 1 < len(chunks) else None
            pending.update(missing)
            if missing:
                connect(location)  # down now (not one bad study): stop, keeping what was committed
            if fetched:
                _commit_chunk(spools[number % 2], out, model_name, cfg, get_model, targets, cluster, encoder,
                              pacs, fetched, summary, pending)  # fmt: skip
        for spool in spools:
            shutil.rmtree(spool, ignore_errors=True)
    summary["studies_pending"] = len(pending)
    if pending:
        get_run_logger().warning("%d studies pending (retried by the next run)", len(pending))
    return summary


def _commit_chunk(spool, out, model_name, cfg, get_model, targets, cluster, encoder, pacs, fetched, summary, pending):
    """One fetched chunk through the folder path, its reports, then its watermark."""
    done = _caption_locked(spool, out, model_name, cfg, get_model, cluster=cluster, encoder=encoder)
    for key in COUNTED:
        summary[key] += done[key]
    sources = {p.relative_to(spool).as_posix() for p in spool.rglob("*.dcm")}
    reports = write_reports(out, spool, targets, sources) if targets.wanted else {}
    for key in ("sr_written", "sr_stored", "fhir_written"):
        summary[key] += reports.get(key, 0)
    if not reports.get("reports_pending"):
        advance_watermark(pacs, out, fetched, spool)  # only now: captions and reports are committed
    else:
        pending.update({s.uid: "report not stored yet" for s in fetched})
