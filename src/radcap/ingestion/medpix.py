"""MedPix 2.0: one caption per CT/MR image, the clinical case (`U_id`) as the study, the official split."""

from __future__ import annotations

import json
from pathlib import Path

from radcap.core.errors import RadcapError
from radcap.core.settings import TextRules
from radcap.ingestion.common import Parsed, find_image, image_row, report_row

DATASET = "medpix2"
OFFICIAL_SPLITS = {"train": "train", "dev": "val", "test": "test"}  # MedPix 'dev' is radcap's 'val'


def _read_jsonl(path: Path, parsed: Parsed | None) -> list[tuple[str, dict]]:
    """(where, record) for each JSON object line; bad lines become rejects when `parsed` is given."""
    records = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise RadcapError(f"{path}: cannot read: {exc.strerror}") from exc
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not raw.strip():
            continue
        if parsed is not None:
            parsed.inputs += 1
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("line is not a JSON object")
        except (UnicodeDecodeError, ValueError) as exc:
            if parsed is None:
                raise RadcapError(f"{where}: not a JSON object: {exc}") from exc
            parsed.reject(where, f"not a JSON object: {exc}")
            continue
        records.append((where, record))
    return records


def _text_field(record: dict, key: str) -> str:
    value = record.get(key)
    return value.strip() if isinstance(value, str) else str(value).strip() if isinstance(value, (int, float)) else ""


def _opt_str(value: object) -> str | None:
    """A text field as text, or None when absent or not text (a number or list where text belongs)."""
    return value if isinstance(value, str) else None


def _add_record(
    parsed: Parsed,
    where: str,
    record: dict,
    split: str,
    cases: dict,
    seen: dict[str, str],
    rules: TextRules,
    images_dir: Path,
) -> None:
    """One description line -> a report and its image, or a reject naming the line."""
    image_id, case_id = _text_field(record, "image"), _text_field(record, "U_id")
    description = record.get("Description")
    description = description if isinstance(description, dict) else {}
    if not image_id or not case_id:
        return parsed.reject(where, "record has no 'image' or no 'U_id'", item=image_id or None)
    if image_id in seen:
        return parsed.reject(where, f"duplicate image {image_id} (kept {seen[image_id]})", item=image_id)
    case = cases.get(case_id, {})
    case = case if isinstance(case, dict) else {}
    report = report_row(
        report_id=image_id,
        study_id=case_id,
        group_id=case_id,
        dataset=DATASET,
        source=where,
        rules=rules,
        caption_raw=_opt_str(description.get("Caption")),
        findings_raw=_opt_str(case.get("Findings")),
        indication=_opt_str(case.get("History")),
        split=split,
        split_source="official",
    )
    if report["target"] is None:
        return parsed.reject(where, report["_unusable"] or "image has no caption", item=image_id)
    seen[image_id] = where
    parsed.reports.append(report)
    parsed.add_image(
        image_row(
            image_id,
            report,
            path=find_image(images_dir, image_id),
            modality=_opt_str(record.get("Type")),
            plane=_opt_str(description.get("Plane")),
            location=_opt_str(record.get("Location")),
            location_category=_opt_str(record.get("Location Category")),
        ),
        where,
    )


def read_medpix(source: Path, rules: TextRules, images_dir: Path | None = None) -> Parsed:
    if not source.is_dir():
        raise RadcapError(f"{source}: not a MedPix 2.0 folder")
    images_dir = images_dir or source / "images"
    description_files = {
        split: source / f"descriptions_{name}.jsonl"
        for name, split in OFFICIAL_SPLITS.items()
        if (source / f"descriptions_{name}.jsonl").exists()
    }
    if not description_files:
        raise RadcapError(f"{source}: no descriptions_{{train,dev,test}}.jsonl found")
    cases: dict[str, dict] = {}
    for name in OFFICIAL_SPLITS:
        case_file = source / f"cases_{name}.jsonl"
        if case_file.exists():
            for _, record in _read_jsonl(case_file, None):
                cases[str(record.get("U_id"))] = record.get("Case") or {}
    parsed = Parsed()
    seen: dict[str, str] = {}
    for split, path in description_files.items():
        for where, record in _read_jsonl(path, parsed):
            try:
                _add_record(parsed, where, record, split, cases, seen, rules, images_dir)
            except Exception as exc:
                parsed.reject(where, f"unusable record ({type(exc).__name__}: {exc})")
    return parsed
