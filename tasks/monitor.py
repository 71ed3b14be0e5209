"""Monitoring tasks: pair drafts with signed reports, score them per version and week, check the champion for
drift, and record the night's numbers (files, MLflow, the registry)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect.logging import get_run_logger

from radcap.captioning.store import read_caption_history
from radcap.core.catalog import DataCatalog
from radcap.core.errors import RadcapError
from radcap.core.io import read_table, write_json, write_table
from radcap.core.settings import Settings
from radcap.data_contracts import MONITOR_STUDIES, MONITOR_WEEKS, REPORTS
from radcap.monitoring.agreement import score_studies, weekly_table
from radcap.monitoring.drift import DriftReport, check_drift
from radcap.monitoring.plots import trend_figure
from radcap.monitoring.production import drafts_table, pair_with_signed
from radcap.pacs.exports import identifiers
from radcap.tasks import registry_task, uncached


def _registered(model: str) -> bool:
    """A registered model name, not a bundle folder (the captions table's `model` holds either)."""
    return "/" not in model and not model.startswith(".")


class DriftAlarm(RadcapError):
    """The champion's drafts agree less with signed reports than in its first weeks (or are flagged more often)."""


@dataclass
class Agreement:
    drafts: pd.DataFrame
    scored: pd.DataFrame
    weekly: pd.DataFrame


@uncached
def score_agreement(captions: Path, data: list[Path], settings: Settings) -> Agreement:
    """Drafts (caption history of `captions`) against signed reports (the data directories `data`), per study and
    per version and week. A study signed in two feeds is compared with its latest signed report."""
    history = read_caption_history(captions)
    reports = pd.concat([read_table(DataCatalog(d).reports, REPORTS) for d in data], ignore_index=True)
    reports = reports.sort_values("reported_at", kind="stable", na_position="first").drop_duplicates(
        "study_id", keep="last"
    )
    ids = identifiers(settings.caption.identifiers, settings.caption.id_salt)
    drafts = drafts_table(history)
    scored = score_studies(pair_with_signed(drafts, reports, ids))
    cfg = settings.monitor
    weekly = weekly_table(drafts, scored, cfg.bootstrap_samples, cfg.confidence)
    get_run_logger().info(
        "%d drafts of %d studies; %d with a signed report seen after the draft",
        len(drafts),
        drafts["study_id"].nunique(),
        len(scored),
    )
    return Agreement(drafts, scored, weekly)


@registry_task
def champion_version(agreement: Agreement, model: str | None) -> tuple[str | None, str | None]:
    """(registered name, champion version): the registry's champion of the drafts' model where it is registered,
    else the version that wrote the newest draft."""
    from radcap.registry.store import champion

    drafts = agreement.drafts
    if drafts.empty:
        return None, None
    name = model or str(drafts.sort_values("captioned_at")["model"].iloc[-1])
    version = None
    if _registered(name):
        try:
            version = champion(name)
        except RadcapError:
            version = None
    mine = drafts[drafts["model"] == name]
    if version is None or version not in set(mine["model_version"]):
        version = str(mine.sort_values("captioned_at")["model_version"].iloc[-1]) if not mine.empty else None
    return name, version


@uncached
def drift_check(agreement: Agreement, name: str | None, version: str | None, settings: Settings, now=None):
    if version is None:
        return DriftReport("", "not enough data", "no drafts to monitor")
    drafts = agreement.drafts[(agreement.drafts["model"] == name) & (agreement.drafts["model_version"] == version)]
    scored = agreement.scored
    scored = scored[(scored["model"] == name) & (scored["model_version"] == version)]
    return check_drift(drafts, scored, version, settings.monitor, now=now)


@uncached
def write_monitor_outputs(agreement: Agreement, drift: DriftReport, out: Path) -> dict:
    """`OUT/studies.parquet`, `OUT/weeks.parquet`, then `OUT/drift.json` last."""
    out.mkdir(parents=True, exist_ok=True)
    studies = agreement.scored.drop(columns=["reported_at"], errors="ignore")
    write_table(
        MONITOR_STUDIES.validate(studies[MONITOR_STUDIES.column_names]), out / "studies.parquet", MONITOR_STUDIES
    )
    write_table(MONITOR_WEEKS.validate(agreement.weekly), out / "weeks.parquet", MONITOR_WEEKS)
    write_json(drift.to_json(), out / "drift.json")
    return {"studies": out / "studies.parquet", "weeks": out / "weeks.parquet", "drift": out / "drift.json"}


@registry_task
def record_night(agreement: Agreement, drift: DriftReport, name: str | None, settings: Settings) -> str:
    """An MLflow run for the night (the window's metrics, the weekly table, the trend plot); on an alarm, the
    champion version tagged `degraded` in the registry. Returns the run id."""
    from radcap.registry.store import tag_version
    from radcap.registry.tracking import log_dict, log_figure, log_metrics, tracked_run

    params = {"model": name or "", "version": drift.version, "status": drift.status}
    with tracked_run(settings.tracking.monitor, f"monitor {pd.Timestamp.now(tz='UTC'):%Y-%m-%d}", params) as run_id:
        log_metrics({f"window_{c.metric}": c.window for c in drift.checks})
        log_metrics({f"baseline_{c.metric}": c.baseline for c in drift.checks})
        log_dict(json.loads(agreement.weekly.to_json(orient="records")), "weeks.json")
        log_dict(drift.to_json(), "drift.json")
        if not agreement.weekly.empty:
            log_figure(trend_figure(agreement.weekly), "agreement_trend.png")
    if drift.status == "degraded" and name and _registered(name):
        try:
            tag_version(name, drift.version, {"degraded": "true", "degraded_reason": drift.message[:4000]})
        except RadcapError as exc:
            get_run_logger().warning("could not tag %s version %s degraded: %s", name, drift.version, exc)
    return run_id
