"""The Parquet feature store and the streaming extractor that fills it.

Layout of `DIR/features/`: `part-<run>-<n>.parquet` (one per batch, written atomically, FEATURES contract),
`rejects.parquet` (images that could not be encoded in the last run) and `features.json` (the last run's
summary). A row is keyed by (image_id, sha256 of the file, encoder version): re-running skips what is
stored, so a crash loses at most the batch in flight, and an edited image file is encoded again.

The extractor overlaps work: decoder threads prepare the next batches while the model runs on the current
one, and a writer thread compresses and writes the previous one. Memory is bounded by a few batches.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_contracts import FEATURES
from data_contracts.features import GRID_SIZE, POOLED_DIM
from radcap.imaging import ImageRejected, prepare
from radcap.io import atomic_path, new_run_id


@dataclass(frozen=True)
class ImageItem:
    image_id: str
    path: str
    sha256: str


@dataclass
class ExtractResult:
    encoded: int = 0
    skipped: int = 0
    rejects: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class FeatureStore:
    def __init__(self, root: Path):
        self.root = root

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet")) if self.root.exists() else []

    def index(self) -> pd.DataFrame:
        """(image_id, sha256, encoder_version) of every stored row, without reading the vectors."""
        columns = ["image_id", "sha256", "encoder_version"]
        frames = [pq.read_table(p, columns=columns).to_pandas() for p in self.parts()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def write_part(self, table: pa.Table, run_id: str, number: int) -> Path:
        table = FEATURES.validate(table)
        target = self.root / f"part-{run_id}-{number:05d}.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return target

    def load(self, encoder_version: str, image_ids: list[str] | None = None, grid: bool = False) -> dict:
        """{'image_id': [...], 'pooled': (N,1024) float32, 'grid': (N,7,7,1024) float16 if asked}.

        When an image was encoded more than once (its file changed), the latest part wins.
        """
        columns = ["image_id", "encoder_version", "pooled"] + (["grid"] if grid else [])
        wanted = set(image_ids) if image_ids is not None else None
        tables = []
        for part in self.parts():
            table = pq.read_table(part, columns=columns, filters=[("encoder_version", "==", encoder_version)])
            if wanted is not None:
                table = table.filter(pa.compute.is_in(table["image_id"], pa.array(sorted(wanted))))
            if table.num_rows:
                tables.append(table)
        if not tables:
            return {"image_id": [], "pooled": np.zeros((0, POOLED_DIM), np.float32)}
        table = pa.concat_tables(tables)
        ids = table["image_id"].to_pylist()
        last = {image_id: i for i, image_id in enumerate(ids)}  # later parts overwrite earlier ones
        keep = np.array(sorted(last.values()))
        out = {
            "image_id": [ids[i] for i in keep],
            "pooled": _vectors(table["pooled"], POOLED_DIM)[keep],
        }
        if grid:
            out["grid"] = _vectors(table["grid"], GRID_SIZE)[keep].reshape(-1, 7, 7, POOLED_DIM)
        return out


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def features_table(items: list[ImageItem], pooled: np.ndarray, grid: np.ndarray, name: str, version: str) -> pa.Table:
    n = len(items)
    return pa.table(
        {
            "image_id": pa.array([i.image_id for i in items], pa.string()),
            "sha256": pa.array([i.sha256 for i in items], pa.string()),
            "encoder": pa.array([name] * n, pa.string()),
            "encoder_version": pa.array([version] * n, pa.string()),
            "pooled": pa.FixedSizeListArray.from_arrays(pa.array(pooled.astype(np.float32).ravel()), POOLED_DIM),
            "grid": pa.FixedSizeListArray.from_arrays(pa.array(grid.astype(np.float16).ravel()), GRID_SIZE),
        },
        schema=FEATURES.arrow_schema,
    )


def _prepare_one(item: ImageItem, size: int) -> np.ndarray | str:
    try:
        return prepare(Path(item.path), size)
    except ImageRejected as exc:
        return str(exc)


def extract_features(
    items: list[ImageItem],
    forward,  # callable: uint8 (B,S,S) -> (pooled (B,1024), grid (B,7,7,1024)) numpy
    store: FeatureStore,
    encoder_name: str,
    encoder_version: str,
    batch_size: int = 32,
    input_size: int = 224,
    decode_workers: int = 2,
    progress: bool = True,
) -> ExtractResult:
    """Encode `items` in batches and append them to `store`; undecodable files become rejects."""
    from tqdm import tqdm

    result = ExtractResult()
    start = time.perf_counter()
    run_id = new_run_id()
    batches = [items[i: i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(decode_workers) as decoders, ThreadPoolExecutor(1) as writer, tqdm(
        total=len(items), desc="features", unit="img", disable=not progress
    ) as bar:
        pending: deque[tuple[list[ImageItem], list[Future]]] = deque()
        last_write: Future | None = None

        def submit(batch: list[ImageItem]) -> None:
            pending.append((batch, [decoders.submit(_prepare_one, item, input_size) for item in batch]))

        for batch in batches[:2]:  # keep two batches decoding ahead of the model
            submit(batch)
        for number in range(len(batches)):
            batch, futures = pending.popleft()
            if number + 2 < len(batches):
                submit(batches[number + 2])
            good, arrays = [], []
            for item, future in zip(batch, futures):
                value = future.result()
                if isinstance(value, str):
                    result.rejects.append(
                        {"source": item.path, "item": item.image_id, "kind": "image", "stage": "features", "reason": value}
                    )
                else:
                    good.append(item)
                    arrays.append(value)
            if good:
                stacked = np.stack(arrays)
                if len(good) < batch_size:  # pad: one compiled shape for every batch
                    stacked = np.concatenate([stacked, np.zeros((batch_size - len(good), *stacked.shape[1:]), np.uint8)])
                pooled, grid = forward(stacked)
                table = features_table(good, pooled[: len(good)], grid[: len(good)], encoder_name, encoder_version)
                if last_write is not None:
                    last_write.result()  # at most one batch waiting to be written
                last_write = writer.submit(store.write_part, table, run_id, number)
                result.encoded += len(good)
            bar.update(len(batch))
        if last_write is not None:
            last_write.result()
    result.seconds = time.perf_counter() - start
    return result
