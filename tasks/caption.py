"""Bulk captioning tasks: resolve the model, scan the inputs, caption the new ones, consolidate the outputs."""

from __future__ import annotations

from pathlib import Path

from prefect.logging import get_run_logger

from radcap.io import new_run_id
from radcap.captioning import CaptionResult, CaptionStore, caption_images, reject_row
from radcap.pacs import Identifiers, InputImage, scan
from radcap.settings import CaptionSettings
from tasks import registry_task, uncached
from tasks.evaluate import resolve_captioner


@registry_task
def load_model(uri: str):
    """The captioner, its encoder's forward function, and (name, version, encoder version) for the outputs."""
    from radcap.encoders import resolve_encoder
    from radcap.registry import parse_model_uri

    # Resolve an alias once and load that version: the version written in the outputs is the one loaded,
    # even if the alias moves meanwhile.
    name, version = parse_model_uri(uri) if uri.startswith("models:/") else (str(uri), "local")
    bundle, _ = resolve_captioner(f"models:/{name}/{version}" if uri.startswith("models:/") else uri)
    encoder = resolve_encoder(bundle.config["encoder_spec"])
    get_run_logger().info("captioner %s version %s (%s) on encoder %s", name, version,
                          bundle.config["architecture"], encoder.version)
    return bundle, encoder, (name, version, bundle.config["encoder_version"])


@uncached
def scan_inputs(root: Path, store: CaptionStore, cfg: CaptionSettings) -> tuple[list[InputImage], int, int]:
    """New inputs to caption; unreadable ones are recorded as rejects right away. Returns (todo, skipped, rejected)."""
    done = store.done()
    images, unreadable = scan(root, Identifiers(cfg.identifiers, cfg.id_salt), exclude=store.out)
    todo = [i for i in images if (i.source_path, i.sha256) not in done]
    skipped = len(images) - len(todo)
    rejects = [reject_row(relative, "", reason) for relative, reason in unreadable]
    if rejects:
        import pandas as pd

        from data_contracts import CAPTION_REJECTS, CAPTIONS

        # A part of its own per run: a crashed run's scan part must not be replaced by the next run's.
        run_id = f"{new_run_id()}-scan"
        store.write_batch(CAPTIONS.empty(), pd.DataFrame(rejects, columns=CAPTION_REJECTS.column_names), run_id, 0)
    get_run_logger().info("%s: %d new images, %d already captioned or rejected, %d unreadable",
                          root, len(todo), skipped, len(rejects))
    return todo, skipped, len(rejects)


@uncached
def caption_batch(todo: list[InputImage], model, store: CaptionStore, cfg: CaptionSettings) -> CaptionResult:
    bundle, encoder, identity = model
    result = caption_images(todo, bundle, encoder.forward_fn(), store, identity, cfg.batch_size, encoder.input_size)
    get_run_logger().info("captioned %d images in %d studies, %d rejected, %.1f s", result.captioned,
                          result.studies, result.rejected, result.seconds)
    return result


@uncached
def consolidate(store: CaptionStore) -> dict[str, int]:
    return store.consolidate()
