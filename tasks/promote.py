"""Gated promotion: score candidate and champion on the same held-out reports, then move the alias or not."""

from __future__ import annotations

import time
from pathlib import Path

from prefect.logging import get_run_logger

from data_contracts import IMAGES, REPORTS
from radcap.caption_data import build_caption_set
from radcap.catalog import DataCatalog
from radcap.errors import RadcapError
from radcap.features import FeatureStore
from radcap.io import read_table
from radcap.metrics import caption_metrics, clinical_metrics
from radcap.settings import PromotionSettings
from tasks import registry_task, uncached
from tasks.evaluate import resolve_captioner


@registry_task
def contenders(name: str, candidate: str | None, alias: str) -> tuple[str, str | None]:
    """(candidate version, champion version or None); the candidate defaults to the newest version."""
    from radcap.registry import champion, parse_model_uri

    _, version = parse_model_uri(f"models:/{name}/{candidate or 'latest'}")
    return version, champion(name, alias)


@uncached
def score_versions(data_dir: Path, name: str, versions: list[str], split: str, meteor: bool) -> dict[str, dict]:
    """Caption and score each version on the reports of `split` that every version has features for."""
    catalog = DataCatalog(data_dir)
    reports, images, store = read_table(catalog.reports, REPORTS), read_table(catalog.images, IMAGES), FeatureStore(catalog.features)
    loaded = {}
    for version in versions:
        bundle, _ = resolve_captioner(f"models:/{name}/{version}")
        cfg = bundle.config
        loaded[version] = (bundle, build_caption_set(reports, images, store, cfg["encoder_version"], split,
                                                     cfg["max_views"], grid=bundle.model.attention))
    common = set.intersection(*(set(s.report_ids) for _, s in loaded.values()))
    if not common:
        raise RadcapError(f"{data_dir}: no '{split}' report has features for every compared model's encoder")
    scores = {}
    for version, (bundle, data) in loaded.items():
        keep = [i for i, rid in enumerate(data.report_ids) if rid in common]
        captions = bundle.report(data.features(keep))
        ids = [data.report_ids[i] for i in keep]
        references = {rid: data.texts[i] for rid, i in zip(ids, keep)}
        hypotheses = dict(zip(ids, captions))
        clinical = clinical_metrics(references, hypotheses)
        scores[version] = {**caption_metrics({k: [v] for k, v in references.items()}, hypotheses, meteor=meteor),
                           **{f"clinical_{k}": v for k, v in clinical.items() if k != "per_finding"},
                           "reports": len(ids)}
        get_run_logger().info("version %s on %d %s reports: %s", version, len(ids), split,
                              {k: round(v, 4) for k, v in scores[version].items()})
    return scores


@uncached
def decide(candidate: str, champion: str | None, scores: dict[str, dict], cfg: PromotionSettings) -> dict:
    primary, clinical = cfg.primary_metric, cfg.clinical_metric
    if champion is None:
        return {"promote": True, "reason": "no champion yet: the first model becomes champion"}
    if champion == candidate:
        return {"promote": False, "reason": f"version {candidate} is already the champion"}
    new, old = scores[candidate], scores[champion]
    if new[primary] <= old[primary]:
        return {"promote": False, "reason": f"{primary} {new[primary]:.4f} is not above the champion's {old[primary]:.4f}"}
    if new[clinical] < old[clinical] - cfg.clinical_tolerance:
        return {"promote": False, "reason": f"{clinical} {new[clinical]:.4f} loses more than {cfg.clinical_tolerance} "
                f"against the champion's {old[clinical]:.4f}"}
    return {"promote": True, "reason": f"{primary} {new[primary]:.4f} > {old[primary]:.4f} and {clinical} "
            f"{new[clinical]:.4f} within {cfg.clinical_tolerance} of {old[clinical]:.4f}"}


@registry_task
def record_decision(name: str, candidate: str, champion: str | None, decision: dict, scores: dict,
                    cfg: PromotionSettings, data_dir: Path, dry_run: bool) -> dict:
    """Move the alias (unless dry run) and tag both versions with the decision and both metric sets."""
    from radcap.registry import set_champion, tag_version

    outcome = "dry-run" if dry_run else ("promoted" if decision["promote"] else "refused")
    record = {"outcome": outcome, "reason": decision["reason"], "candidate": candidate, "champion": champion,
              "split": cfg.split, "data_dir": str(data_dir), "primary_metric": cfg.primary_metric,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "metrics": {v: {k: round(x, 4) for k, x in s.items()} for v, s in scores.items()}}
    if not dry_run:
        tag_version(name, candidate, {"promotion": record})
        if champion and champion != candidate:
            tag_version(name, champion, {f"challenged_by_{candidate}": record})
        if decision["promote"]:
            set_champion(name, candidate, cfg.alias)
    get_run_logger().info("%s version %s: %s (%s)", outcome, candidate, "alias moved" if outcome == "promoted" else
                          "alias unchanged", decision["reason"])
    return record


@registry_task
def restore_previous(name: str, alias: str) -> dict:
    from radcap.registry import champion, history, set_champion, tag_version

    past, current = history(name), champion(name, alias)
    if len(past) < 2:
        raise RadcapError(f"{name}: no previous champion to restore (history: {past or 'empty'})")
    previous = past[-2]
    set_champion(name, previous, alias, rolled_back=True)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tag_version(name, previous, {"rollback": {"restored_at": when, "replaced": current}})
    if current:
        tag_version(name, current, {"rolled_back": {"at": when, "restored": previous}})
    return {"model": name, "champion": previous, "replaced": current}
