"""`radcap promote` and `radcap rollback`: the only ways a captioner becomes (or stops being) the champion."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.core.settings import PromotionSettings, get_settings
from radcap.tasks.promote import (
    contenders,
    decide,
    latest_signed_agreement,
    record_decision,
    restore_previous,
    score_versions,
)


@flow(name="promote-captioner")
def promote_flow(
    data_dir: Path,
    name: str | None = None,
    candidate: str | None = None,
    settings: PromotionSettings | None = None,
    dry_run: bool = False,
    out: Path | None = None,
) -> dict:
    cfg = settings or get_settings().promotion
    name = name or get_settings().captioner.registered_name
    new, current = contenders(name, candidate, cfg.alias)
    versions = [new] if current in (None, new) else [new, current]
    scores, reports = score_versions(data_dir, name, versions, cfg.split, cfg.primary_metric == "METEOR")
    decision = decide(new, current, quote(scores), cfg)
    latest = latest_signed_agreement(data_dir, quote(reports), cfg.latest_signed_reports)
    return record_decision(name, new, current, decision, quote(scores), cfg, data_dir, dry_run, out, quote(latest))


@flow(name="rollback-captioner")
def rollback_flow(name: str | None = None, alias: str | None = None) -> dict:
    settings = get_settings()
    return restore_previous(name or settings.captioner.registered_name, alias or settings.promotion.alias)
