"""Bulk captioning tasks: resolve the model, scan the inputs, caption the new ones, consolidate the outputs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from prefect.logging import get_run_logger

from radcap.captioning import CaptionResult, CaptionStore, caption_images, reject_row
from radcap.pacs import Identifiers, InputImage, describe, input_files
from radcap.settings import CaptionSettings
from tasks import registry_task, uncached
from tasks.evaluate import resolve_captioner


@registry_task
def load_model(uri: str):
    """The captioner, its encoder's forward function, and (name, version, encoder version) for the outputs."""
    from radcap.encoders import resolve_encoder
    from radcap.registry import parse_model_uri

    bundle, _ = resolve_captioner(uri)
    name, version = parse_model_uri(uri) if uri.startswith("models:/") else (str(uri), "local")
    encoder = resolve_encoder(bundle.config["encoder_spec"])
    get_run_logger().info("captioner %s version %s (%s) on encoder %s", name, version,
                          bundle.config["architecture"], encoder.version)
    return bundle, encoder, (name, version, bundle.config["encoder_version"])


@uncached
def scan_inputs(root: Path, store: CaptionStore, cfg: CaptionSettings) -> tuple[list[InputImage], int, int]:
    """New inputs to caption; unreadable ones are recorded as rejects right away. Returns (todo, skipped, rejected)."""
    done, ids = store.done(), Identifiers(cfg.identifiers, cfg.id_salt)
    todo, rejects, skipped = [], [], 0
    for path in input_files(root, exclude=store.out):
        item = describe(path, root, ids)
        if isinstance(item, str):
            relative = path.name if root.is_file() else path.relative_to(root).as_posix()
            rejects.append(reject_row(relative, "", item))
        elif (item.source_path, item.sha256) in done:
            skipped += 1
        else:
            todo.append(item)
    if rejects:
        import pandas as pd

        from data_contracts import CAPTION_REJECTS, CAPTIONS

        # A part of its own per run: a crashed run's scan part must not be replaced by the next run's.
        run_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}-scan"
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
