"""Where each dataset of a data directory lives (Kedro-style catalog, kept apart from pipeline logic).

Stages name their inputs and outputs through a catalog entry, never by building a path: a data directory
holds the ingested tables, the feature store and the runs trained on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from radcap.core.errors import RadcapError


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
    def pending(self) -> Path:
        """Signed reports whose images have not arrived: tried again by the next ingestion."""
        return self.root / "pending.parquet"

    @property
    def pacs_images(self) -> Path:
        """Images of signed reports' studies fetched from a PACS (WADO-RS), where training reads them."""
        return self.root / "pacs-images"

    @property
    def ingest_summary(self) -> Path:
        """Written last by ingestion: counts and the data version; its presence means the tables are complete."""
        return self.root / "ingest.json"

    @property
    def ingest_fingerprint(self) -> Path:
        """The input files' fingerprint at the last ingestion (the nightly run skips an unchanged one)."""
        return self.root / ".ingest_fingerprint.json"

    @property
    def features(self) -> Path:
        """The feature store folder (Parquet parts, encoders.json)."""
        return self.root / "features"

    @property
    def feature_rejects(self) -> Path:
        return self.features / "rejects.parquet"

    @property
    def feature_summary(self) -> Path:
        return self.features / "features.json"

    def captioner_run(self, architecture: str) -> Path:
        return self.root / f"captioner-{architecture}"

    @property
    def retriever_run(self) -> Path:
        return self.root / "retriever"

    @property
    def encoder_run(self) -> Path:
        return self.root / "encoder"

    def evaluation(self, split: str) -> Path:
        return self.root / f"evaluation-{split}"

    def summary(self) -> dict:
        """ingest.json, or RadcapError telling the user to ingest first."""
        if not self.ingest_summary.exists():
            raise RadcapError(f"{self.ingest_summary}: not found (run `radcap ingest` first)")
        return json.loads(self.ingest_summary.read_text(encoding="utf-8"))

    def data_version(self) -> str:
        """The content hash of the ingested tables: what every trained model is tagged with."""
        return self.summary()["data_version"]

    def encoder_version(self, requested: str | None = None) -> str:
        """The feature-store encoder version to train on: the one asked for, else the last one extracted."""
        if requested:
            return requested
        if not self.feature_summary.exists():
            raise RadcapError(f"{self.features}: no features yet; run `radcap features --data {self.root}` first")
        return json.loads(self.feature_summary.read_text(encoding="utf-8"))["encoder_version"]


@dataclass(frozen=True)
class RunFolder:
    """What a training run writes beside MLflow: the saved bundle and its rejects."""

    root: Path

    @property
    def captioner(self) -> Path:
        return self.root / "captioner"

    @property
    def retriever(self) -> Path:
        return self.root / "retriever"

    @property
    def index(self) -> Path:
        return self.root / "index.parquet"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def captions_csv(self) -> Path:
        return self.root / "captions.csv"

    @property
    def results(self) -> Path:
        """`radcap search` / `radcap retrieve` results (SEARCH_RESULTS), with `results_csv` beside."""
        return self.root / "results.parquet"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def encoder_model(self) -> Path:
        return self.root / "encoder.keras"

    @property
    def labels(self) -> Path:
        """The encoder's label space (`radcap.imaging.labels.LabelSpace`)."""
        return self.root / "labels.json"

    @property
    def labelled_images(self) -> Path:
        return self.root / "labelled_images.parquet"

    @property
    def pretrain_summary(self) -> Path:
        return self.root / "pretrain.json"

    def decoded_pixels(self, split: str, size: int) -> Path:
        """The memory-mapped pixels of one split, decoded once for pretraining."""
        return self.root / f"pixels-{split}-{size}.npy"
