"""Train/val/test assignment with no leakage: a group (patient, case or study) never spans two splits."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

from radcap.core.errors import RadcapError
from radcap.core.settings import SplitRules
from radcap.ingestion.common import Parsed

SPLIT_ORDER = ("train", "val", "test")


def hash_split(group_id: str, rules: SplitRules) -> str:
    """Deterministic split from a salted hash of the group id: stable across runs and machines."""
    digest = hashlib.sha256(f"{rules.salt}:{group_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < rules.train:
        return "train"
    return "val" if u < rules.train + rules.val else "test"


def in_selection_carve(group_id: str, rules: SplitRules) -> bool:
    """True when a train group (patient, case) is in the carved selection set (`SplitRules.select_*`): where
    every model's choices (early stopping, penalties, thresholds) are made when `select_on` is "carve"."""
    digest = hashlib.sha256(f"{rules.select_salt}:{group_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rules.select_fraction


def selection_mask(splits, groups, rules: SplitRules) -> list[bool]:
    """Which rows (their split, their group) form the selection set: the train rows of carved groups with
    `select_on == "carve"`, else the val rows. Never a val/test row under "carve"."""
    if rules.select_on == "val":
        return [split == "val" for split in splits]
    return [split == "train" and in_selection_carve(str(group), rules) for split, group in zip(splits, groups)]


def read_r2gen_split(path: Path) -> dict[str, str]:
    """R2Gen `annotation.json` -> {study key (image name without its last '-NNNN'): split}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {entry["id"]: split for split, entries in data.items() for entry in entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RadcapError(f"{path}: not an R2Gen annotation file ({exc})") from exc


def apply_r2gen(parsed: Parsed, split_of: dict[str, str]) -> None:
    """Join reports to the R2Gen split through their image names; reports it does not list stay 'unassigned'."""
    images_by_report = defaultdict(list)
    for image in parsed.images:
        images_by_report[image["report_id"]].append(image["image_id"])
    kept = []
    for report in parsed.reports:
        splits = {
            split_of[k] for k in (i.rsplit("-", 1)[0] for i in images_by_report[report["report_id"]]) if k in split_of
        }
        if len(splits) > 1:
            parsed.reject(
                report["source"], f"images are in several R2Gen splits {sorted(splits)}", item=report["report_id"]
            )
            continue
        if splits:
            report["split"], report["split_source"] = splits.pop(), "r2gen"
        kept.append(report)
    parsed.reports = kept


def apply_hash_split(parsed: Parsed, rules: SplitRules) -> None:
    """Give every report that has no split yet the hash split of its group."""
    for report in parsed.reports:
        if report["split"] == "unassigned":
            report["split"], report["split_source"] = hash_split(report["group_id"], rules), "hash"


def enforce_no_leakage(parsed: Parsed) -> None:
    """A group found in several splits keeps its most common one; its reports elsewhere become rejects."""
    splits_of_group: dict[str, Counter] = defaultdict(Counter)
    for report in parsed.reports:
        splits_of_group[report["group_id"]][report["split"]] += 1
    kept = []
    for report in parsed.reports:
        counts = splits_of_group[report["group_id"]]
        home = max(counts, key=lambda s: (counts[s], -SPLIT_ORDER.index(s) if s in SPLIT_ORDER else -9))
        if report["split"] != home:
            parsed.reject(
                report["source"],
                f"group {report['group_id']} is also in split '{home}'; keeping it in '{report['split']}' would leak",
                item=report["report_id"],
            )
            continue
        kept.append(report)
    parsed.reports = kept
