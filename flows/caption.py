"""`radcap caption` (one folder) and `caption_new_batches` (the scheduled inbox flow)."""

from __future__ import annotations

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
from radcap.tasks.caption import caption_batch, consolidate, load_model, scan_inputs


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
    input_path: Path,
    out: Path,
    model: str | None = None,
    settings: BulkCaptioningSettings | None = None,
    encoder: str | None = None,
    cluster: str | None = None,
) -> dict:
    cfg = settings or get_settings().caption
    model_name = model or cfg.model
    return _caption(
        input_path,
        out,
        model_name,
        cfg,
        lambda: load_model(model_name, encoder, cfg.precision),
        cluster=cluster or get_settings().cluster,
        encoder=encoder,
    )


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
