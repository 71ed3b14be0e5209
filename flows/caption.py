"""`radcap caption` (one folder) and `caption_new_batches` (the scheduled inbox flow)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from radcap.captioning import CaptionStore
from radcap.inbox import Ledger, complete_batches
from radcap.settings import CaptionSettings, get_settings
from tasks.caption import caption_batch, consolidate, load_model, scan_inputs


def _caption_folder(input_path: Path, out: Path, model_name: str, cfg: CaptionSettings, get_model) -> dict:
    """scan -> caption what is new -> consolidate; `get_model()` loads the model only when there is work."""
    store = CaptionStore(out)
    todo, skipped, unreadable = scan_inputs(input_path, quote(store), cfg)
    captioned = rejected = studies = 0
    if todo:
        result = caption_batch(quote(todo), quote(get_model()), quote(store), cfg)
        captioned, rejected, studies = result.captioned, result.rejected, result.studies
    totals = consolidate(quote(store))
    return {"input": str(input_path), "model": model_name, "new_images": len(todo), "captioned": captioned,
            "studies": studies, "rejected": rejected + unreadable, "already_done": skipped, **totals,
            "captions": str(store.captions), "rejects": str(store.rejects)}


@flow(name="caption-images")
def caption_flow(input_path: Path, out: Path, model: str | None = None, settings: CaptionSettings | None = None) -> dict:
    cfg = settings or get_settings().caption
    model_name = model or cfg.model
    return _caption_folder(input_path, out, model_name, cfg, lambda: load_model(model_name))


@flow(name="caption-new-batches")
def caption_new_batches(inbox: Path, out: Path, model: str | None = None, settings: CaptionSettings | None = None) -> dict:
    """Caption every complete, not yet taken batch folder of `inbox` into `out/BATCH/`."""
    cfg = settings or get_settings().caption
    logger, ledger = get_run_logger(), Ledger(out)
    model_name = model or cfg.model
    get_model = cache(lambda: load_model(model_name))  # loaded once per run, at the first batch with work
    taken, failed = [], []
    for batch in complete_batches(inbox, cfg.ready_marker, cfg.settle_seconds):
        if not ledger.claim(batch.name, cfg.claim_timeout_seconds):
            continue  # done already, or another run holds it
        try:
            summary = _caption_folder(batch, out / batch.name, model_name, cfg, get_model)
        except Exception:
            ledger.release(batch.name)  # the next run retries it
            logger.exception("batch %s failed; released for the next run", batch.name)
            failed.append(batch.name)
            continue
        ledger.finish(batch.name, summary)
        taken.append(batch.name)
    if failed:
        raise RuntimeError(f"batches failed (will be retried): {failed}")
    return {"inbox": str(inbox), "captioned_batches": taken}
