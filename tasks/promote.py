"""Gated promotion: score candidate and champion on the same held-out reports, then move the alias or not."""

from __future__ import annotations

import time
from pathlib import Path

from prefect.logging import get_run_logger

from radcap.captioning.bundle import load_captioner
from radcap.captioning.data import load_caption_sets
from radcap.core.errors import RadcapError
from radcap.core.io import write_json
from radcap.core.settings import PromotionSettings
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
def score_versions(data_dir: Path, name: str, versions: list[str], split: str, meteor: bool) -> dict[str, ReportScores]:
    """Caption and score each version on the reports of `split` that every version has features for."""
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
    scores = {}
    for version, (bundle, data) in loaded.items():
        ids = sorted(common)
        data = data.subset(ids)
        scores[version] = score_reports(
            dict(zip(ids, data.texts)), dict(zip(ids, bundle.report(data.features(slice(None))))), meteor=meteor
        )
        summary = scores[version].summary()
        get_run_logger().info(
            "version %s on %d %s reports: %s",
            version,
            len(ids),
            split,
            {k: round(v, 4) for k, v in summary.items() if isinstance(v, float)},
        )
    return scores


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
