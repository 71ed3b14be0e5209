"""The fan-out stages on a Dask cluster (`radcap.operations.cluster`): feature extraction in tasks of whole image
batches, captioning and retrieval in tasks of whole studies. Every task runs the same library code as the in-process
path on its share, in a worker process that loaded the model once, and writes its parts under names made of
the run and the task number: a task Dask runs again (its worker died) replaces its own parts, never adds a copy.
The caller holds the output's lock and consolidates, exactly as in-process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from radcap.captioning.bulk import CaptionResult, CaptionStore, caption_images, study_batches
from radcap.imaging.features import ExtractResult, FeatureStore, ImageItem, extract_features
from radcap.operations.cluster import chunked, run_tasks, task_size, worker_cached

# Images per task: big enough that scheduling (~1 ms a task) and a model's first batch are noise, small enough
# that a lost worker costs little and 2 workers share a 1,000-image run evenly.
TASK_IMAGES = 256


def _limit_threads() -> None:
    """A local cluster's workers get one compute thread each (RADCAP_WORKER_THREADS), set before TensorFlow
    starts its thread pools."""
    threads = os.environ.get("RADCAP_WORKER_THREADS")
    if threads:
        from radcap.core.runtime import import_tensorflow_quietly

        import_tensorflow_quietly()
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError:
            pass  # TensorFlow already running in this process: keep its pools


def _encoder(spec: str, precision: str):
    """The encoder `spec` at `precision`, loaded once per worker process."""

    def load():
        from radcap.core.runtime import apply_offline_defaults

        apply_offline_defaults()
        _limit_threads()
        from radcap.imaging.encoders import at_precision, resolve_encoder

        encoder = at_precision(resolve_encoder(spec), precision)
        return encoder, encoder.forward_fn()

    return worker_cached(("encoder", spec, precision), load)


def _warm_encoder(spec: str, precision: str) -> None:
    _encoder(spec, precision)


def warm_workers(client, spec: str, precision: str = "fp32") -> None:
    """Load the encoder on every worker now (benchmarks time the work apart from the loading)."""
    client.run(_warm_encoder, spec, precision)


# --- features ------------------------------------------------------------------------------------------
def _extract_task(
    items: list[ImageItem], number: int, run_id: str, spec: str, precision: str, store_root: str, batch_size: int
) -> ExtractResult:
    encoder, forward = _encoder(spec, precision)
    return extract_features(
        items,
        forward,
        FeatureStore(Path(store_root)),
        encoder.name,
        encoder.store_version,
        batch_size,
        encoder.input_size,
        progress=False,
        run_id=f"{run_id}-{number:06d}",
        part_rows=max(len(items), 1),
    )  # one part file per task


def extract_on_cluster(
    client,
    items: list[ImageItem],
    spec: str,
    precision: str,
    store_root: Path,
    batch_size: int,
    run_id: str,
    task_images: int = 2048,
) -> ExtractResult:
    """`extract_features` of `items`, in tasks of `task_images` images (whole batches) across the cluster, each
    task writing one part file."""
    import time

    start, total = time.perf_counter(), ExtractResult()
    chunks = chunked(items, task_size(client, len(items), task_images, batch_size))
    for _, result in run_tasks(
        client,
        _extract_task,
        chunks,
        (spec, precision, str(Path(store_root).resolve()), batch_size),
        run_id,
        [len(c) for c in chunks],
        "features",
    ):
        total.encoded += result.encoded
        total.rejects += result.rejects
    total.seconds = time.perf_counter() - start
    return total


# --- captioning ----------------------------------------------------------------------------------------
def _captioner(uri: str, encoder: str | None, precision: str):
    def load():
        from radcap.core.runtime import apply_offline_defaults

        apply_offline_defaults()
        _limit_threads()
        from radcap.captioning.bulk import load_captioning_model

        model = load_captioning_model(uri, encoder, precision)
        return model, model.encoder.forward_fn()

    return worker_cached(("captioner", uri, encoder, precision), load)


def _caption_task(
    images: list,
    number: int,
    run_id: str,
    uri: str,
    encoder: str | None,
    precision: str,
    out: str,
    batch_size: int,
    ood_policy: str,
    decoding: dict,
) -> CaptionResult:
    model, forward = _captioner(uri, encoder, precision)
    return caption_images(
        images,
        model,
        CaptionStore(Path(out)),
        batch_size,
        decoding=decoding,
        progress=False,
        forward=forward,
        ood_policy=ood_policy,
        run_id=f"{run_id}-{number:06d}",
    )


def study_chunks(images: list, batch_size: int, task_images: int = TASK_IMAGES) -> list[list]:
    """Whole batches of whole studies (`study_batches`), about `task_images` images a task: inside a task the
    batches come out the same as in-process, so a study is encoded with the same neighbours either way."""
    per_task = max(1, -(-task_images // batch_size))
    batches = study_batches(images, batch_size)
    return [
        [image for batch in batches[i : i + per_task] for study in batch for image in study]
        for i in range(0, len(batches), per_task)
    ]


def caption_on_cluster(
    client,
    images: list,
    uri: str,
    encoder: str | None,
    precision: str,
    out: Path,
    batch_size: int,
    ood_policy: str,
    run_id: str,
    task_images: int = TASK_IMAGES,
    decoding: dict | None = None,
) -> CaptionResult:
    """`caption_images` of `images` across the cluster (the caller holds OUT's lock and consolidates)."""
    import time

    start, total = time.perf_counter(), CaptionResult()
    chunks = study_chunks(images, batch_size, task_size(client, len(images), task_images, batch_size))
    for _, result in run_tasks(
        client,
        _caption_task,
        chunks,
        (uri, encoder, precision, str(Path(out).resolve()), batch_size, ood_policy, decoding or {}),
        run_id,
        [len(c) for c in chunks],
        "caption",
    ):
        for name in ("captioned", "rejected", "studies", "out_of_domain"):
            setattr(total, name, getattr(total, name) + getattr(result, name))
    total.seconds = time.perf_counter() - start
    return total


# --- retrieval -----------------------------------------------------------------------------------------
def _retriever(uri: str, encoder: str | None, precision: str):
    def load():
        from radcap.core.runtime import apply_offline_defaults

        apply_offline_defaults()
        _limit_threads()
        from radcap.imaging.encoders import at_precision, encoder_for
        from radcap.imaging.precision import require_precision
        from radcap.retrieval.retriever import load_retriever

        loaded = load_retriever(uri)
        require_precision(loaded, precision)
        model = at_precision(encoder_for(loaded.bundle.config, encoder), precision)
        return loaded, model, model.forward_fn()

    return worker_cached(("retriever", uri, encoder, precision), load)


def _retrieve_task(
    images: list,
    number: int,
    run_id: str,
    uri: str,
    encoder: str | None,
    precision: str,
    batch_size: int,
    top_k: int,
    model_name: str,
) -> tuple[pd.DataFrame, list[dict]]:
    from radcap.retrieval.retriever import retrieve_studies

    loaded, model, forward = _retriever(uri, encoder, precision)
    return retrieve_studies(
        images,
        loaded.bundle,
        loaded.index,
        forward,
        batch_size,
        model.input_size,
        top_k,
        model_name,
        model.store_version,
    )


def retrieve_on_cluster(
    client,
    images: list,
    uri: str,
    encoder: str | None,
    precision: str,
    batch_size: int,
    top_k: int,
    model_name: str,
    run_id: str,
    task_images: int = TASK_IMAGES,
) -> tuple[list[pd.DataFrame], list[dict]]:
    """`retrieve_studies` across the cluster: each task answers its studies; results come back to the caller."""
    chunks = study_chunks(images, batch_size, task_size(client, len(images), task_images, batch_size))
    answers = dict(
        run_tasks(
            client,
            _retrieve_task,
            chunks,
            (uri, encoder, precision, batch_size, top_k, model_name),
            run_id,
            [len(c) for c in chunks],
            "retrieve",
        )
    )
    ordered = [answers[number] for number in sorted(answers)]  # the in-process order: studies as scanned
    return [frame for frame, _ in ordered], [row for _, rows in ordered for row in rows]
