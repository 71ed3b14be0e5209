"""The drift alarm: a rolling window of the champion's drafts against its first weeks in production.

Baseline: the champion's drafts of its first `baseline_days` (from its first draft). Window: its drafts of the
last `window_days` up to `now` (default: its newest draft). Both need `min_studies` studies with a signed report
(agreement metrics) or drafted (out-of-domain rate), and the window must begin after the baseline ends;
otherwise the check says so and raises no alarm.

An agreement metric alarms when the window is more than `max_relative_drop` below the baseline AND the
bootstrap interval of (window - baseline) lies wholly below zero; the out-of-domain rate alarms when it rose by
more than `max_ood_rise` AND the interval of the rise lies wholly above zero. Intervals resample the baseline's
and the window's studies independently (they are different studies). The false-alarm rate and the detection
delay of this rule are measured by benchmarks/drift_alarm.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from radcap.core.settings import MonitorSettings
from radcap.monitoring.agreement import METRICS, statistics


@dataclass
class Check:
    metric: str
    baseline: float
    window: float
    delta: float
    low: float
    high: float
    alarm: bool


@dataclass
class DriftReport:
    version: str
    status: str  # ok | degraded | not enough data
    message: str
    baseline_period: tuple[str, str] | None = None
    window_period: tuple[str, str] | None = None
    baseline_studies: int = 0
    window_studies: int = 0
    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _interval(deltas: np.ndarray, confidence: float) -> tuple[float, float]:
    deltas = deltas[~np.isnan(deltas)]
    if not len(deltas):
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(deltas, alpha)), float(np.quantile(deltas, 1 - alpha))


def check_drift(
    drafts: pd.DataFrame,
    scored: pd.DataFrame,
    version: str,
    cfg: MonitorSettings,
    now: pd.Timestamp | None = None,
    seed: int = 0,
) -> DriftReport:
    """`drafts`: the champion's drafted studies (captioned_at, in_domain); `scored`: those with a signed report,
    scored by `agreement.score_studies`."""
    drafted_at = pd.to_datetime(drafts["captioned_at"], utc=True)
    if drafts.empty:
        return DriftReport(version, "not enough data", f"version {version} has no drafts")
    start = drafted_at.min()
    baseline_end = start + pd.Timedelta(days=cfg.baseline_days)
    end = pd.Timestamp(now).tz_convert("UTC") if now is not None else drafted_at.max()
    window_start = end - pd.Timedelta(days=cfg.window_days)
    report = DriftReport(
        version,
        "ok",
        "",
        baseline_period=(str(start), str(baseline_end)),
        window_period=(str(window_start), str(end)),
    )
    if window_start < baseline_end:
        report.status = "not enough data"
        report.message = (
            f"version {version} has been in production since {start.date()}: the window must begin after its "
            f"{cfg.baseline_days}-day baseline ends ({baseline_end.date()})"
        )
        return report
    scored_at = pd.to_datetime(scored["captioned_at"], utc=True)  # when the draft was written, as for `drafts`
    in_baseline, in_window = scored_at < baseline_end, (scored_at > window_start) & (scored_at <= end)
    base, win = scored[in_baseline.to_numpy()], scored[in_window.to_numpy()]
    drafted_base = drafts[(drafted_at < baseline_end).to_numpy()]
    drafted_win = drafts[((drafted_at > window_start) & (drafted_at <= end)).to_numpy()]
    report.baseline_studies, report.window_studies = len(base), len(win)
    rng = np.random.default_rng(seed)
    b = cfg.bootstrap_samples
    if min(len(base), len(win)) >= cfg.min_studies:
        point_base, point_win = statistics(base), statistics(win)
        boot_base = statistics(base, rng.integers(0, len(base), (b, len(base))))
        boot_win = statistics(win, rng.integers(0, len(win), (b, len(win))))
        for metric in METRICS:
            before, after = float(point_base[metric][0]), float(point_win[metric][0])
            low, high = _interval(boot_win[metric] - boot_base[metric], cfg.confidence)
            dropped = before > 0 and (before - after) / before > cfg.max_relative_drop
            report.checks.append(Check(metric, before, after, after - before, low, high, bool(dropped and high < 0)))
    if min(len(drafted_base), len(drafted_win)) >= cfg.min_studies:
        flags_base = drafted_base["in_domain"].eq(False).to_numpy(float)
        flags_win = drafted_win["in_domain"].eq(False).to_numpy(float)
        deltas = flags_win[rng.integers(0, len(flags_win), (b, len(flags_win)))].mean(axis=1) - flags_base[
            rng.integers(0, len(flags_base), (b, len(flags_base)))
        ].mean(axis=1)
        low, high = _interval(deltas, cfg.confidence)
        before, after = float(flags_base.mean()), float(flags_win.mean())
        alarm = after - before > cfg.max_ood_rise and low > 0
        report.checks.append(Check("ood_rate", before, after, after - before, low, high, bool(alarm)))
    if not report.checks:
        report.status = "not enough data"
        report.message = (
            f"version {version}: {len(base)} baseline and {len(win)} window studies with a signed report "
            f"(at least {cfg.min_studies} each are needed)"
        )
        return report
    alarms = [c for c in report.checks if c.alarm]
    if alarms:
        report.status = "degraded"
        report.message = f"version {version} degraded: " + "; ".join(
            f"{c.metric} {c.baseline:.3f} -> {c.window:.3f} (interval of the change {c.low:+.3f} to {c.high:+.3f})"
            for c in alarms
        )
    else:
        report.message = f"version {version}: no drift beyond the bounds ({len(win)} studies in the window)"
    return report
