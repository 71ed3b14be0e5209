"""Bulk captioning: images -> CheXNet features -> one report per study, written crash-safe and idempotent.

Outputs are written through `CaptionStore` (radcap.captioning.store): Delta Lake tables of captions, rejects
and report history; each batch staged atomically, so a crash loses at most the batch in flight and the next
run skips every (path, sha256) already written (only new or changed files are read beyond their hash).

Studies are captioned whole, also across runs: when a new or changed image joins a study that already has
captioned images (a lateral arriving after its frontal, in the next run or the next inbox batch), the study
is captioned again from all its views, and every row of the study carries its newest report.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from radcap.captioning.bundle import CaptionerBundle
from radcap.captioning.data import VIEW_ORDER, pack_views
from radcap.captioning.store import CaptionStore
from radcap.core.io import new_run_id
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


def with_companions(images: list[InputImage], store: CaptionStore, root: Path) -> list[InputImage]:
    """`images` plus the already captioned images of their studies that are still readable under `root`
    (paths as the store records them), so each touched study is captioned again from all its views."""
    if not images or root.is_file():
        return images
    studies, fresh = {i.study_id for i in images}, {i.source_path for i in images}
    captions, _ = store.current(studies=sorted(studies))  # those studies' rows only
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
    layers: np.ndarray | None = None,
) -> list[tuple]:
    """(ood_score, in_domain, reason) per study: its highest image score (pooled features, pixel statistics and
    early-layer statistics, one row per image), its DICOM modality and its most colourful image. Every path that
    captions, retrieves or serves judges with this one function, so a study gets the same verdict everywhere."""
    if guard is None:
        return [(None, None, None)] * len(studies)
    image_scores = guard.score_images(pooled, statistics, layers)
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
                bundle.domain, encoded.pooled, batch.encoded_statistics(), studies, modalities, colours, encoded.early
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
