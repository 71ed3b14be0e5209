"""What the nightly run needs beyond the stage tasks: knowing when its inputs have not changed.

Why not Prefect's task cache: the ingestion it guards is a subflow whose outputs are files in the data
directory, and a cache kept in Prefect's storage would skip it even after those files were deleted; the
data directory itself records the fingerprint it was made from."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.logging import get_run_logger

from radcap.core.catalog import DataCatalog
from radcap.core.io import files_fingerprint, write_json
from radcap.tasks import uncached


@uncached
def input_fingerprint(paths: list[Path | None], settings_dump: dict) -> str:
    return files_fingerprint([p for p in paths if p is not None], settings_dump)


@uncached
def ingest_is_current(data_dir: Path, fingerprint: str) -> bool:
    catalog = DataCatalog(data_dir)
    marker = catalog.ingest_fingerprint
    current = (
        catalog.ingest_summary.exists()
        and marker.exists()
        and json.loads(marker.read_text())["fingerprint"] == fingerprint
        and not (catalog.pending.exists() and json.loads(catalog.ingest_summary.read_text()).get("pending"))
    )
    if current:
        get_run_logger().info("inputs unchanged (fingerprint %s): ingestion skipped", fingerprint)
    return current


@uncached
def record_ingest(data_dir: Path, fingerprint: str) -> None:
    write_json({"fingerprint": fingerprint}, DataCatalog(data_dir).ingest_fingerprint)


@uncached
def ingest_summary(data_dir: Path) -> dict:
    return DataCatalog(data_dir).summary()
