"""The main job on the embedded default: phantom sample -> ingest -> (later stages as they land)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.ingest import ingest_reports
from radcap.settings import get_settings
from tasks.sample import make_sample


@flow(name="radcap-demo")
def demo_pipeline(workdir: Path) -> dict:
    settings = get_settings()
    sample = make_sample(workdir / "sample", settings.sample)
    ingest = ingest_reports(
        "iu-xml",
        sample / "ecgen-radiology",
        workdir / "data",
        images=sample / "images",
        views=sample / "indiana_projections.csv",
        settings=settings,
    )
    return {
        "reports": ingest["reports"],
        "images": ingest["images"],
        "images_found": ingest["images_found"],
        "rejects": ingest["report_rejects"] + ingest["image_rejects"],
        "splits": ingest["splits"],
        "data_version": ingest["data_version"],
    }
