"""The drift alarm: the rule on simulated streams (a shifted one trips it, an unshifted one does not), and
`radcap monitor` on a captions folder's Delta history: exit 3, the champion tagged `degraded`, the night's MLflow
run; exit 0 on an unshifted stream."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from radcap.core.settings import MonitorSettings
from radcap.monitoring.agreement import score_studies
from radcap.monitoring.drift import check_drift
from radcap.monitoring.simulation import Regime, stream
from tests.conftest import run_cli_here

POOL = [
    "no acute cardiopulmonary abnormality.",
    "mild cardiomegaly without edema.",
    "small left pleural effusion.",
    "right lower lobe pneumonia.",
    "no pneumothorax or pleural effusion.",
    "stable postoperative changes of the chest.",
    "low lung volumes with bibasilar atelectasis.",
    "hyperinflated lungs consistent with emphysema.",
    "enlarged cardiac silhouette and pulmonary edema.",
    "left upper lobe nodule, recommend ct.",
]
CFG = MonitorSettings(baseline_days=28, window_days=7, min_studies=30, bootstrap_samples=300)
DEGRADED = Regime(right=0.15)


def _check(frame: pd.DataFrame):
    scored = score_studies(frame)
    return check_drift(frame, scored, "1", CFG)


def test_a_shifted_stream_trips_the_alarm_and_an_unshifted_one_does_not():
    healthy = _check(stream(POOL, days=42, per_day=12, seed=1))
    assert healthy.status == "ok", healthy.message
    assert {c.metric for c in healthy.checks} == {"CIDEr", "clinical_F1", "words_kept", "ood_rate"}
    shifted = _check(stream(POOL, days=42, per_day=12, seed=1, after=DEGRADED, shift_day=35))
    assert shifted.status == "degraded"
    assert {c.metric for c in shifted.checks if c.alarm} >= {"words_kept"}
    flagged = _check(stream(POOL, days=42, per_day=12, seed=2, after=Regime(ood=0.4), shift_day=35))
    assert [c.metric for c in flagged.checks if c.alarm] == ["ood_rate"]


def test_too_little_history_is_said_and_never_an_alarm():
    young = _check(stream(POOL, days=20, per_day=12, seed=3, after=DEGRADED, shift_day=10))
    assert young.status == "not enough data" and "baseline" in young.message
    sparse = _check(stream(POOL, days=42, per_day=2, seed=3, after=DEGRADED, shift_day=35))
    assert sparse.status == "not enough data" and "at least 30" in sparse.message


def _captions_folder(folder: Path, frame: pd.DataFrame, model: str) -> None:
    """The caption history a captions folder would hold after these drafts (a Delta table)."""
    from deltalake import write_deltalake

    from radcap.data_contracts import CAPTION_HISTORY

    history = frame.rename(columns={"draft": "caption"}).assign(
        model=model, encoder_version="e1", ood_reason=None, images=1, table_version=1
    )
    write_deltalake(str(folder / "caption_history"), CAPTION_HISTORY.validate(history[CAPTION_HISTORY.column_names]))


def _signed_reports(folder: Path, frame: pd.DataFrame) -> None:
    from radcap.core.io import write_table
    from radcap.core.settings import TextRules
    from radcap.data_contracts import REPORTS
    from radcap.ingestion.common import report_row

    rows = []
    for row in frame.to_dict("records"):
        report = report_row(
            report_id=row["study_id"], study_id=row["study_id"], group_id="g", dataset="hl7", source="x",
            rules=TextRules(), impression_raw=row["final"],
        )  # fmt: skip
        report.pop("_unusable")
        report.update(report_status="final", reported_at=row["captioned_at"] + pd.Timedelta(hours=2))
        rows.append(report)
    folder.mkdir(parents=True)
    write_table(REPORTS.validate(pd.DataFrame(rows)), folder / "reports.parquet", REPORTS)


@pytest.mark.parametrize("shifted", [False, True])
def test_monitor_tags_a_degraded_champion_and_fails_with_one_message(tmp_path, prefect_api, shifted):
    import mlflow
    from mlflow import MlflowClient

    name = f"radcap-drift-test-{int(shifted)}"
    client = MlflowClient()
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(tmp_path)).version
    client.set_registered_model_alias(name, "champion", version)
    # the default settings: a 28-day baseline, then a 14-day window (shifted throughout when `shifted`)
    frame = stream(POOL, days=49, per_day=12, seed=5, after=DEGRADED if shifted else None, shift_day=35)
    frame["model_version"] = str(version)
    _captions_folder(tmp_path / "out", frame, name)
    _signed_reports(tmp_path / "data", frame)
    env = {"RADCAP_MONITOR__BOOTSTRAP_SAMPLES": "300"}
    done = run_cli_here("monitor", "--captions", str(tmp_path / "out"), "--reports", str(tmp_path / "data"), env=env)
    tags = client.get_model_version(name, version).tags
    drift = json.loads((tmp_path / "out" / "monitor" / "drift.json").read_text())
    if shifted:
        assert done.returncode == 3, done.stdout + done.stderr
        assert "drift alarm" in done.stderr and "degraded" in done.stderr and "Traceback" not in done.stderr
        assert tags.get("degraded") == "true" and drift["status"] == "degraded"
    else:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "degraded" not in tags and drift["status"] == "ok"
        assert "words kept" in done.stdout  # the weekly table
    runs = mlflow.search_runs(experiment_names=["radcap-monitor"], filter_string=f"params.model = '{name}'")
    assert len(runs) == 1 and runs["params.status"].iloc[0] == drift["status"]
    weeks = pd.read_parquet(tmp_path / "out" / "monitor" / "weeks.parquet")
    assert len(weeks) == 7 and weeks["signed"].sum() == len(frame)  # 49 days from a Monday
