"""Bulk captioning tasks: resolve the model, scan the inputs, caption the new ones, consolidate the outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect.logging import get_run_logger

from radcap import registry
from radcap.captioning import CaptioningModel, CaptionResult, CaptionStore, caption_images, reject_frame, with_companions
from radcap.data_contracts import CAPTIONS
from radcap.encoders import at_precision, encoder_for
from radcap.precision import require_precision
from radcap.io import new_run_id
from radcap.pacs import InputImage, identifiers, scan
from radcap.settings import BulkCaptioningSettings
from radcap.tasks import registry_task, uncached


@registry_task
def load_model(uri: str, encoder: str | None = None, precision: str = "fp32") -> CaptioningModel:
    """The captioner and exactly the encoder of its training features, at `precision` only when the captioner
    passed the precision check at it. An alias is resolved once: the version written in the outputs is the one
    loaded, even if the alias moves meanwhile."""
    loaded = registry.load_captioner(uri)
    require_precision(loaded, precision)
    chosen = at_precision(encoder_for(loaded.bundle.config, encoder), precision)
    model = CaptioningModel(loaded.bundle, chosen, loaded.name, loaded.version)
    get_run_logger().info("captioner %s version %s (%s) on encoder %s at %s", model.name, model.version,
                          loaded.bundle.config.architecture, model.encoder.version, precision)
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
    captioned, rejected = store.done()
    found = scan(root, identifiers(cfg.identifiers, cfg.id_salt), exclude=out, done=captioned | rejected, under=under,
                 rejected=rejected)
    if found.rejects:
        # A part of its own per run: a crashed run's scan part must not be replaced by the next run's.
        store.write_batch(CAPTIONS.empty(), reject_frame(found.rejects), new_run_id(), "scan")
    todo = with_companions(found.images, store, root)
    get_run_logger().info("%s: %d new or changed images (+%d earlier images of their studies), %d already done, "
                          "%d rejected", under or root, len(found.images), len(todo) - len(found.images),
                          found.done, len(found.rejects))
    return Inputs(todo, len(found.images), found.done, len(found.rejects) + found.done_rejected)


@uncached
def caption_batch(todo: list[InputImage], model: CaptioningModel, out: Path, cfg: BulkCaptioningSettings) -> CaptionResult:
    result = caption_images(todo, model, CaptionStore(out), cfg.batch_size, ood_policy=cfg.ood_policy)
    get_run_logger().info("captioned %d images in %d studies (%d out of the model's domain), %d rejected, %.1f s",
                          result.captioned, result.studies, result.out_of_domain, result.rejected, result.seconds)
    return result


@uncached
def consolidate(out: Path) -> dict:
    store = CaptionStore(out)
    return {**store.consolidate(), "captions": str(store.captions), "rejects": str(store.rejects)}
