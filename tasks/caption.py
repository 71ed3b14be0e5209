"""Bulk captioning tasks: resolve the model, scan the inputs, caption the new ones, consolidate the outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect.logging import get_run_logger

from radcap.captioning.bulk import (
    CaptioningModel,
    CaptionResult,
    CaptionStore,
    caption_images,
    load_captioning_model,
    reject_frame,
    with_companions,
)
from radcap.core.io import new_run_id
from radcap.core.settings import BulkCaptioningSettings, get_settings
from radcap.data_contracts import CAPTIONS
from radcap.operations.cluster import dask_client
from radcap.pacs.exports import InputImage, identifiers, relative_path, scan, walk_inputs
from radcap.tasks import registry_task, uncached


@registry_task
def load_model(uri: str, encoder: str | None = None, precision: str = "fp32") -> CaptioningModel:
    """`radcap.captioning.bulk.load_captioning_model`, logged."""
    model = load_captioning_model(uri, encoder, precision)
    get_run_logger().info(
        "captioner %s version %s (%s) on encoder %s at %s",
        model.name,
        model.version,
        model.bundle.config.architecture,
        model.encoder.version,
        precision,
    )
    return model


@dataclass
class Inputs:
    todo: list[InputImage]  # new or changed images, and the earlier images of their studies
    new: int  # new or changed images
    already_done: int
    rejected: int  # rejected now, or before and unchanged


@uncached
def scan_inputs(root: Path, out: Path, cfg: BulkCaptioningSettings, under: Path | None = None) -> Inputs:
    """New inputs to caption (with their studies' earlier images); unreadable ones are recorded as rejects."""
    store = CaptionStore(out)
    # Only the rows of the files found here are read, not the whole table (a PACS chunk is a few studies).
    walked = walk_inputs(root, under, out)
    candidates = [relative_path(p, root) for p in walked[0]] + [r.source_path for r in walked[1]]
    captioned, rejected = store.done(paths=candidates)
    found = scan(
        root,
        identifiers(cfg.identifiers, cfg.id_salt),
        exclude=out,
        done=captioned | rejected,
        under=under,
        rejected=rejected,
        walked=walked,  # walked once, for the rows to read and for the scan
    )
    if found.rejects:
        # A part of its own per run: a crashed run's scan part must not be replaced by the next run's.
        store.write_batch(CAPTIONS.empty(), reject_frame(found.rejects), new_run_id(), "scan")
    todo = with_companions(found.images, store, root)
    get_run_logger().info(
        "%s: %d new or changed images (+%d earlier images of their studies), %d already done, %d rejected",
        under or root,
        len(found.images),
        len(todo) - len(found.images),
        found.done,
        len(found.rejects),
    )
    return Inputs(todo, len(found.images), found.done, len(found.rejects) + found.done_rejected)


def model_uri(model: CaptioningModel) -> str:
    """The version loaded, never the alias (a cluster's workers load exactly what the caller resolved)."""
    return str(Path(model.name).resolve()) if model.version == "local" else f"models:/{model.name}/{model.version}"


@uncached
def caption_batch(
    todo: list[InputImage],
    model: CaptioningModel,
    out: Path,
    cfg: BulkCaptioningSettings,
    cluster: str | None = None,
    encoder: str | None = None,
) -> CaptionResult:
    """Caption `todo` in this process, or across the Dask cluster `cluster` (radcap.operations.cluster)."""
    decoding = {} if cfg.consensus_samples is None else {"consensus_samples": cfg.consensus_samples}
    with dask_client(cluster) as client:
        if client is None:
            result = caption_images(
                todo, model, CaptionStore(out), cfg.batch_size, decoding=decoding, ood_policy=cfg.ood_policy
            )
        else:
            from radcap.operations.scaleout import caption_on_cluster

            result = caption_on_cluster(
                client,
                todo,
                model_uri(model),
                encoder,
                cfg.precision,
                out,
                cfg.batch_size,
                cfg.ood_policy,
                new_run_id(),
                get_settings().cluster_task_images,
                decoding,
            )
    get_run_logger().info(
        "captioned %d images in %d studies (%d out of the model's domain), %d rejected, %.1f s",
        result.captioned,
        result.studies,
        result.out_of_domain,
        result.rejected,
        result.seconds,
    )
    return result


@uncached
def consolidate(out: Path) -> dict:
    store = CaptionStore(out)
    return {**store.consolidate(), "captions": str(store.captions), "rejects": str(store.rejects)}
