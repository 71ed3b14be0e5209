"""`radcap monitor`: radcap's drafts against the reports radiologists signed, per model version and week, and
the champion's drift alarm (radcap.monitoring)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow
from prefect.utilities.annotations import quote

from radcap.core.settings import Settings, get_settings
from radcap.tasks.monitor import (
    DriftAlarm,
    champion_version,
    drift_check,
    record_night,
    score_agreement,
    write_monitor_outputs,
)


@flow(name="monitor-agreement", log_prints=True)
def monitor_flow(
    captions: Path,
    reports: list[Path],
    out: Path | None = None,
    model: str | None = None,
    now: str | None = None,
    settings: Settings | None = None,
) -> dict:
    """Writes OUT (default CAPTIONS/monitor); raises DriftAlarm after recording when the champion degraded."""
    settings = settings or get_settings()
    out = out or Path(captions) / "monitor"
    agreement = score_agreement(captions, reports, settings)
    name, version = champion_version(quote(agreement), model)
    drift = drift_check(quote(agreement), name, version, settings, pd.Timestamp(now) if now else None)
    files = write_monitor_outputs(quote(agreement), drift, out)
    run_id = record_night(quote(agreement), drift, name, settings)
    summary = {
        "model": name,
        "champion_version": version,
        "drafts": len(agreement.drafts),
        "studies_with_signed_report": len(agreement.scored),
        "status": drift.status,
        "message": drift.message,
        "mlflow_run": run_id,
        **{k: str(v) for k, v in files.items()},
        "weeks": agreement.weekly,
        "checks": drift.checks,
    }
    if drift.status == "degraded":
        raise DriftAlarm(drift.message + f" (tagged degraded in the registry; details in {files['drift']})")
    return summary
