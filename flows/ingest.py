"""`radcap ingest`: a report collection -> reports.parquet, images.parquet, rejects.parquet (and, for signed
clinical reports, pending.parquet)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.core.settings import Settings, get_settings
from radcap.pacs.dicomweb import safe_url
from radcap.tasks.ingest import assign_splits, build_tables, read_source, write_ingest_outputs


@flow(name="ingest-reports", log_prints=True)
def ingest_reports(
    fmt: str,
    source: Path | str,
    out: Path,
    images: Path | str | None = None,
    views: Path | None = None,
    split_file: Path | None = None,
    settings: Settings | None = None,
) -> dict:
    settings = settings or get_settings()
    parsed = read_source(fmt, source, settings, images, views, out)
    # quote(): hand the rows over as they are; Prefect would otherwise walk thousands of dicts
    # looking for upstream futures.
    parsed = assign_splits(quote(parsed), settings, split_file)
    tables = build_tables(quote(parsed))
    meta = {
        "format": fmt,
        "source": safe_url(source) if isinstance(source, str) else str(source.resolve()),
        "split_file": str(split_file) if split_file else None,
        "text_rules": settings.text.model_dump(),
    }
    return write_ingest_outputs(quote(tables), quote(parsed), out, meta)
