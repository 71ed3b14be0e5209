"""Any captioned image collection, described by a CSV or Parquet manifest.

Required columns: `image` (path, relative to the manifest's folder or to --images) and `caption`.
Optional: `split` (train/val/test; 'dev'/'valid'/'validation' mean val), `study_id`, `patient_id`,
`view`, `modality`, `labels` (image labels for encoder pretraining, ';'-separated 'namespace:value',
e.g. 'finding:Pneumonia; view:AP'). Rows of one study with the same caption form one multi-image report; a study with
several captions gives one report per caption. Splits are by patient, else study, else image.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from radcap.errors import RadcapError
from radcap.settings import TextRules
from radcap.sources.common import Parsed, image_row, report_row

DATASET = "manifest"
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def _load(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise RadcapError(f"{path}: manifest file not found")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise RadcapError(f"{path}: cannot read the manifest: {exc}") from exc
    missing = [c for c in ("image", "caption") if c not in frame.columns]
    if missing:
        raise RadcapError(f"{path}: manifest lacks required columns {missing} (has {list(frame.columns)})")
    return frame.astype(object).where(frame.notna(), None)


def _text(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def parse_labels(value: object) -> list[str]:
    """'finding:COVID-19; view:PA' -> ['finding:COVID-19', 'view:PA']; a bare value gets the 'label:' namespace."""
    labels = []
    for part in (_text(value) or "").split(";"):
        part = part.strip()
        if part:
            namespace, _, label = part.rpartition(":")
            labels.append(f"{namespace.strip() or 'label'}:{label.strip()}")
    return sorted(set(labels))


def read_manifest(source: Path, rules: TextRules, images_dir: Path | None = None) -> Parsed:
    frame = _load(source)
    root = images_dir or source.parent
    parsed = Parsed(inputs=len(frame))
    reports: dict[tuple[str, str], dict] = {}
    captions_per_study: dict[str, int] = {}
    seen_images: set[str] = set()
    for line, row in enumerate(frame.to_dict("records"), start=2):
        where = f"{source}:{line}"
        image = _text(row.get("image"))
        if image is None:
            parsed.reject(where, "row has no image path")
            continue
        image_path = (root / image).resolve()
        image_id = str(Path(image).with_suffix("")).replace("\\", "/")
        if image_id in seen_images:
            parsed.reject(where, f"duplicate image {image}", item=image_id)
            continue
        split_value = _text(row.get("split"))
        split = SPLIT_ALIASES.get(split_value.lower()) if split_value else None
        if split_value and split is None:
            parsed.reject(where, f"unknown split '{split_value}' (use train, val or test)", item=image_id)
            continue
        study_id = _text(row.get("study_id")) or image_id
        group_id = _text(row.get("patient_id")) or study_id
        caption = _text(row.get("caption"))
        key = (study_id, caption or "")
        report = reports.get(key)
        if report is None:
            n = captions_per_study.get(study_id, 0)
            captions_per_study[study_id] = n + 1
            report = report_row(
                report_id=study_id if n == 0 else f"{study_id}#{n + 1}",
                study_id=study_id,
                group_id=group_id,
                dataset=DATASET,
                source=where,
                rules=rules,
                caption_raw=caption,
                split=split or "unassigned",
                split_source="manifest" if split else "none",
            )
            if report["target"] is None:
                parsed.reject(where, "row has no caption", item=image_id)
                continue
            reports[key] = report
            parsed.reports.append(report)
        elif (split or "unassigned") != report["split"]:
            parsed.reject(where, f"split '{split}' differs from the study's '{report['split']}'", item=image_id)
            continue
        seen_images.add(image_id)
        view = (_text(row.get("view")) or "").lower()
        parsed.images.append(
            image_row(
                image_id,
                report,
                path=str(image_path) if image_path.is_file() else None,
                view=view if view in ("frontal", "lateral") else "unknown",
                modality=_text(row.get("modality")),
                labels=parse_labels(row.get("labels")),
            )
        )
    return parsed
