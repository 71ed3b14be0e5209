"""Bulk captioning: images -> CheXNet features -> one report per study, written crash-safe and idempotent.

Output folder layout (`CaptionStore`):
* `captions.parquet`, `captions.csv` (CAPTIONS contract) and `rejects.parquet` (CAPTION_REJECTS): every
  input file in exactly one of them, keyed by its path relative to the input folder;
* `.parts/`: one atomically written Parquet file per batch while a run is in progress;
* `.lock`: held by the one run that writes the folder (a second run waits, then stops with one line).
A crash loses at most the batch in flight. The next run skips every (path, sha256) already written (so
only new or changed files are read beyond their hash) and consolidates: the newest row of each path wins,
the tables are rewritten atomically, and only then are the parts deleted.

Studies are captioned whole, also across runs: when a new or changed image joins a study that already has
captioned images (a lateral arriving after its frontal, in the next run or the next inbox batch), the study
is captioned again from all its views, and every row of the study carries its newest report.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from radcap.data_contracts import CAPTION_REJECTS, CAPTIONS
from radcap.caption_data import VIEW_ORDER, pack_views
from radcap.features import Forward, stream_features
from radcap.io import atomic_path, exclusive_lock, new_run_id, read_table, write_table
from radcap.pacs import InputImage, Reject


@dataclass
class CaptioningModel:
    """A captioner with exactly the encoder of its training features, and what outputs are stamped with."""

    bundle: object  # radcap.captioner_bundle.CaptionerBundle
    encoder: object  # radcap.encoders.Encoder
    name: str  # registered name (or the bundle folder)
    version: str  # registry version number (or "local")


@dataclass
class CaptionResult:
    captioned: int = 0
    rejected: int = 0
    studies: int = 0
    out_of_domain: int = 0  # studies flagged (or withheld) by the model's domain guard
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

    @contextmanager
    def writing(self, wait_seconds: float) -> Iterator["CaptionStore"]:
        """Hold the folder's lock while writing: one writer per output folder, across processes."""
        self.out.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.out / ".lock", wait_seconds, f"{self.out}"):
            yield self

    def _parts(self, table: str) -> list[Path]:
        return sorted(self.parts_dir.glob(f"{table}-*.parquet")) if self.parts_dir.exists() else []

    def _all(self, table: str, parts: list[Path] | None = None) -> pd.DataFrame:
        contract, main = (CAPTIONS, self.captions) if table == "captions" else (CAPTION_REJECTS, self.rejects)
        frames = [read_table(main, contract)] if main.exists() else []
        frames += [read_table(p, contract) for p in (self._parts(table) if parts is None else parts)]
        return pd.concat(frames, ignore_index=True) if frames else contract.empty()

    def current(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(captions, rejects) as they stand, parts included: the newest row per source path wins across both
        tables, and each study's rows carry its newest report."""
        return self._fold(self._all("captions"), self._all("rejects"))

    def done(self) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(source_path, sha256) of every input already captioned, and of every one rejected, parts included."""
        captions, rejects = self.current()
        return set(zip(captions["source_path"], captions["sha256"])), set(zip(rejects["source_path"], rejects["sha256"]))

    def write_batch(self, captions: pd.DataFrame, rejects: pd.DataFrame, run_id: str, number: int | str) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        name = f"{run_id}-{number:06d}.parquet" if isinstance(number, int) else f"{run_id}-{number}.parquet"
        if len(captions):
            write_table(captions, self.parts_dir / f"captions-{name}", CAPTIONS)
        if len(rejects):
            write_table(rejects, self.parts_dir / f"rejects-{name}", CAPTION_REJECTS)

    @staticmethod
    def _fold(captions: pd.DataFrame, rejects: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        both = pd.concat([
            pd.DataFrame({"source_path": captions["source_path"], "time": captions["captioned_at"], "table": "c",
                          "row": np.arange(len(captions))}),
            pd.DataFrame({"source_path": rejects["source_path"], "time": rejects["rejected_at"], "table": "r",
                          "row": np.arange(len(rejects))}),
        ], ignore_index=True).sort_values(["time", "table", "row"], kind="stable")
        newest = both.drop_duplicates("source_path", keep="last")
        keep_c = newest.loc[newest["table"] == "c", "row"].sort_values().to_numpy()
        keep_r = newest.loc[newest["table"] == "r", "row"].sort_values().to_numpy()
        captions = captions.iloc[keep_c].reset_index(drop=True)
        rejects = rejects.iloc[keep_r].sort_values("source_path").reset_index(drop=True)
        if len(captions):  # a study's newest report, on every row of the study
            report = ["caption", "model", "model_version", "encoder_version", "captioned_at", "ood_score", "in_domain",
                      "ood_reason"]
            latest = captions.sort_values("captioned_at", kind="stable").drop_duplicates("study_id", keep="last")
            latest = latest.set_index("study_id")[report]
            captions[report] = latest.loc[captions["study_id"]].to_numpy()
        captions = captions.sort_values(["study_id", "source_path"]).reset_index(drop=True)
        return captions.astype({"captioned_at": CAPTIONS.empty()["captioned_at"].dtype}), rejects

    def consolidate(self) -> dict[str, int]:
        """Fold the parts into the tables (see `current`); call it holding the lock (`writing`)."""
        parts_c, parts_r = self._parts("captions"), self._parts("rejects")
        captions, rejects = self._fold(self._all("captions", parts_c), self._all("rejects", parts_r))
        self.out.mkdir(parents=True, exist_ok=True)
        write_table(captions, self.captions, CAPTIONS)
        write_table(rejects, self.rejects, CAPTION_REJECTS)
        with atomic_path(self.captions_csv) as tmp:
            captions.to_csv(tmp, index=False)
        for part in parts_c + parts_r:  # only after the tables hold their rows
            part.unlink(missing_ok=True)
        return {"captioned_total": len(captions), "rejected_total": len(rejects)}


def with_companions(images: list[InputImage], store: CaptionStore, root: Path) -> list[InputImage]:
    """`images` plus the already captioned images of their studies that are still readable under `root`
    (paths as the store records them), so each touched study is captioned again from all its views."""
    if not images or root.is_file():
        return images
    captions, _ = store.current()
    studies, fresh = {i.study_id for i in images}, {i.source_path for i in images}
    earlier = captions[captions["study_id"].isin(studies) & ~captions["source_path"].isin(fresh)]
    companions = [InputImage(root / row.source_path, row.source_path, row.sha256, "known", row.study_id,
                             row.image_id, row.view)
                  for row in earlier.itertuples() if (root / row.source_path).is_file()]
    return images + companions


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


def report_studies(bundle, features: dict, decoding: dict) -> tuple[list[str | None], dict[int, str]]:
    """Reports for a batch of studies; when decoding the batch fails, each study is tried alone, so one
    study that breaks the decoder is that study's rejects. If every study fails alone too, it is raised."""
    try:
        return bundle.report(features, **decoding), {}
    except Exception as batch_error:  # noqa: BLE001
        captions: list[str | None] = []
        failed: dict[int, str] = {}
        for s in range(len(features["view_mask"])):
            try:
                captions += bundle.report({k: v[s: s + 1] for k, v in features.items()}, **decoding)
            except Exception as exc:  # noqa: BLE001
                captions.append(None)
                failed[s] = f"report generation failed for this study ({type(exc).__name__})"
        if len(failed) == len(captions):
            raise batch_error
        return captions, failed


def judge_studies(guard, pooled: np.ndarray, studies: list[list[int]], modalities: list[str | None],
                  chroma: list[float] | None = None) -> list[tuple]:
    """(ood_score, in_domain, reason) per study: its highest image score, its DICOM modality and its most
    colourful image."""
    if guard is None:
        return [(None, None, None)] * len(studies)
    image_scores = guard.score_images(pooled)
    out = []
    for rows, modality, colour in zip(studies, modalities, chroma or [0.0] * len(studies)):
        score = float(image_scores[rows].max())
        in_domain, reason = guard.judge(score, modality, colour)
        out.append((score, in_domain, reason))
    return out


def caption_images(images: list[InputImage], model: CaptioningModel, store: CaptionStore, batch_size: int = 32,
                   decoding: dict | None = None, progress: bool = True, forward: Forward | None = None,
                   ood_policy: str = "flag") -> CaptionResult:
    """Caption `images` study by study, one part file per batch of studies (`forward`: the encoder's compiled
    forward function when the caller already has one). Each study gets its out-of-domain score and verdict;
    with `ood_policy="withhold"` a study out of domain gets no caption."""
    bundle = model.bundle
    attention, max_views = bool(bundle.model.attention), bundle.config.max_views
    stamp_model = (model.name, model.version, model.encoder.store_version)  # VERSION@int8 below fp32
    forward = forward or model.encoder.forward_fn()
    result, start, run_id = CaptionResult(), time.perf_counter(), new_run_id()
    batches = study_batches(images, batch_size)

    def finish(batch) -> None:
        """Beam-search the batch's studies and write its part (in a thread, while the next batch encodes)."""
        flat = batch.items
        rejects = {k: reject_row(flat[k].source_path, batch.shas[k] or flat[k].sha256, reason)
                   for k, reason in batch.reasons.items()}
        studies, members, offset = [], [], 0
        for study in batches[batch.number]:
            keys = [offset + i for i in range(len(study)) if offset + i in batch.rows]
            offset += len(study)
            if keys:
                studies.append([batch.rows[k] for k in keys])
                members.append(keys)
        rows: list[dict] = []
        if studies:
            encoded = batch.encoded
            features = pack_views(studies, encoded.pooled, encoded.grid if attention else None, max_views)
            captions, failed = report_studies(bundle, features, decoding or {})
            modalities = [next((flat[k].modality for k in keys if flat[k].modality), None) for keys in members]
            colours = [max(batch.chroma[k] for k in keys) for keys in members]
            verdicts = judge_studies(bundle.domain, encoded.pooled, studies, modalities, colours)
            stamp = now_utc()
            for s, (caption, keys, (score, in_domain, reason)) in enumerate(zip(captions, members, verdicts)):
                if s not in failed and in_domain is False:
                    result.out_of_domain += 1
                withheld = in_domain is False and ood_policy == "withhold"
                for k in keys:
                    image = flat[k]
                    if s in failed:
                        rejects[k] = reject_row(image.source_path, batch.shas[k], failed[s])
                        continue
                    rows.append({"study_id": image.study_id, "image_id": image.image_id, "view": image.view,
                                 "source_path": image.source_path, "sha256": batch.shas[k],
                                 "caption": None if withheld else caption, "model": stamp_model[0],
                                 "model_version": stamp_model[1], "encoder_version": stamp_model[2],
                                 "captioned_at": stamp, "ood_score": score, "in_domain": in_domain,
                                 "ood_reason": f"withheld: {reason}" if withheld else reason})
            result.studies += len(studies) - len(failed)
        frame = pd.DataFrame(rows, columns=CAPTIONS.column_names)
        store.write_batch(frame, pd.DataFrame(list(rejects.values()), columns=CAPTION_REJECTS.column_names),
                          run_id, batch.number)
        result.captioned += len(rows)
        result.rejected += len(rejects)

    # Three stages overlap: decoding files (2 threads, one batch ahead), the encoder's forward pass (this
    # thread) and beam search + writing (1 thread, at most one batch waiting), so memory stays a few batches.
    with ThreadPoolExecutor(1) as finisher:
        last: Future | None = None
        flat_batches = [[image for study in batch for image in study] for batch in batches]
        for batch in stream_features(images, lambda image: image.path, forward, batch_size, model.encoder.input_size,
                                     attention, progress="caption" if progress else None, batches=flat_batches):
            if last is not None:
                last.result()  # raises here if the previous batch failed
            last = finisher.submit(finish, batch)
        if last is not None:
            last.result()
    result.seconds = time.perf_counter() - start
    return result


def reject_frame(rejects: list[Reject]) -> pd.DataFrame:
    return pd.DataFrame([reject_row(r.source_path, r.sha256, r.reason) for r in rejects],
                        columns=CAPTION_REJECTS.column_names)
