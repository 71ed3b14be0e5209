"""Gated promotion: score candidate and champion on the same held-out reports, then move the alias or not."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from prefect.logging import get_run_logger

from radcap.captioning.bundle import load_captioner
from radcap.captioning.data import load_caption_sets
from radcap.core.catalog import DataCatalog
from radcap.core.errors import RadcapError
from radcap.core.io import read_table, write_json
from radcap.core.settings import PromotionSettings
from radcap.data_contracts import REPORTS
from radcap.metrics.scores import CAPTION_METRICS, CLINICAL_METRICS, ReportScores, score_reports
from radcap.registry import promotion
from radcap.registry import store as registry
from radcap.registry.promotion import Decision
from radcap.tasks import registry_task, uncached


@registry_task
def contenders(name: str, candidate: str | None, alias: str) -> tuple[str, str | None]:
    """(candidate version, champion version or None); the candidate defaults to the newest version."""
    _, version = registry.parse_model_uri(f"models:/{name}/{candidate or 'latest'}")
    return version, registry.champion(name, alias)


@uncached
def score_versions(
    data_dir: Path, name: str, versions: list[str], split: str, meteor: bool
) -> tuple[dict[str, ReportScores], dict[str, dict[str, str]]]:
    """Caption and score each version on the reports of `split` that every version has features for; the scores
    and each version's reports (by report id)."""
    loaded = {}
    for version in versions:
        bundle = load_captioner(f"models:/{name}/{version}").bundle
        config = bundle.config
        loaded[version] = (
            bundle,
            load_caption_sets(
                data_dir, config.encoder_version, (split,), config.max_views, grid=bundle.model.attention, min_size=0
            )[split],
        )
    common = set.intersection(*(set(s.report_ids) for _, s in loaded.values()))
    if not common:
        raise RadcapError(f"{data_dir}: no '{split}' report has features for every compared model's encoder")
    scores, reports = {}, {}
    for version, (bundle, data) in loaded.items():
        ids = sorted(common)
        data = data.subset(ids)
        reports[version] = dict(zip(ids, bundle.report(data.features(slice(None)))))
        scores[version] = score_reports(dict(zip(ids, data.texts)), reports[version], meteor=meteor)
        summary = scores[version].summary()
        get_run_logger().info(
            "version %s on %d %s reports: %s",
            version,
            len(ids),
            split,
            {k: round(v, 4) for k, v in summary.items() if isinstance(v, float)},
        )
    return scores, reports


@uncached
def latest_signed_agreement(data_dir: Path, reports: dict[str, dict[str, str]], latest: int) -> dict:
    """Each version's agreement (radcap.monitoring) with the `latest` signed clinical reports among the compared
    ones (what radiologists signed most recently): shown in the promotion record, never deciding it. Empty when
    the data holds no signed reports."""
    from radcap.core.settings import get_settings
    from radcap.monitoring.agreement import score_studies, with_intervals

    table = read_table(DataCatalog(data_dir).reports, REPORTS)
    compared = set.intersection(*(set(r) for r in reports.values())) if reports else set()
    signed = table[table["report_status"].notna() & table["report_id"].isin(compared)]
    signed = signed.sort_values("reported_at", kind="stable").tail(latest)
    if signed.empty:
        return {}
    cfg = get_settings().monitor
    out: dict = {"reports": len(signed), "signed_from": str(signed["reported_at"].min()), "versions": {}}
    for version, texts in reports.items():
        pairs = pd.DataFrame({"draft": [texts[i] for i in signed["report_id"]], "final": list(signed["target"])})
        values = with_intervals(score_studies(pairs), cfg.bootstrap_samples, cfg.confidence)
        out["versions"][version] = {k: round(v, 4) for k, v in values.items()}
    return out


@uncached
def decide(candidate: str, champion: str | None, scores: dict[str, ReportScores], cfg: PromotionSettings) -> Decision:
    return promotion.decide(candidate, champion, scores, cfg)


@registry_task
def record_decision(
    name: str,
    candidate: str,
    champion: str | None,
    decision: Decision,
    scores: dict[str, ReportScores],
    cfg: PromotionSettings,
    data_dir: Path,
    dry_run: bool,
    out: Path | None = None,
    latest_signed: dict | None = None,
) -> dict:
    """Move the alias (unless dry run), tag both versions with the decision and both metric sets, and write
    the record to `out/promotion-NAME-vN.json` when `out` is given."""
    outcome = "dry-run" if dry_run else ("promoted" if decision.promote else "refused")
    metrics = {
        v: {
            **{m: None if (x := s.metric(m)) is None else round(x, 4) for m in (*CAPTION_METRICS, *CLINICAL_METRICS)},
            "reports": len(s),
        }
        for v, s in scores.items()
    }
    record = {
        "outcome": outcome,
        "reason": decision.reason,
        "candidate": candidate,
        "champion": champion,
        "split": cfg.split,
        "data_dir": str(data_dir),
        "primary_metric": cfg.primary_metric,
        "gain": {k: round(v, 4) for k, v in decision.gain.items()},
        "confidence": cfg.confidence,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": metrics,
        "latest_signed_reports": latest_signed or {},  # shown beside the decision, never part of it
    }
    if not dry_run:
        registry.tag_version(name, candidate, {"promotion": record})
        if champion and champion != candidate:
            registry.tag_version(name, champion, {f"challenged_by_{candidate}": record})
        if decision.promote:
            registry.set_champion(name, candidate, cfg.alias)
    get_run_logger().info(
        "%s version %s: %s (%s)",
        outcome,
        candidate,
        "alias moved" if outcome == "promoted" else "alias unchanged",
        decision.reason,
    )
    if out is not None:
        write_json(record, out / f"promotion-{name}-v{candidate}.json")
    return record


@registry_task
def restore_previous(name: str, alias: str) -> dict:
    past, current = registry.history(name), registry.champion(name, alias)
    if len(past) < 2:
        raise RadcapError(f"{name}: no previous champion to restore (history: {past or 'empty'})")
    if current != past[-1]:
        raise RadcapError(
            f"{name}: the '{alias}' alias points to version {current}, but the promotion history "
            f"says {past[-1]}: it was moved outside radcap; set it by hand, or promote again"
        )
    previous = past[-2]
    registry.set_champion(name, previous, alias, rolled_back=True)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    registry.tag_version(name, previous, {"rollback": {"restored_at": when, "replaced": current}})
    if current:
        registry.tag_version(name, current, {"rolled_back": {"at": when, "restored": previous}})
    return {"model": name, "champion": previous, "replaced": current}
