"""Corrupted and hostile inputs: each becomes a reject with a clear reason, and nothing else is lost."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from radcap.core.settings import TextRules
from radcap.ingestion.iu import read_iu_xml

RULES = TextRules()


def report(
    uid: str, findings: str = "Heart size normal.", impression: str = "No acute disease.", images=("-1001",)
) -> str:
    parents = "".join(
        f'<parentImage id="{uid}_IM-0001{suffix}"><figureId>F1</figureId></parentImage>' for suffix in images
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="{uid}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">Cough</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>normal</major></MeSH>{parents}</eCitation>"""


HOSTILE = {
    "empty.xml": (b"", "empty file"),
    "blank.xml": (b"  \n\n ", "empty file"),
    "truncated.xml": (report("CXR90").encode()[:180], "malformed XML"),
    "latin1.xml": (report("CXR91", findings="Caf\xe9 size normal.").encode("latin-1"), "not valid UTF-8"),
    "notxml.xml": (b"this is plain text, not xml", "malformed XML"),
    "binary.xml": (b"\x89PNG\r\n\x1a\n\x00\x00", "not valid UTF-8"),
    "otherroot.xml": (b"<?xml version='1.0'?><html><body/></html>", "not an Open-i report"),
    "nouid.xml": (report("CXR92").replace('<uId id="CXR92"/>', "").encode(), "no <uId"),
    "notext.xml": (report("CXR93", findings="", impression="").encode(), "neither findings nor impression"),
    "xxe.xml": (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + report("CXR94", findings="&x;").split("?>", 1)[1].encode(),
        "DOCTYPE",
    ),
    "laughs.xml": (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
        + report("CXR95", findings="&d;&d;&d;&d;").split("?>", 1)[1].encode(),
        "DOCTYPE",
    ),
}


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "1.xml").write_text(report("CXR1"), encoding="utf-8")
    (folder / "2.xml").write_text(
        report("CXR2", findings="", impression="1. Cardiomegaly. 2. XXXX effusion."), encoding="utf-8"
    )
    (folder / "3.xml").write_text(
        report("CXR1", impression="A different text", images=("-1001", "-2001")), encoding="utf-8"
    )  # duplicate uid, with an image of its own
    for name, (data, _) in HOSTILE.items():
        (folder / name).write_bytes(data)
    return folder


def test_each_bad_file_is_rejected_with_its_reason(hostile_folder: Path):
    parsed = read_iu_xml(hostile_folder, RULES)
    reasons = {Path(r["source"]).name: r["reason"] for r in parsed.rejects if r["kind"] == "report"}
    for name, (_, reason) in HOSTILE.items():
        assert reason in reasons[name], (name, reasons[name])
    assert "duplicate report id CXR1" in reasons["3.xml"]
    assert sorted(r["report_id"] for r in parsed.reports) == ["CXR1", "CXR2"]
    # Every input accounted for: rows + rejects = files seen, and image references likewise.
    report_rejects = [r for r in parsed.rejects if r["kind"] == "report"]
    assert parsed.inputs == len(HOSTILE) + 3 == len(parsed.reports) + len(report_rejects)
    assert parsed.image_inputs == len(parsed.images) + len(parsed.rejects) - len(report_rejects)


def test_duplicate_keeps_the_first_file_and_its_images(hostile_folder: Path):
    parsed = read_iu_xml(hostile_folder, RULES)
    first = next(r for r in parsed.reports if r["report_id"] == "CXR1")
    assert Path(first["source"]).name == "1.xml" and first["impression"] == "no acute disease."
    assert [i["image_id"] for i in parsed.images if i["report_id"] == "CXR1"] == ["CXR1_IM-0001-1001"]
    # The rejected duplicate's images go with it: never attached to the report that was kept.
    dropped = {r["item"]: r["reason"] for r in parsed.rejects if r["kind"] == "image" and r["source"].endswith("3.xml")}
    assert set(dropped) == {"CXR1_IM-0001-1001", "CXR1_IM-0001-2001"} and all(
        "duplicate" in v for v in dropped.values()
    )


def test_entities_are_never_expanded(hostile_folder: Path):
    parsed = read_iu_xml(hostile_folder, RULES)
    everything = repr(parsed.reports) + repr(parsed.rejects)
    assert "root:" not in everything  # /etc/passwd content
    assert "aaaaaaaaaa" not in everything


def test_impression_only_report_is_normalized(hostile_folder: Path):
    parsed = read_iu_xml(hostile_folder, RULES)
    cxr2 = next(r for r in parsed.reports if r["report_id"] == "CXR2")
    assert cxr2["findings"] is None
    assert cxr2["target"] == "cardiomegaly. xxxx effusion." and cxr2["target_section"] == "impression"
    assert cxr2["impression_raw"] == "1. Cardiomegaly. 2. XXXX effusion."


def test_flow_writes_tables_that_account_for_every_file(hostile_folder: Path, tmp_path: Path, prefect_api):
    from radcap.flows.ingest import ingest_reports

    out = tmp_path / "data"
    summary = ingest_reports("iu-xml", hostile_folder, out)
    reports = pd.read_parquet(out / "reports.parquet")
    rejects = pd.read_parquet(out / "rejects.parquet")
    assert len(reports) + (rejects["kind"] == "report").sum() == summary["report_inputs"] == len(HOSTILE) + 3
    images = pd.read_parquet(out / "images.parquet")
    assert len(images) + (rejects["kind"] == "image").sum() == summary["image_inputs"] > 0
    assert set(rejects["stage"]) == {"ingest"} and rejects["reason"].str.len().min() > 5
    again = ingest_reports("iu-xml", hostile_folder, out)
    assert again["data_version"] == summary["data_version"]
    assert len(pd.read_parquet(out / "reports.parquet")) == len(reports)  # re-run never duplicates
