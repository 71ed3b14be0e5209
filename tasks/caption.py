"""Bulk captioning tasks: resolve the model, scan the inputs, caption the new ones, consolidate the outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect.logging import get_run_logger

from radcap.captioning import CaptionResult, CaptionStore, caption_images, reject_frame, with_companions
from radcap.io import new_run_id
from radcap.pacs import InputImage, identifiers, scan
from radcap.settings import CaptionSettings
from tasks import registry_task, uncached


@registry_task
def load_model(uri: str, encoder: str | None = None):
    """The captioner, the encoder its features came from, and (name, version, encoder version) for the outputs."""
    from radcap.encoders import encoder_for
    from radcap.registry import parse_model_uri
    from tasks.evaluate import resolve_captioner

    # Resolve an alias once and load that version: the version written in the outputs is the one loaded,
    # even if the alias moves meanwhile.
    name, version = parse_model_uri(uri) if uri.startswith("models:/") else (str(uri), "local")
    bundle, _ = resolve_captioner(f"models:/{name}/{version}" if uri.startswith("models:/") else uri)
    loaded = encoder_for(bundle.config, encoder)
    get_run_logger().info("captioner %s version %s (%s) on encoder %s", name, version,
                          bundle.config["architecture"], loaded.version)
    return bundle, loaded, (name, version, loaded.version)


@dataclass
class Inputs:
    todo: list[InputImage]  # new or changed images, and the earlier images of their studies
    new: int  # new or changed images
    already_done: int
    rejected: int  # rejected now, or before and unchanged


@uncached
def scan_inputs(root: Path, out: Path, cfg: CaptionSettings, under: Path | None = None) -> Inputs:
    """New inputs to caption (with their studies' earlier images); unreadable ones are recorded as rejects."""
    store = CaptionStore(out)
    captioned, rejected = store.done()
    found = scan(root, identifiers(cfg.identifiers, cfg.id_salt), exclude=out, done=captioned | rejected, under=under,
                 rejected=rejected)
    if found.rejects:
        # A part of its own per run: a crashed run's scan part must not be replaced by the next run's.
        from data_contracts import CAPTIONS

        store.write_batch(CAPTIONS.empty(), reject_frame(found.rejects), new_run_id(), "scan")
    todo = with_companions(found.images, store, root)
    get_run_logger().info("%s: %d new or changed images (+%d earlier images of their studies), %d already done, "
                          "%d rejected", under or root, len(found.images), len(todo) - len(found.images),
                          found.done, len(found.rejects))
    return Inputs(todo, len(found.images), found.done, len(found.rejects) + found.done_rejected)


@uncached
def caption_batch(todo: list[InputImage], model, out: Path, cfg: CaptionSettings) -> CaptionResult:
    bundle, encoder, identity = model
    result = caption_images(todo, bundle, encoder.forward_fn(), CaptionStore(out), identity, cfg.batch_size,
                            encoder.input_size)
    get_run_logger().info("captioned %d images in %d studies, %d rejected, %.1f s", result.captioned,
                          result.studies, result.rejected, result.seconds)
    return result


@uncached
def consolidate(out: Path) -> dict[str, int]:
    return CaptionStore(out).consolidate()
