"""Bulk captioning: images -> CheXNet features -> one report per study, written crash-safe and idempotent.

Output folder layout (`CaptionStore`):
* `captions.parquet/`: a Parquet dataset (CAPTIONS contract), one row per captioned input file, read as one
  table by `pd.read_parquet`/`pyarrow.dataset`; its files (`segment-*.parquet`) are written whole and never
  appended to; `rejects.parquet` (CAPTION_REJECTS): the inputs that could not be captioned. Every input file
  is in exactly one of the two, keyed by its path relative to the input folder;
* `captions.csv`: this run's export, the rows of the studies it captioned (the whole table is the dataset);
* `.parts/`: one atomically written Parquet file per batch while a run is in progress;
* `.lock`: held by the one run that writes the folder (a second run waits, then stops with one line).
A crash loses at most the batch in flight. The next run skips every (path, sha256) already written (so
only new or changed files are read beyond their hash) and consolidates: the parts become one new segment,
and only the segments holding rows the new ones replace (a changed file, a re-captioned study) are
rewritten, so a run over a 10^7-row table writes what it captioned, not the table. Too many small segments
are merged (`MAX_SEGMENTS`). Only then are the parts deleted; a crash in between is repaired by the next
consolidation (the newest row of each path wins, whichever file holds it).

Studies are captioned whole, also across runs: when a new or changed image joins a study that already has
captioned images (a lateral arriving after its frontal, in the next run or the next inbox batch), the study
is captioned again from all its views, and every row of the study carries its newest report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq

from radcap.captioning.bundle import CaptionerBundle
from radcap.captioning.data import VIEW_ORDER, pack_views
from radcap.core.io import atomic_path, exclusive_lock, new_run_id, read_table, write_json, write_table
from radcap.data_contracts import CAPTION_REJECTS, CAPTIONS
from radcap.imaging.encoders import Encoder
from radcap.imaging.features import Forward, stream_features
from radcap.pacs.exports import InputImage, Reject


@dataclass
class CaptioningModel:
    """A captioner with exactly the encoder of its training features, and what outputs are stamped with."""

    bundle: CaptionerBundle
    encoder: Encoder
    name: str  # registered name (or the bundle folder)
    version: str  # registry version number (or "local")


def load_captioning_model(uri: str, encoder: str | None = None, precision: str = "fp32") -> CaptioningModel:
    """The captioner and exactly the encoder of its training features, at `precision` only when the captioner
    passed the precision check at it. An alias is resolved once: the version written in the outputs is the one
    loaded, even if the alias moves meanwhile."""
    from radcap.captioning.bundle import load_captioner
    from radcap.imaging.encoders import at_precision, encoder_for
    from radcap.imaging.precision import require_precision

    loaded = load_captioner(uri)
    require_precision(loaded, precision)
    chosen = at_precision(encoder_for(loaded.bundle.config, encoder), precision)
    return CaptioningModel(loaded.bundle, chosen, loaded.name, loaded.version)


@dataclass
class CaptionResult:
    captioned: int = 0
    rejected: int = 0
    studies: int = 0
    out_of_domain: int = 0  # studies flagged (or withheld) by the model's domain guard
    seconds: float = 0.0


def now_utc() -> pd.Timestamp:
    return pd.Timestamp(datetime.now(UTC))


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
    def writing(self, wait_seconds: float) -> Iterator[CaptionStore]:
        """Hold the folder's lock while writing: one writer per output folder, across processes."""
        self.out.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.out / ".lock", wait_seconds, f"{self.out}"):
            yield self

    def _parts(self, table: str) -> list[Path]:
        return sorted(self.parts_dir.glob(f"{table}-*.parquet")) if self.parts_dir.exists() else []

    def segments(self) -> list[Path]:
        """The files of the captions dataset (a table written before datasets is moved in first; an
        interrupted commit is finished first)."""
        self._adopt_single_file()
        self._recover()
        return sorted(self.captions.glob("segment-*.parquet")) if self.captions.is_dir() else []

    @property
    def _journal(self) -> Path:
        return self.captions / "_commit.json"  # '_' and '.' names are not part of the dataset for readers

    def _commit(
        self, writes: dict[Path, pd.DataFrame | None], parts: list[Path], rejects: pd.DataFrame | None = None
    ) -> None:
        """Replace several files of the dataset as one step that survives a crash: every new file is written
        hidden (`.pending-*`), then a journal names the renames and deletions, then they are applied. A
        crash before the journal leaves the dataset as it was (the pending files are dropped), after it the
        next access finishes the commit; either way no row is lost or doubled."""
        self.captions.mkdir(parents=True, exist_ok=True)
        renames, deletions = {}, [str(p) for p in parts]
        for target, rows in writes.items():
            if rows is None or not len(rows):
                deletions.append(str(target))
                continue
            pending = target.with_name(f".pending-{target.name}")
            write_table(rows, pending, CAPTIONS)
            renames[str(pending)] = str(target)
        if rejects is not None:
            pending = self.captions / ".pending-rejects.parquet"
            write_table(rejects, pending, CAPTION_REJECTS)
            renames[str(pending)] = str(self.rejects)
        write_json({"renames": renames, "deletions": deletions}, self._journal)
        self._recover()

    def _recover(self) -> None:
        if not self.captions.is_dir():
            return
        if self._journal.exists():
            plan = json.loads(self._journal.read_text(encoding="utf-8"))
            for pending, target in plan["renames"].items():
                if Path(pending).exists():
                    _move(pending, target)
            for path in plan["deletions"]:
                Path(path).unlink(missing_ok=True)
            self._journal.unlink()
        for pending in self.captions.glob(".pending-*"):  # written before a crash that came before the journal
            pending.unlink(missing_ok=True)

    def _adopt_single_file(self) -> None:
        """`captions.parquet` was one file before it was a dataset: it becomes the dataset's first segment
        (two renames; a crash between them is finished by the next call)."""
        legacy = self.out / ".captions-single-file.parquet"
        if self.captions.is_file():
            self.captions.rename(legacy)
        if legacy.exists():
            self.captions.mkdir(parents=True, exist_ok=True)
            legacy.rename(self.captions / "segment-00000000000000000000-legacy.parquet")

    def _all(self, table: str, parts: list[Path] | None = None) -> pd.DataFrame:
        if table == "captions":
            files, contract = self.segments(), CAPTIONS
        else:
            files, contract = ([self.rejects] if self.rejects.exists() else []), CAPTION_REJECTS
        frames = [read_table(f, contract) for f in files]
        frames += [read_table(p, contract) for p in (self._parts(table) if parts is None else parts)]
        return _concat(frames, contract)

    def current(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(captions, rejects) as they stand, parts included: the newest row per source path wins across both
        tables, and each study's rows carry its newest report."""
        return self._fold(self._all("captions"), self._all("rejects"))

    def done(self) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(source_path, sha256) of every input already captioned, and of every one rejected, parts included."""
        captions, rejects = self.current()
        return set(zip(captions["source_path"], captions["sha256"])), set(
            zip(rejects["source_path"], rejects["sha256"])
        )

    def write_batch(self, captions: pd.DataFrame, rejects: pd.DataFrame, run_id: str, number: int | str) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        name = f"{run_id}-{number:06d}.parquet" if isinstance(number, int) else f"{run_id}-{number}.parquet"
        if len(captions):
            write_table(captions, self.parts_dir / f"captions-{name}", CAPTIONS)
        if len(rejects):
            write_table(rejects, self.parts_dir / f"rejects-{name}", CAPTION_REJECTS)

    @staticmethod
    def _fold(captions: pd.DataFrame, rejects: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        both = pd.concat(
            [
                pd.DataFrame(
                    {
                        "source_path": captions["source_path"],
                        "time": captions["captioned_at"],
                        "table": "c",
                        "row": np.arange(len(captions)),
                    }
                ),
                pd.DataFrame(
                    {
                        "source_path": rejects["source_path"],
                        "time": rejects["rejected_at"],
                        "table": "r",
                        "row": np.arange(len(rejects)),
                    }
                ),
            ],
            ignore_index=True,
        ).sort_values(["time", "table", "row"], kind="stable")
        newest = both.drop_duplicates("source_path", keep="last")
        keep_c = newest.loc[newest["table"] == "c", "row"].sort_values().to_numpy()
        keep_r = newest.loc[newest["table"] == "r", "row"].sort_values().to_numpy()
        captions = captions.iloc[keep_c].reset_index(drop=True)
        rejects = rejects.iloc[keep_r].sort_values("source_path").reset_index(drop=True)
        if len(captions):  # a study's newest report, on every row of the study
            report = [
                "caption",
                "model",
                "model_version",
                "encoder_version",
                "captioned_at",
                "ood_score",
                "in_domain",
                "ood_reason",
            ]
            latest = captions.sort_values("captioned_at", kind="stable").drop_duplicates("study_id", keep="last")
            latest = latest.set_index("study_id")[report]
            captions[report] = latest.loc[captions["study_id"]].to_numpy()
        captions = captions.sort_values(["study_id", "source_path"]).reset_index(drop=True)
        return captions.astype({"captioned_at": CAPTIONS.empty()["captioned_at"].dtype}), rejects

    def consolidate(self) -> dict[str, int]:
        """Fold the parts into the dataset (see the module doc); call it holding the lock (`writing`)."""
        parts_c, parts_r = self._parts("captions"), self._parts("rejects")
        new_c = _concat([read_table(p, CAPTIONS) for p in parts_c], CAPTIONS)
        new_r = _concat([read_table(p, CAPTION_REJECTS) for p in parts_r], CAPTION_REJECTS)
        touched_paths = set(new_c["source_path"]) | set(new_r["source_path"])
        touched_studies = set(new_c["study_id"])
        # Only the segments holding a replaced path or a re-captioned study are read whole and rewritten.
        affected = [f for f in self.segments() if _touches(f, touched_paths, touched_studies)]
        old_c = [read_table(f, CAPTIONS).assign(_origin=str(f)) for f in affected]
        old_r = read_table(self.rejects, CAPTION_REJECTS) if self.rejects.exists() else CAPTION_REJECTS.empty()
        captions, rejects = self._fold(
            pd.concat([*old_c, new_c.assign(_origin="")], ignore_index=True),
            pd.concat([old_r, new_r], ignore_index=True),
        )
        by_origin = {origin: rows.drop(columns="_origin") for origin, rows in captions.groupby("_origin", sort=False)}
        writes = {Path(f): by_origin.get(str(f)) for f in affected}  # None: every row it held was replaced
        if "" in by_origin:
            writes[self.captions / f"segment-{new_run_id()}.parquet"] = by_origin[""]
        with atomic_path(self.captions_csv) as tmp:  # this run's export
            captions[captions["study_id"].isin(touched_studies)].drop(columns="_origin").to_csv(tmp, index=False)
        # One commit: the new and rewritten segments, the rejects table (small: rewritten whole), and the parts
        # deleted only with it, so a path is never in both tables nor in neither.
        self._commit(writes, parts_c + parts_r, rejects)
        self.merge_small_segments()
        if not self.segments():  # an empty table still has its columns for readers of the dataset
            write_table(CAPTIONS.empty(), self.captions / "segment-00000000000000000000-empty.parquet", CAPTIONS)
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in self.segments())
        return {"captioned_total": total, "rejected_total": len(rejects), "segments": len(self.segments())}

    def merge_small_segments(self, max_segments: int | None = None, target_rows: int | None = None) -> int:
        """Past `max_segments` files, merge the smallest (each under `target_rows`) into one: a nightly run adds a
        segment, so small ones pile up; big ones are never rewritten by a merge. Returns the files merged."""
        max_segments, target_rows = max_segments or MAX_SEGMENTS, target_rows or SEGMENT_TARGET_ROWS
        sizes = sorted((pq.ParquetFile(f).metadata.num_rows, f) for f in self.segments())
        if len(sizes) <= max_segments:
            return 0
        small = [f for rows, f in sizes if rows < target_rows][: len(sizes) - max_segments + 1]
        if len(small) < 2:
            return 0
        merged = pd.concat([read_table(f, CAPTIONS) for f in small], ignore_index=True)
        self._commit(
            {
                self.captions / f"segment-{new_run_id()}.parquet": merged.sort_values(["study_id", "source_path"]),
                **dict.fromkeys(small),
            },
            [],
        )
        return len(small)


MAX_SEGMENTS = 64  # files in the captions dataset before the small ones are merged
SEGMENT_TARGET_ROWS = 1_000_000  # a segment this big is never rewritten by a merge


def _move(source: str, target: str) -> None:
    os.replace(source, target)  # atomic on one filesystem (a separate function: tests crash a commit here)


def _concat(frames: list[pd.DataFrame], contract) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else contract.empty()


def _touches(segment: Path, paths: set[str], studies: set[str]) -> bool:
    """Does the segment hold any of `paths` or `studies`? (Two columns read, not the rows.)"""
    if not paths and not studies:
        return False
    keys = pq.read_table(segment, columns=["source_path", "study_id"])
    return bool(
        pa.compute.any(pa.compute.is_in(keys["source_path"], pa.array(sorted(paths), pa.string()))).as_py()
        or pa.compute.any(pa.compute.is_in(keys["study_id"], pa.array(sorted(studies), pa.string()))).as_py()
    )


def with_companions(images: list[InputImage], store: CaptionStore, root: Path) -> list[InputImage]:
    """`images` plus the already captioned images of their studies that are still readable under `root`
    (paths as the store records them), so each touched study is captioned again from all its views."""
    if not images or root.is_file():
        return images
    captions, _ = store.current()
    studies, fresh = {i.study_id for i in images}, {i.source_path for i in images}
    earlier = captions[captions["study_id"].isin(studies) & ~captions["source_path"].isin(fresh)]
    companions = [
        InputImage(root / row.source_path, row.source_path, row.sha256, "known", row.study_id, row.image_id, row.view)
        for row in earlier.itertuples()
        if (root / row.source_path).is_file()
    ]
    return images + companions


def study_batches(images: list[InputImage], batch_size: int) -> list[list[list[InputImage]]]:
    """Studies (images in view order) packed into batches of at most `batch_size` images; a study is never
    split, so a crash never leaves a half-captioned study."""
    studies: dict[str, list[InputImage]] = {}
    for image in images:
        studies.setdefault(image.study_id, []).append(image)
    batches: list[list[list[InputImage]]] = []
    current: list[list[InputImage]] = []
    count = 0
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
    except Exception as batch_error:
        captions: list[str | None] = []
        failed: dict[int, str] = {}
        for s in range(len(features["view_mask"])):
            try:
                captions += bundle.report({k: v[s : s + 1] for k, v in features.items()}, **decoding)
            except Exception as exc:
                captions.append(None)
                failed[s] = f"report generation failed for this study ({type(exc).__name__})"
        if len(failed) == len(captions):
            raise batch_error
        return captions, failed


def judge_studies(
    guard,
    pooled: np.ndarray,
    statistics: np.ndarray,
    studies: list[list[int]],
    modalities: list[str | None],
    chroma: list[float],
) -> list[tuple]:
    """(ood_score, in_domain, reason) per study: its highest image score (pooled features and pixel statistics,
    one row per image), its DICOM modality and its most colourful image. Every path that captions, retrieves or
    serves judges with this one function, so a study gets the same verdict everywhere."""
    if guard is None:
        return [(None, None, None)] * len(studies)
    image_scores = guard.score_images(pooled, statistics)
    out = []
    for rows, modality, colour in zip(studies, modalities, chroma):
        score = float(image_scores[rows].max())
        in_domain, reason = guard.judge(score, modality, colour)
        out.append((score, in_domain, reason))
    return out


def caption_images(
    images: list[InputImage],
    model: CaptioningModel,
    store: CaptionStore,
    batch_size: int = 32,
    decoding: dict | None = None,
    progress: bool = True,
    forward: Forward | None = None,
    ood_policy: str = "flag",
    run_id: str | None = None,
) -> CaptionResult:
    """Caption `images` study by study, one part file per batch of studies (`forward`: the encoder's compiled
    forward function when the caller already has one). Each study gets its out-of-domain score and verdict;
    with `ood_policy="withhold"` a study out of domain gets no caption. `run_id` names the parts (default: a
    new one; a cluster task passes its own, so that running it again replaces its parts, never adds copies)."""
    bundle = model.bundle
    attention, max_views = bool(bundle.model.attention), bundle.config.max_views
    stamp_model = (model.name, model.version, model.encoder.store_version)  # VERSION@int8 below fp32
    forward = forward or model.encoder.forward_fn()
    result, start, run_id = CaptionResult(), time.perf_counter(), run_id or new_run_id()
    batches = study_batches(images, batch_size)

    def finish(batch) -> None:
        """Beam-search the batch's studies and write its part (in a thread, while the next batch encodes)."""
        flat = batch.items
        rejects = {
            k: reject_row(flat[k].source_path, batch.shas[k] or flat[k].sha256, reason)
            for k, reason in batch.reasons.items()
        }
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
            verdicts = judge_studies(
                bundle.domain, encoded.pooled, batch.encoded_statistics(), studies, modalities, colours
            )
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
                    rows.append(
                        {
                            "study_id": image.study_id,
                            "image_id": image.image_id,
                            "view": image.view,
                            "source_path": image.source_path,
                            "sha256": batch.shas[k],
                            "caption": None if withheld else caption,
                            "model": stamp_model[0],
                            "model_version": stamp_model[1],
                            "encoder_version": stamp_model[2],
                            "captioned_at": stamp,
                            "ood_score": score,
                            "in_domain": in_domain,
                            "ood_reason": f"withheld: {reason}" if withheld else reason,
                        }
                    )
            result.studies += len(studies) - len(failed)
        frame = pd.DataFrame(rows, columns=CAPTIONS.column_names)
        store.write_batch(
            frame, pd.DataFrame(list(rejects.values()), columns=CAPTION_REJECTS.column_names), run_id, batch.number
        )
        result.captioned += len(rows)
        result.rejected += len(rejects)

    # Three stages overlap: decoding files (2 threads, one batch ahead), the encoder's forward pass (this
    # thread) and beam search + writing (1 thread, at most one batch waiting), so memory stays a few batches.
    with ThreadPoolExecutor(1) as finisher:
        last: Future | None = None
        flat_batches = [[image for study in batch for image in study] for batch in batches]
        for batch in stream_features(
            images,
            lambda image: image.path,
            forward,
            batch_size,
            model.encoder.input_size,
            attention,
            progress="caption" if progress else None,
            batches=flat_batches,
        ):
            if last is not None:
                last.result()  # raises here if the previous batch failed
            last = finisher.submit(finish, batch)
        if last is not None:
            last.result()
    result.seconds = time.perf_counter() - start
    return result


def reject_frame(rejects: list[Reject]) -> pd.DataFrame:
    return pd.DataFrame(
        [reject_row(r.source_path, r.sha256, r.reason) for r in rejects], columns=CAPTION_REJECTS.column_names
    )
