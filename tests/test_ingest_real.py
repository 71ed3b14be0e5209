"""Ingestion on the real collections in ../shared/data (IU X-Ray XML and CSV, R2Gen split, MedPix 2.0)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.realdata


def _ingest(tmp_path_factory, name: str, *args, **kwargs) -> tuple[dict, dict[str, pd.DataFrame]]:
    from radcap.flows.ingest import ingest_reports

    out = tmp_path_factory.mktemp(name)
    summary = ingest_reports(*args, out=out, **kwargs)
    tables = {t: pd.read_parquet(out / f"{t}.parquet") for t in ("reports", "images", "rejects")}
    return summary, tables


@pytest.fixture(scope="module")
def iu_xml(shared_data: Path, tmp_path_factory, prefect_api):
    iu = shared_data / "iu_xray"
    return _ingest(
        tmp_path_factory,
        "iu_xml",
        "iu-xml",
        iu / "ecgen-radiology",
        images=iu / "images",
        views=iu / "indiana_projections.csv",
        split_file=iu / "r2gen_annotation.json",
    )


@pytest.fixture(scope="module")
def iu_csv(shared_data: Path, tmp_path_factory, prefect_api):
    iu = shared_data / "iu_xray"
    return _ingest(tmp_path_factory, "iu_csv", "iu-csv", iu, images=iu / "images")


@pytest.fixture(scope="module")
def medpix(shared_data: Path, tmp_path_factory, prefect_api):
    return _ingest(tmp_path_factory, "medpix", "medpix2", shared_data / "medpix2")


def test_every_iu_xml_report_is_accounted_for(iu_xml, shared_data: Path):
    summary, t = iu_xml
    assert summary["report_inputs"] == 3851 == len(list((shared_data / "iu_xray/ecgen-radiology").glob("*.xml")))
    reports_rejected = t["rejects"][t["rejects"]["kind"] == "report"]
    assert len(t["reports"]) + len(reports_rejected) == 3851
    # The only rejects are reports with no text at all, and they are exactly the CSV's empty rows...
    assert set(reports_rejected["reason"]) == {"report has neither findings nor impression"}
    csv = pd.read_csv(shared_data / "iu_xray/indiana_reports.csv")
    empty = csv[csv["findings"].isna() & csv["impression"].isna()]
    assert set(reports_rejected["item"]) == {f"CXR{u}" for u in empty["uid"]}
    # ... and their images go with them, never lost: image references = image rows + image rejects.
    images_rejected = t["rejects"][t["rejects"]["kind"] == "image"]
    assert set(images_rejected["reason"]) == {"its report was rejected: report has neither findings nor impression"}
    assert summary["image_inputs"] == len(t["images"]) + len(images_rejected)


def test_xml_and_csv_give_the_same_studies_and_text(iu_xml, iu_csv):
    xml = iu_xml[1]["reports"].set_index("report_id").sort_index()
    csv = iu_csv[1]["reports"].set_index("report_id").sort_index()
    assert list(xml.index) == list(csv.index)
    for column in ("findings", "impression", "target", "indication", "comparison"):
        pd.testing.assert_series_equal(xml[column], csv[column], check_names=False)
    assert (xml["mesh"].map(list) == csv["mesh"].map(list)).all()


def test_r2gen_split_is_reproduced(iu_xml):
    _summary, t = iu_xml
    r2gen = t["reports"][t["reports"]["split_source"] == "r2gen"]
    assert r2gen["split"].value_counts().to_dict() == {"train": 2069, "test": 590, "val": 296}
    assert set(t["reports"].loc[t["reports"]["split_source"] != "r2gen", "split"]) == {"unassigned"}
    assert (t["images"].groupby("report_id")["split"].nunique() == 1).all()


def test_iu_views_and_image_files(iu_xml, iu_csv):
    images = iu_xml[1]["images"]
    views = images["view"].value_counts().to_dict()
    assert views["frontal"] > 3700 and views["lateral"] > 3600 and views.get("unknown", 0) < 10
    assert images["path"].notna().sum() == 4  # only 4 real IU images are available here
    summary, t = iu_csv
    assert summary["image_inputs"] == 7466 == len(t["images"]) + (t["rejects"]["kind"] == "image").sum()


def test_medpix_official_split(medpix):
    summary, t = medpix
    # 21 captions are MedPix's template placeholder ("Replace this - DESCRIPTION OF THE IMAGE OR FINDINGS."): 15 in
    # train, 6 in dev; they are rejects with the reason, and nothing else is rejected.
    assert t["reports"]["split"].value_counts().to_dict() == {"train": 1653 - 15, "val": 197 - 6}
    reports_rejected = t["rejects"][t["rejects"]["kind"] == "report"]
    assert len(reports_rejected) == 21 and reports_rejected["reason"].str.contains("Replace this - DESCRIPTION").all()
    assert summary["images_found"] == 1850 - 21 and len(t["rejects"]) == 21
    assert (t["reports"].groupby("group_id")["split"].nunique() == 1).all()  # a case never spans splits
    assert t["images"]["location_category"].notna().all() and set(t["images"]["modality"]) == {"CT", "MR"}


@pytest.mark.parametrize("layout", ["nlmcxr_png", "r2gen"])
def test_iu_images_are_found_in_open_i_and_r2gen_layouts(layout, shared_data: Path, tmp_path: Path):
    """The 4 real IU images, laid out as Open-i's NLMCXR_png (flat) or R2Gen's images/<study>/<n>.png."""
    import shutil

    from radcap.core.settings import TextRules
    from radcap.ingestion.iu import read_iu_xml

    iu = shared_data / "iu_xray"
    reports = tmp_path / "reports"
    reports.mkdir()
    for uid in (25, 54, 303):  # the studies of the 4 images
        shutil.copy(iu / "ecgen-radiology" / f"{uid}.xml", reports / f"{uid}.xml")
    images = tmp_path / layout
    for source in sorted((iu / "images").glob("*.png")):
        if layout == "nlmcxr_png":
            target = images / source.name
        else:  # R2Gen numbers each study's images (as the report lists them) in name order
            import re

            study = source.stem.rsplit("-", 1)[0]
            listed = {
                m for xml in reports.glob("*.xml") for m in re.findall(r'parentImage id="([^"]+)"', xml.read_text())
            }
            rank = sorted(i for i in listed if i.rsplit("-", 1)[0] == study).index(source.stem)
            target = images / study / f"{rank}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    parsed = read_iu_xml(reports, TextRules(), images)
    found = {i["image_id"]: i["path"] for i in parsed.images if i["path"]}
    assert set(found) == {p.stem for p in (iu / "images").glob("*.png")}
    for image_id, path in found.items():  # each id points at the right picture
        assert Path(path).read_bytes() == (iu / "images" / f"{image_id}.png").read_bytes()
