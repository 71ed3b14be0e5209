"""Any captioned dataset through a manifest: grouping, splits without leakage, bad rows as rejects."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from radcap.core.settings import SplitRules, TextRules
from radcap.ingestion.manifest import read_manifest
from radcap.ingestion.splits import apply_hash_split, enforce_no_leakage, hash_split


def _manifest(tmp_path: Path, rows: list[dict], suffix: str = ".csv") -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    for row in rows:
        if row.get("image"):
            (tmp_path / row["image"]).write_bytes(b"not checked at ingest")
    path = tmp_path / f"manifest{suffix}"
    frame = pd.DataFrame(rows)
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


def test_grouping_splits_and_rejects(tmp_path: Path):
    rows = [
        {"image": "img/a1.png", "caption": "Left effusion.", "study_id": "s1", "patient_id": "p1", "split": "train"},
        {"image": "img/a2.png", "caption": "Left effusion.", "study_id": "s1", "patient_id": "p1", "split": "train"},
        {"image": "img/b1.png", "caption": "Normal chest.", "study_id": "s2", "patient_id": "p1", "split": "dev"},
        {"image": "img/c1.png", "caption": "", "study_id": "s3", "patient_id": "p3", "split": "test"},
        {"image": "img/d1.png", "caption": "Nodule.", "study_id": "s4", "patient_id": "p4", "split": "holdout"},
        {"image": "img/a1.png", "caption": "Again.", "study_id": "s5", "patient_id": "p5", "split": "train"},
        {
            "image": "img/e1.png",
            "caption": "Other view differs.",
            "study_id": "s1",
            "patient_id": "p1",
            "split": "train",
        },
    ]
    parsed = read_manifest(_manifest(tmp_path, rows), TextRules())
    reasons = sorted(r["reason"] for r in parsed.rejects)
    assert any("no caption" in r for r in reasons) and any("unknown split 'holdout'" in r for r in reasons)
    assert any("duplicate image" in r for r in reasons)
    ids = {r["report_id"]: r for r in parsed.reports}
    assert set(ids) == {"s1", "s2", "s1#2"}
    assert [i["image_id"] for i in parsed.images if i["report_id"] == "s1"] == ["img/a1", "img/a2"]
    assert ids["s2"]["split"] == "val"  # 'dev' means val
    # p1 is in train (3 reports) and val (1): the val report would leak and is rejected.
    enforce_no_leakage(parsed)
    assert {r["report_id"] for r in parsed.reports} == {"s1", "s1#2"}
    assert any("would leak" in r["reason"] for r in parsed.rejects)
    assert_every_row_accounted_once(parsed, len(rows))


def assert_every_row_accounted_once(parsed, rows: int) -> None:
    """Row by row: each manifest line is exactly one image row or one image reject (after build_tables)."""
    from radcap.tasks.ingest import build_tables

    tables = build_tables.fn(parsed)
    kept = set(tables["reports"].column("report_id").to_pylist())
    lines = [i["_source"] for i in parsed.images if i["report_id"] in kept]
    lines += [r["source"] for r in parsed.rejects if r["kind"] == "image"]
    assert sorted(int(line.rsplit(":", 1)[1]) for line in lines) == list(range(2, rows + 2))
    assert tables["images"].num_rows == len([i for i in parsed.images if i["report_id"] in kept])


def test_hash_split_by_patient_is_deterministic_and_proportional(tmp_path: Path):
    rows = [{"image": f"img/{i}.png", "caption": f"caption {i % 7}", "patient_id": f"p{i // 3}"} for i in range(600)]
    parsed = read_manifest(_manifest(tmp_path, rows, ".parquet"), TextRules())
    apply_hash_split(parsed, SplitRules())
    splits = Counter(r["split"] for r in parsed.reports)
    assert abs(splits["train"] / 600 - 0.7) < 0.08 and splits["val"] > 20 and splits["test"] > 60
    by_patient = {}
    for r in parsed.reports:
        assert by_patient.setdefault(r["group_id"], r["split"]) == r["split"]  # one split per patient
    assert hash_split("p1", SplitRules()) == hash_split("p1", SplitRules())
    assert all(i["path"] and Path(i["path"]).is_file() for i in parsed.images)
