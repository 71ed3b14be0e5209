"""Where each dataset of a data directory lives (Kedro-style catalog: pipeline code never builds paths)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataCatalog:
    root: Path

    @property
    def reports(self) -> Path:
        return self.root / "reports.parquet"

    @property
    def images(self) -> Path:
        return self.root / "images.parquet"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    @property
    def ingest_summary(self) -> Path:
        """Written last by ingestion: counts and the data version; its presence means the tables are complete."""
        return self.root / "ingest.json"

    @property
    def features(self) -> Path:
        """The feature store folder (Parquet parts)."""
        return self.root / "features"

    @property
    def feature_rejects(self) -> Path:
        return self.features / "rejects.parquet"

    @property
    def feature_summary(self) -> Path:
        return self.features / "features.json"
