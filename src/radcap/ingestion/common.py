"""What every source reader returns, and the helpers they share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from radcap.core.settings import TextRules
from radcap.text.normalize import choose_target, clean_raw, normalize, placeholder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", "")


@dataclass
class Parsed:
    """Rows as dicts; the ingest task turns them into contract tables.

    `inputs` counts report-level inputs (files, lines or report groups) and `image_inputs` image-level ones
    (image references, projection rows, manifest rows): for each kind, rows + rejects (+ pending) add up to the inputs,
    which `tasks.ingest.build_tables` checks. Each image row's `_source` says where it came from (not written).
    """

    reports: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    pending: list[dict] = field(default_factory=list)  # signed reports waiting for their images (PENDING rows)
    inputs: int = 0
    image_inputs: int = 0

    def reject(self, source: str, reason: str, item: str | None = None, kind: str = "report") -> None:
        self.rejects.append({"source": source, "item": item, "kind": kind, "stage": "ingest", "reason": reason})

    def add_image(self, row: dict, source: str) -> None:
        """An image row from input `source` (counted as an image input)."""
        self.image_inputs += 1
        self.images.append({**row, "_source": source})

    def reject_image(self, source: str, reason: str, image_id: str | None) -> None:
        """An image input that is rejected before it becomes a row (counted as an image input)."""
        self.image_inputs += 1
        self.reject(source, reason, item=image_id, kind="image")


def report_row(
    *,
    report_id: str,
    study_id: str,
    group_id: str,
    dataset: str,
    source: str,
    rules: TextRules,
    findings_raw: object = None,
    impression_raw: object = None,
    caption_raw: object = None,
    indication: object = None,
    comparison: object = None,
    mesh: list[str] | None = None,
    split: str = "unassigned",
    split_source: str = "none",
) -> dict:
    """A reports row with its normalized columns; `target` is None when there is no text to learn from, and
    then `_unusable` says why when a section held only a placeholder (the key is not a column)."""
    findings_raw, impression_raw, caption_raw = (
        clean_raw(v, rules) for v in (findings_raw, impression_raw, caption_raw)
    )
    findings, impression = normalize(findings_raw, rules), normalize(impression_raw, rules)
    caption = normalize(caption_raw, rules)
    placeholders = {
        name: raw
        for name, value, raw in (
            ("findings", findings, findings_raw),
            ("impression", impression, impression_raw),
            ("caption", caption, caption_raw),
        )
        if placeholder(value, rules)
    }
    findings = None if "findings" in placeholders else findings
    impression = None if "impression" in placeholders else impression
    if caption_raw is not None:
        target, section = (None if "caption" in placeholders else caption), "caption"
    else:
        target, section = choose_target(findings, impression, rules)
    return {
        "report_id": report_id,
        "study_id": study_id,
        "group_id": group_id,
        "dataset": dataset,
        "source": source,
        "split": split,
        "split_source": split_source,
        "indication": clean_raw(indication, rules),
        "comparison": clean_raw(comparison, rules),
        "findings_raw": findings_raw,
        "impression_raw": impression_raw,
        "caption_raw": caption_raw,
        "findings": findings,
        "impression": impression,
        "target": target,
        "target_section": section,
        "mesh": list(mesh or []),
        "n_images": 0,
        "reported_at": None,
        "report_status": None,
        "_unusable": None
        if target is not None or not placeholders
        else "placeholder text instead of a report: "
        + "; ".join(f"{name} '{str(raw)[:60]}'" for name, raw in placeholders.items()),
    }


def image_row(image_id: str, report: dict, **extra: object) -> dict:
    row = {
        "image_id": image_id,
        "report_id": report["report_id"],
        "study_id": report["study_id"],
        "dataset": report["dataset"],
        "split": report["split"],
        "path": None,
        "view": "unknown",
        "modality": None,
        "plane": None,
        "location": None,
        "location_category": None,
        "labels": [],
    }
    row.update(extra)
    return row


def find_image(root: Path | None, *names: str) -> str | None:
    """Absolute path of the first existing `root/name[.ext]`, trying the common image extensions."""
    if root is None:
        return None
    for name in names:
        for ext in IMAGE_EXTENSIONS:
            candidate = root / f"{name}{ext}"
            if candidate.is_file():
                return str(candidate.resolve())
    return None


def natural_key(path: Path) -> list:
    """'2.xml' before '10.xml', so reading order (and which duplicate wins) is stable and natural."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]
