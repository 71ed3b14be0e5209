"""Bulk captioning: images -> CheXNet features -> one report per study, written crash-safe and idempotent.

Output folder layout (`CaptionStore`):
* `captions.parquet`, `captions.csv` (CAPTIONS contract) and `rejects.parquet` (CAPTION_REJECTS): every
  input file in exactly one of them, keyed by its path relative to the input folder;
* `.parts/`: one atomically written Parquet file per batch while a run is in progress.
A crash loses at most the batch in flight. The next run reads the tables and the parts, skips every
(path, sha256) already there (so only new or changed files are captioned), and consolidates: the newest row
of each path wins, the tables are rewritten atomically, and only then are the parts deleted.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from data_contracts import CAPTION_REJECTS, CAPTIONS
from radcap.caption_data import VIEW_ORDER, pack_views
from radcap.imaging import ImageRejected, prepare
from radcap.io import atomic_path, new_run_id, read_table, write_table
from radcap.pacs import InputImage


@dataclass
class CaptionResult:
    captioned: int = 0
    rejected: int = 0
    studies: int = 0
    seconds: float = 0.0


def now_utc() -> pd.Timestamp:
    return pd.Timestamp(datetime.now(timezone.utc))


def reject_row(source_path: str, sha256: str, reason: str) -> dict:
    return {"source_path": source_path, "sha256": sha256, "reason": reason, "rejected_at": now_utc()}


class CaptionStore:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.parts_dir = self.out / ".parts"

    @property
    def captions(self) -> Path:
        return self.out / "captions.parquet"

    @property
    def captions_csv(self) -> Path:
        return self.out / "captions.csv"

    @property
    def rejects(self) -> Path:
        return self.out / "rejects.parquet"

    def _parts(self, table: str) -> list[Path]:
        return sorted(self.parts_dir.glob(f"{table}-*.parquet")) if self.parts_dir.exists() else []

    def _all(self, table: str) -> pd.DataFrame:
        contract, main = (CAPTIONS, self.captions) if table == "captions" else (CAPTION_REJECTS, self.rejects)
        frames = [read_table(main, contract)] if main.exists() else []
        frames += [read_table(p, contract) for p in self._parts(table)]
        return pd.concat(frames, ignore_index=True) if frames else contract.empty()

    def done(self) -> set[tuple[str, str]]:
        """(source_path, sha256) of every input already captioned or rejected, parts included."""
        pairs: set[tuple[str, str]] = set()
        for table in ("captions", "rejects"):
            frame = self._all(table)
            pairs.update(zip(frame["source_path"], frame["sha256"]))
        return pairs

    def write_batch(self, captions: pd.DataFrame, rejects: pd.DataFrame, run_id: str, number: int) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        name = f"{run_id}-{number:06d}.parquet"
        if len(captions):
            write_table(captions, self.parts_dir / f"captions-{name}", CAPTIONS)
        if len(rejects):
            write_table(rejects, self.parts_dir / f"rejects-{name}", CAPTION_REJECTS)

    def consolidate(self) -> dict[str, int]:
        """Fold the parts into the tables; the newest row per source path wins across both tables."""
        parts = self._parts("captions") + self._parts("rejects")
        captions, rejects = self._all("captions"), self._all("rejects")
        both = pd.concat([
            pd.DataFrame({"source_path": captions["source_path"], "time": captions["captioned_at"], "table": "c",
                          "row": np.arange(len(captions))}),
            pd.DataFrame({"source_path": rejects["source_path"], "time": rejects["rejected_at"], "table": "r",
                          "row": np.arange(len(rejects))}),
        ], ignore_index=True).sort_values(["time", "table", "row"], kind="stable")
        newest = both.drop_duplicates("source_path", keep="last")
        keep_c = newest.loc[newest["table"] == "c", "row"].sort_values().to_numpy()
        keep_r = newest.loc[newest["table"] == "r", "row"].sort_values().to_numpy()
        captions = captions.iloc[keep_c].sort_values(["study_id", "source_path"]).reset_index(drop=True)
        rejects = rejects.iloc[keep_r].sort_values("source_path").reset_index(drop=True)
        self.out.mkdir(parents=True, exist_ok=True)
        write_table(captions, self.captions, CAPTIONS)
        write_table(rejects, self.rejects, CAPTION_REJECTS)
        with atomic_path(self.captions_csv) as tmp:
            captions.to_csv(tmp, index=False)
        for part in parts:  # only after the tables hold their rows
            part.unlink(missing_ok=True)
        return {"captioned_total": len(captions), "rejected_total": len(rejects)}


def decode_image(image: InputImage, size: int) -> np.ndarray | str:
    try:
        return prepare(image.path, size)
    except ImageRejected as exc:
        return str(exc)


def study_batches(images: list[InputImage], batch_size: int) -> list[list[list[InputImage]]]:
    """Studies (images in view order) packed into batches of at most `batch_size` images; a study is never
    split, so a crash never leaves a half-captioned study."""
    studies: dict[str, list[InputImage]] = {}
    for image in images:
        studies.setdefault(image.study_id, []).append(image)
    batches, current, count = [], [], 0
    for members in studies.values():
        members = sorted(members, key=lambda i: (VIEW_ORDER[i.view], i.source_path))
        if current and count + len(members) > batch_size:
            batches.append(current)
            current, count = [], 0
        current.append(members)
        count += len(members)
    if current:
        batches.append(current)
    return batches


def encode_padded(forward, arrays: list[np.ndarray], batch_size: int, grid: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Forward passes of exactly `batch_size` images (padded): one compiled shape for every call."""
    pooled, grids = [], []
    for i in range(0, len(arrays), batch_size):
        chunk = np.stack(arrays[i: i + batch_size])
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.uint8)])
        p, g = forward(chunk)
        pooled.append(p[:n])
        if grid:
            grids.append(g[:n].reshape(n, 49, -1).astype(np.float16))
    return np.concatenate(pooled), (np.concatenate(grids) if grid else None)


def caption_images(
    images: list[InputImage],
    bundle,  # radcap.captioner_bundle.CaptionerBundle
    forward,  # uint8 (B,S,S) -> (pooled, grid), as radcap.encoders.Encoder.forward_fn()
    store: CaptionStore,
    model: tuple[str, str, str],  # name, version, encoder version
    batch_size: int = 32,
    input_size: int = 224,
    decoding: dict | None = None,
    progress: bool = True,
) -> CaptionResult:
    """Caption `images` study by study, one part file per batch of studies."""
    from tqdm import tqdm

    attention, max_views = bool(bundle.model.attention), int(bundle.config["max_views"])
    result, start = CaptionResult(), time.perf_counter()
    run_id = new_run_id()
    batches = study_batches(images, batch_size)
    def finish(number: int, batch: list[list[InputImage]], decoded: list, pooled, grid) -> None:
        """Beam-search the batch's studies and write its part (in a thread, while the next batch encodes)."""
        flat = [image for study in batch for image in study]
        rejects = [reject_row(flat[k].source_path, flat[k].sha256, value)
                   for k, value in enumerate(decoded) if isinstance(value, str)]
        rows: list[dict] = []
        if pooled is not None:
            good = [k for k, value in enumerate(decoded) if not isinstance(value, str)]
            position = {k: j for j, k in enumerate(good)}
            studies, members, offset = [], [], 0
            for study in batch:
                keys = [offset + i for i in range(len(study)) if offset + i in position]
                offset += len(study)
                if keys:
                    studies.append([position[k] for k in keys])
                    members.append([flat[k] for k in keys])
            features = pack_views(studies, pooled, grid, max_views)
            captions = bundle.report(features, **(decoding or {}))
            stamp = now_utc()
            for caption, study in zip(captions, members):
                rows += [{"study_id": i.study_id, "image_id": i.image_id, "view": i.view,
                          "source_path": i.source_path, "sha256": i.sha256, "caption": caption,
                          "model": model[0], "model_version": model[1], "encoder_version": model[2],
                          "captioned_at": stamp} for i in study]
            result.studies += len(studies)
        frame = pd.DataFrame(rows, columns=CAPTIONS.column_names)
        store.write_batch(frame, pd.DataFrame(rejects, columns=CAPTION_REJECTS.column_names), run_id, number)
        result.captioned += len(rows)
        result.rejected += len(rejects)

    # Three stages overlap: decoding files (2 threads, one batch ahead), the encoder's forward pass (this
    # thread) and beam search + writing (1 thread, at most one batch waiting), so memory stays a few batches.
    with ThreadPoolExecutor(2) as decoders, ThreadPoolExecutor(1) as finisher, tqdm(
        total=len(images), desc="caption", unit="img", disable=not progress
    ) as bar:
        pending: deque[list[Future]] = deque()
        last: Future | None = None

        def submit(batch: list[list[InputImage]]) -> None:
            pending.append([decoders.submit(decode_image, image, input_size) for study in batch for image in study])

        for batch in batches[:2]:
            submit(batch)
        for number, batch in enumerate(batches):
            decoded = [f.result() for f in pending.popleft()]
            if number + 2 < len(batches):
                submit(batches[number + 2])
            arrays = [value for value in decoded if not isinstance(value, str)]
            pooled, grid = encode_padded(forward, arrays, batch_size, attention) if arrays else (None, None)
            if last is not None:
                last.result()  # raises here if the previous batch failed
            last = finisher.submit(finish, number, batch, decoded, pooled, grid)
            bar.update(len(decoded))
        if last is not None:
            last.result()
    result.seconds = time.perf_counter() - start
    return result
