"""Any captioned image collection, described by a CSV or Parquet manifest.

Required columns: `image` (path, relative to the manifest's folder or to --images; also accepted under the
names `image_path`, `path`, `file`, `filename`) and `caption` (also `report`, `text`).
Optional: `split` (train/val/test; 'dev'/'valid'/'validation' mean val), `study_id`, `patient_id`,
`view`, `modality`, `labels` (image labels for encoder pretraining, ';'-separated 'namespace:value',
e.g. 'finding:Pneumonia; view:AP'). Rows of one study with the same caption form one multi-image report; a study with
several captions gives one report per caption. Splits are by patient, else study, else image.

Accounting, row by row: every row becomes an image row or an image reject naming its line (no image path,
duplicate image, unknown split, no caption, a split that contradicts its study); a report that is rejected
later as a group (its patient would leak into two splits) takes its images' rows with it, as rejects.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from radcap.core.errors import RadcapError
from radcap.core.settings import TextRules
from radcap.ingestion.common import Parsed, image_row, report_row
from radcap.text.normalize import clean_raw, normalize, placeholder

DATASET = "manifest"
COLUMN_ALIASES = {
    "image": ("image", "image_path", "path", "file", "filename"),
    "caption": ("caption", "report", "text"),
}
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def _load(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise RadcapError(f"{path}: manifest file not found")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except Exception as exc:
        raise RadcapError(f"{path}: cannot read the manifest ({type(exc).__name__}: {exc})") from exc
    renames = {}
    for column, aliases in COLUMN_ALIASES.items():
        found = [a for a in aliases if a in frame.columns]
        if not found:
            raise RadcapError(
                f"{path}: manifest lacks the {column} column (named any of {', '.join(aliases)}; "
                f"has {', '.join(map(str, frame.columns))})"
            )
        if len(found) > 1:
            raise RadcapError(f"{path}: manifest has several {column} columns ({', '.join(found)}); keep one")
        renames[found[0]] = column
    frame = frame.rename(columns=renames)
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


class _Reader:
    def __init__(self, source: Path, rules: TextRules, root: Path):
        self.source, self.rules, self.root = source, rules, root
        self.parsed = Parsed()
        self.reports: dict[tuple[str, str], dict] = {}
        self.captions_per_study: dict[str, int] = {}
        self.seen_images: set[str] = set()

    def row(self, where: str, row: dict) -> None:
        parsed = self.parsed
        image = _text(row.get("image"))
        if image is None:
            return parsed.reject_image(where, "row has no image path", None)
        image_id = str(Path(image).with_suffix("")).replace("\\", "/")
        if image_id in self.seen_images:
            return parsed.reject_image(where, f"duplicate image {image}", image_id)
        split_value = _text(row.get("split"))
        split = SPLIT_ALIASES.get(split_value.lower()) if split_value else None
        if split_value and split is None:
            return parsed.reject_image(where, f"unknown split '{split_value}' (use train, val or test)", image_id)
        caption = _text(row.get("caption"))
        normalized = normalize(clean_raw(caption, self.rules), self.rules)
        if caption is None or normalized is None:
            return parsed.reject_image(where, "row has no caption", image_id)
        if placeholder(normalized, self.rules):
            return parsed.reject_image(where, f"placeholder text instead of a caption: '{caption[:60]}'", image_id)
        study_id = _text(row.get("study_id")) or image_id
        group_id = _text(row.get("patient_id")) or study_id
        report = self.reports.get((study_id, caption))
        if report is None:
            n = self.captions_per_study.get(study_id, 0)
            self.captions_per_study[study_id] = n + 1
            report = report_row(
                report_id=study_id if n == 0 else f"{study_id}#{n + 1}",
                study_id=study_id,
                group_id=group_id,
                dataset=DATASET,
                source=where,
                rules=self.rules,
                caption_raw=caption,
                split=split or "unassigned",
                split_source="manifest" if split else "none",
            )
            self.reports[(study_id, caption)] = report
            parsed.inputs += 1
            parsed.reports.append(report)
        elif (split or "unassigned") != report["split"]:
            return parsed.reject_image(where, f"split '{split}' differs from the study's '{report['split']}'", image_id)
        self.seen_images.add(image_id)
        image_path = (self.root / image).resolve()
        view = (_text(row.get("view")) or "").lower()
        parsed.add_image(
            image_row(
                image_id,
                report,
                path=str(image_path) if image_path.is_file() else None,
                view=view if view in ("frontal", "lateral") else "unknown",
                modality=_text(row.get("modality")),
                labels=parse_labels(row.get("labels")),
            ),
            where,
        )


def read_manifest(source: Path, rules: TextRules, images_dir: Path | None = None) -> Parsed:
    frame = _load(source)
    reader = _Reader(source, rules, images_dir or source.parent)
    for line, row in enumerate(frame.to_dict("records"), start=2):
        where = f"{source}:{line}"
        try:
            reader.row(where, row)
        except Exception as exc:
            reader.parsed.reject_image(where, f"unusable row ({type(exc).__name__}: {exc})", None)
    return reader.parsed
