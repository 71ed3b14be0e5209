"""What the nightly run needs beyond the stage tasks: knowing when its inputs have not changed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prefect.logging import get_run_logger

from radcap.catalog import DataCatalog
from radcap.io import write_json
from tasks import uncached


@uncached
def input_fingerprint(paths: list[Path | None], settings_dump: dict) -> str:
    """Hash of every input file's path, size and modification time, plus the ingest settings: cheap
    (no file is read) and it changes whenever a file is added, removed, replaced or edited."""
    digest = hashlib.sha256(json.dumps(settings_dump, sort_keys=True, default=str).encode())
    for path in (p for p in paths if p is not None):
        files = [path] if path.is_file() else sorted(Path(r) / f for r, _, fs in os.walk(path) for f in fs)
        for file in files:
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _marker(data_dir: Path) -> Path:
    return data_dir / ".ingest_fingerprint.json"


@uncached
def ingest_is_current(data_dir: Path, fingerprint: str) -> bool:
    marker, summary = _marker(data_dir), DataCatalog(data_dir).ingest_summary
    current = summary.exists() and marker.exists() and json.loads(marker.read_text())["fingerprint"] == fingerprint
    if current:
        get_run_logger().info("inputs unchanged (fingerprint %s): ingestion skipped", fingerprint)
    return current


@uncached
def record_ingest(data_dir: Path, fingerprint: str) -> None:
    write_json({"fingerprint": fingerprint}, _marker(data_dir))


@uncached
def ingest_summary(data_dir: Path) -> dict:
    return json.loads(DataCatalog(data_dir).ingest_summary.read_text())
