"""The Parquet feature store, and the streaming image -> features path shared by every stage that encodes.

Layout of `DIR/features/`: a Parquet dataset (FEATURES contract; `pyarrow.dataset` reads it as one table) of
`part-<run>-<n>.parquet` files of up to PART_ROWS rows each, written batch by batch as row groups into a hidden
file that is renamed into place when full or when the run ends (`PartWriter`): files are large without ever
being rewritten, memory stays one batch, and a crash loses at most the part being filled (a re-run encodes
those images again);
`rejects.parquet` (images that could not be encoded in the last run), `features.json` (the last run's
summary) and `encoders.json` (how to reload each encoder version the store holds). A row is keyed by
(image_id, sha256 of the bytes decoded, encoder version): re-running skips what is stored, and an edited
image file is encoded again. Reading returns, for each image, the
row of its file's current content (A -> B -> A gives A's vector), or the newest row when the file is gone.

Encoding overlaps work: decoder threads prepare the next batches while the model runs on the current one,
and a writer thread handles the previous one. Memory is bounded by a few batches. One file's failure, at
any step, is that file's reject; a failure of every image of a batch is the model's, and stops the run.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from radcap.core.errors import RadcapError
from radcap.core.io import atomic_path, new_run_id, write_json
from radcap.data_contracts import FEATURES
from radcap.data_contracts.features import EARLY_DIM, GRID_CELLS, GRID_SIZE, POOLED_DIM
from radcap.imaging.decode import Decoded, ImageRejected, file_sha256, read_image
from radcap.imaging.statistics import STATISTICS_DIM

PART_ROWS = 2048  # rows per part file: ~130 MB with grids; 10^7 images are ~4,900 files per encoder version
PART_SECONDS = 60.0  # a part open this long is closed anyway: a crash loses at most about a minute of encoding

# uint8 (B,S,S) -> pooled (B,D), grid (B,h,w,D)[, early-layer statistics (B,EARLY_DIM) or None]
Forward = Callable[[np.ndarray], tuple]


@dataclass(frozen=True)
class ImageItem:
    image_id: str
    path: str
    sha256: str


@dataclass
class ExtractResult:
    encoded: int = 0
    rejects: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@lru_cache(maxsize=200_000)
def _sha_of(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def current_sha256(path: str | None) -> str | None:
    """SHA-256 of a file as it is now (cached by size and modification time), None when it is gone."""
    if not isinstance(path, str) or not path:
        return None
    try:
        info = os.stat(path)
        return _sha_of(path, info.st_size, info.st_mtime_ns)
    except OSError:
        return None


def spec_for_version(version: str) -> str | None:
    """The encoder spec that reloads a registry or random encoder version from the version string alone
    (None for file encoders, whose path the store records: `FeatureStore.encoder_spec`)."""
    if version.startswith("random-seed"):
        return "random:" + version.removeprefix("random-seed")
    if "/" in version:
        return f"models:/{version}"
    return None


class FeatureStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def encoders_file(self) -> Path:
        return self.root / "encoders.json"

    def parts(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet")) if self.root.exists() else []

    def index(self) -> pd.DataFrame:
        """(image_id, sha256, encoder_version, has_early) of every stored row, without reading the vectors
        (`has_early`: the row has early-layer statistics. Told by the part's schema: parts written before radcap 0.4
        have no such column, and `features_table` fills it in every row since, so the vectors are never read here)."""
        columns = ["image_id", "sha256", "encoder_version"]
        frames = []
        for part in self.parts():
            frame = pq.read_table(part, columns=columns).to_pandas()
            frame["has_early"] = _has_early(part)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*columns, "has_early"])

    def plan(self, images: pd.DataFrame, encoder_version: str) -> tuple[list[ImageItem], int, list[dict]]:
        """Of an images table: the images whose current content is not stored for this encoder, how many are,
        and reject rows for the files that are missing or unreadable."""
        stored = self.index()
        # A row without early-layer statistics (written before radcap 0.4) is encoded again, once: the guard of a
        # model trained on these features needs them.
        mine = stored[(stored["encoder_version"] == encoder_version) & stored["has_early"].astype(bool)]
        done = set(zip(mine["image_id"], mine["sha256"]))
        todo, rejects, skipped = [], [], 0
        for image_id, path in zip(images["image_id"], images["path"]):
            reason = "image file not found when the data was ingested" if not isinstance(path, str) else None
            sha = None if reason else current_sha256(path)
            if reason or sha is None:
                rejects.append(
                    {
                        "source": path if isinstance(path, str) else image_id,
                        "item": image_id,
                        "kind": "image",
                        "stage": "features",
                        "reason": reason or "cannot read file (missing or unreadable)",
                    }
                )
            elif (image_id, sha) in done:
                skipped += 1
            else:
                todo.append(ImageItem(image_id, path, sha))
        return todo, skipped, rejects

    def write_part(self, table: pa.Table, run_id: str, number: int) -> Path:
        table = FEATURES.validate(table)
        target = self.root / f"part-{run_id}-{number:05d}.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return target

    def record_encoder(self, version: str, spec: str) -> None:
        """Remember how to reload `version` (a registry URI, random:N, or an encoder file's path)."""
        known = self.encoder_specs()
        if known.get(version) != spec:
            write_json({**known, version: spec}, self.encoders_file)

    def encoder_specs(self) -> dict[str, str]:
        return json.loads(self.encoders_file.read_text(encoding="utf-8")) if self.encoders_file.exists() else {}

    def encoder_spec(self, version: str) -> str | None:
        """The spec that reloads exactly the encoder of `version` (recorded path, registry URI or random:N)."""
        return self.encoder_specs().get(version) or spec_for_version(version)

    def load(
        self,
        encoder_version: str,
        images: dict[str, str | None] | list[str] | None = None,
        grid: bool = False,
        early: bool = False,
    ) -> dict:
        """{'image_id': [...], 'pooled': (N,1024) float32, 'grid': (N,7,7,1024) float16 if asked, 'early':
        (N,1536) float32 if asked (NaN rows where a part predates them)}.

        `images` maps image ids to their current sha256 (None: the file is gone); each image gets the row of
        that content, newest first among identical rows, or its newest row when the sha256 is None. A list of
        ids (or None: every image) takes the newest row of each, whatever the files hold now.
        """
        wanted = None if images is None else (images if isinstance(images, dict) else dict.fromkeys(images))
        columns = ["image_id", "sha256", "encoder_version", "pooled"] + (["grid"] if grid else [])
        tables = []
        for part in self.parts():
            wanted_columns = columns + (["early"] if early and _has_early(part) else [])
            table = pq.read_table(part, columns=wanted_columns, filters=[("encoder_version", "==", encoder_version)])
            if early and "early" not in table.column_names:
                table = table.append_column("early", pa.nulls(table.num_rows, pa.list_(pa.float32(), EARLY_DIM)))
            if wanted is not None:
                ids = pa.array(sorted(wanted), pa.string())  # typed: an empty list would be a null array
                table = table.filter(pa.compute.is_in(table["image_id"], ids))
            if table.num_rows:
                tables.append(table)
        if not tables:
            return {
                "image_id": [],
                "pooled": np.zeros((0, POOLED_DIM), np.float32),
                **({"grid": np.zeros((0, 7, 7, POOLED_DIM), np.float16)} if grid else {}),
                **({"early": np.zeros((0, EARLY_DIM), np.float32)} if early else {}),
            }
        table = pa.concat_tables(tables)
        ids, shas = table["image_id"].to_pylist(), table["sha256"].to_pylist()
        chosen: dict[str, int] = {}
        for i, (image_id, sha) in enumerate(zip(ids, shas)):  # later parts overwrite earlier ones
            expected = None if wanted is None else wanted[image_id]
            if expected is None or sha == expected:
                chosen[image_id] = i
        keep = np.array(sorted(chosen.values()), dtype=np.int64)
        out = {"image_id": [ids[i] for i in keep], "pooled": _vectors(table["pooled"], POOLED_DIM)[keep]}
        if grid:
            out["grid"] = _vectors(table["grid"], GRID_SIZE)[keep].reshape(-1, 7, 7, POOLED_DIM)
        if early:
            out["early"] = _nullable_vectors(table["early"], EARLY_DIM)[keep]
        return out


def _has_early(part: Path) -> bool:
    return "early" in pq.read_schema(part).names


def _nullable_vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """A fixed-size list column with null rows -> (N, dim) float32, NaN rows for the nulls."""
    column = column.combine_chunks()
    out = np.full((len(column), dim), np.nan, np.float32)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if valid.any():
        out[valid] = column.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def features_table(
    items: list[ImageItem], pooled: np.ndarray, grid: np.ndarray, name: str, version: str, early: np.ndarray
) -> pa.Table:
    n = len(items)
    return pa.table(
        {
            "image_id": pa.array([i.image_id for i in items], pa.string()),
            "sha256": pa.array([i.sha256 for i in items], pa.string()),
            "encoder": pa.array([name] * n, pa.string()),
            "encoder_version": pa.array([version] * n, pa.string()),
            "pooled": pa.FixedSizeListArray.from_arrays(pa.array(pooled.astype(np.float32).ravel()), POOLED_DIM),
            "grid": pa.FixedSizeListArray.from_arrays(pa.array(grid.astype(np.float16).ravel()), GRID_SIZE),
            "early": pa.FixedSizeListArray.from_arrays(pa.array(early.astype(np.float32).ravel()), EARLY_DIM),
        },
        schema=FEATURES.arrow_schema,
    )


# ------------------------------------------------------------------ the streaming image -> features path


def decode_one(source: Path | bytes, size: int) -> Decoded | ImageRejected:
    """A file or its bytes -> its `Decoded` (square, sha256, chroma, statistics), or the ImageRejected to record."""
    try:
        return read_image(source if isinstance(source, (bytes, bytearray)) else Path(source), size)
    except ImageRejected as exc:
        return exc


def _pad(arrays: list[np.ndarray], batch_size: int) -> np.ndarray:
    chunk = np.stack(arrays)
    if len(chunk) < batch_size:  # one compiled shape for every call
        chunk = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
    return chunk


@dataclass
class Encoded:
    pooled: np.ndarray  # (N, D) float32; rows of failed images are zeros
    grid: np.ndarray | None  # (N, 49, D) float16 when asked
    failed: dict[int, str]  # position -> reason
    early: np.ndarray | None = None  # (N, EARLY_DIM) float32 early-layer statistics (None: the forward gives none)


def encode_batch(forward: Forward, arrays: list[np.ndarray], batch_size: int, grid: bool) -> Encoded:
    """Forward passes of exactly `batch_size` images (padded). When a pass fails, each image is tried alone,
    so one image that breaks the encoder is that image's reject; when every image fails alone too, the
    fault is the model's, and it is raised."""
    n = len(arrays)
    pooled = np.zeros((n, POOLED_DIM), np.float32)
    grids = np.zeros((n, GRID_CELLS, POOLED_DIM), np.float16) if grid else None
    early: np.ndarray | None = np.zeros((n, EARLY_DIM), np.float32)
    failed: dict[int, str] = {}
    for start in range(0, n, batch_size):
        part = arrays[start : start + batch_size]
        try:
            p, g, e = _outputs(forward(_pad(part, batch_size)))
            rows = [(start + k, p[k], g[k], None if e is None else e[k]) for k in range(len(part))]
        except Exception as batch_error:
            rows, errors = [], {}
            for k, array in enumerate(part):
                try:
                    p, g, e = _outputs(forward(_pad([array], batch_size)))
                    rows.append((start + k, p[0], g[0], None if e is None else e[0]))
                except Exception as exc:
                    errors[start + k] = f"the encoder failed on this image ({type(exc).__name__})"
            if not rows:
                raise batch_error
            failed.update(errors)
        for position, p, g, e in rows:
            pooled[position] = p
            if grids is not None:
                grids[position] = np.asarray(g).reshape(GRID_CELLS, -1)
            if e is None:
                early = None  # an optimized build made before radcap 0.4: no early-layer output
            elif early is not None:
                early[position] = e
    return Encoded(pooled, grids, failed, early)


def _outputs(outputs: tuple) -> tuple:
    """(pooled, grid, early or None) of a forward pass; a forward with two outputs gives no early statistics."""
    return (*outputs[:2], outputs[2] if len(outputs) > 2 else None)


Item = TypeVar("Item")  # what stream_features streams: a path, an upload, a study's image...


@dataclass
class DecodedBatch:
    """One batch after decoding and the forward pass: per input, its features row or its reject reason."""

    number: int
    items: list  # the inputs, in order
    shas: list[str]  # sha256 of the bytes decoded ('' when unreadable)
    chroma: list[float]  # colour of each decoded image (0 grayscale; 0 for rejects)
    statistics: np.ndarray  # (N, STATISTICS_DIM) pixel statistics of each input (NaN for rejects)
    rows: dict[int, int]  # input position -> row of `encoded`
    reasons: dict[int, str]  # input position -> reject reason
    encoded: Encoded | None  # None when no image of the batch decoded

    @property
    def features(self) -> Encoded:
        """`encoded`, for a batch with rows (`rows` is empty when nothing was encoded)."""
        if self.encoded is None:
            raise ValueError("no image of this batch was encoded")
        return self.encoded

    def encoded_statistics(self) -> np.ndarray:
        """`statistics` in the rows of `encoded` (what the domain guard reads beside `encoded.pooled`)."""
        out = np.full((len(self.features.pooled), STATISTICS_DIM), np.nan, np.float32)
        for position, row in self.rows.items():
            out[row] = self.statistics[position]
        return out

    def grid_rows(self, rows: list[int]) -> np.ndarray:
        """The attention grids of `rows` (the batch was streamed with grid=True)."""
        if self.features.grid is None:
            raise ValueError("this batch was streamed without grids")
        return self.features.grid[rows]


def stream_features(
    items: Sequence[Item],
    path_of: Callable[[Item], Path | bytes],
    forward: Forward,
    batch_size: int,
    input_size: int,
    grid: bool,
    workers: int = 2,
    progress: str | None = None,
    batches: list[list[Item]] | None = None,
) -> Iterator[DecodedBatch]:
    """Decode `items` (two batches ahead, in threads) and encode them batch by batch, yielding each batch.
    `path_of(item)` is the item's file, or its bytes (an upload, a REST request).
    `batches` overrides the default split into `batch_size` chunks (captioning keeps studies whole)."""
    from tqdm import tqdm

    if batches is None:
        batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    # Every forward pass has one shape (one trace): the batch size, or the largest batch when all are smaller
    # (four images are not padded to 32: on a CPU the padding cost 2 s of a 4-image request).
    batch_size = min(batch_size, max(map(len, batches), default=1))
    with (
        ThreadPoolExecutor(workers) as decoders,
        tqdm(total=sum(map(len, batches)), desc=progress or "", unit="img", disable=progress is None) as bar,
    ):
        pending: deque[list[Future]] = deque()

        def submit(batch: list) -> None:
            pending.append([decoders.submit(decode_one, path_of(item), input_size) for item in batch])

        for batch in batches[:2]:
            submit(batch)
        for number, batch in enumerate(batches):
            decoded = [f.result() for f in pending.popleft()]
            if number + 2 < len(batches):
                submit(batches[number + 2])
            good = [k for k, value in enumerate(decoded) if not isinstance(value, ImageRejected)]
            reasons = {k: str(v) for k, v in enumerate(decoded) if isinstance(v, ImageRejected)}
            shas = [v.sha256 for v in decoded]
            chroma = [0.0 if isinstance(v, ImageRejected) else v.chroma for v in decoded]
            statistics = np.full((len(decoded), STATISTICS_DIM), np.nan, np.float32)
            for k in good:
                statistics[k] = decoded[k].statistics
            encoded, rows = None, {}
            if good:
                encoded = encode_batch(forward, [decoded[k].square for k in good], batch_size, grid)
                for row, k in enumerate(good):
                    if row in encoded.failed:
                        reasons[k] = encoded.failed[row]
                    else:
                        rows[k] = row
            yield DecodedBatch(number, batch, shas, chroma, statistics, rows, reasons, encoded)
            bar.update(len(batch))


class PartWriter:
    """Appends batches as row groups of `part-<run>-<n>.parquet` files of up to `part_rows` rows. A file is
    written under a hidden name and renamed into place when full, when it has been open `part_seconds`, or
    when closed: readers never see half a file, nothing is rewritten to make files large, and a crash loses
    at most the open part."""

    def __init__(
        self, store: FeatureStore, run_id: str, part_rows: int = PART_ROWS, part_seconds: float = PART_SECONDS
    ):
        self.store, self.run_id, self.part_rows, self.part_seconds = store, run_id, part_rows, part_seconds
        self.number, self.rows, self.opened = 0, 0, 0.0
        self.writer: pq.ParquetWriter | None = None
        self.tmp: Path | None = None

    def append(self, table: pa.Table) -> None:
        table = FEATURES.validate(table)
        if self.writer is None:
            self.store.root.mkdir(parents=True, exist_ok=True)
            self.tmp = self.store.root / f".writing-{self.run_id}-{self.number:05d}.parquet"
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
            self.opened = time.monotonic()
        self.writer.write_table(table)
        self.rows += table.num_rows
        if self.rows >= self.part_rows or time.monotonic() - self.opened >= self.part_seconds:
            self.close()

    def close(self) -> None:
        if self.writer is None or self.tmp is None:
            return
        self.writer.close()
        target = self.store.root / f"part-{self.run_id}-{self.number:05d}.parquet"
        with open(self.tmp, "rb") as handle:
            os.fsync(handle.fileno())  # the bytes are on disk before the name says the part exists
        os.replace(self.tmp, target)
        self.number, self.rows, self.writer, self.tmp = self.number + 1, 0, None, None


def extract_features(
    items: list[ImageItem],
    forward: Forward,
    store: FeatureStore,
    encoder_name: str,
    encoder_version: str,
    batch_size: int = 32,
    input_size: int = 224,
    decode_workers: int = 2,
    progress: bool = True,
    run_id: str | None = None,
    part_rows: int = PART_ROWS,
) -> ExtractResult:
    """Encode `items` in batches and append them to `store`; files that cannot be encoded become rejects.
    Rows carry the sha256 of the bytes actually decoded (a file edited since planning is stored as edited).
    `run_id` names the parts (default: a new one); a cluster task passes its own, so that running the task
    again replaces its parts instead of adding copies."""
    result, start, run_id = ExtractResult(), time.perf_counter(), run_id or new_run_id()
    parts = PartWriter(store, run_id, part_rows)
    with ThreadPoolExecutor(1) as writer:
        last_write: Future | None = None
        for batch in stream_features(
            items,
            lambda item: Path(item.path),
            forward,
            batch_size,
            input_size,
            True,
            decode_workers,
            "features" if progress else None,
        ):
            for k, reason in sorted(batch.reasons.items()):
                item = batch.items[k]
                result.rejects.append(
                    {"source": item.path, "item": item.image_id, "kind": "image", "stage": "features", "reason": reason}
                )
            if batch.rows:
                positions = sorted(batch.rows)
                kept = [ImageItem(batch.items[k].image_id, batch.items[k].path, batch.shas[k]) for k in positions]
                rows = [batch.rows[k] for k in positions]
                early = batch.features.early
                if early is None:
                    raise RadcapError(
                        f"encoder {encoder_version} gives no early-layer statistics (an optimized build made before "
                        "radcap 0.4): build it again with `radcap optimize-encoder`"
                    )
                table = features_table(
                    kept, batch.features.pooled[rows], batch.grid_rows(rows), encoder_name, encoder_version, early[rows]
                )
                if last_write is not None:
                    last_write.result()  # at most one batch waiting to be written
                last_write = writer.submit(parts.append, table)
                result.encoded += len(kept)
        if last_write is not None:
            last_write.result()
        parts.close()
    result.seconds = time.perf_counter() - start
    return result
