"""Feature-store tasks: load an encoder, plan what is new, encode it, record rejects and the summary."""

from __future__ import annotations

from pathlib import Path

from prefect.logging import get_run_logger

from radcap.core.catalog import DataCatalog
from radcap.core.io import new_run_id, read_table, write_json, write_rejects
from radcap.core.settings import get_settings
from radcap.data_contracts import IMAGES
from radcap.imaging.encoders import Encoder, at_precision, resolve_encoder
from radcap.imaging.features import ExtractResult, FeatureStore, ImageItem, extract_features
from radcap.operations.cluster import dask_client
from radcap.tasks import registry_task, uncached


@registry_task
def load_encoder(spec: str | None, precision: str = "fp32") -> Encoder:
    encoder = at_precision(resolve_encoder(spec), precision)
    get_run_logger().info(
        "encoder %s version %s at %s%s",
        encoder.name,
        encoder.version,
        precision,
        f" ({encoder.optimized_uri})" if encoder.optimized_uri else "",
    )
    return encoder


@uncached
def plan_features(data_dir: Path, encoder_version: str) -> tuple[list[ImageItem], int, list[dict]]:
    """Images of `images.parquet` not yet stored for this encoder (by file hash), and the missing files."""
    catalog = DataCatalog(data_dir)
    return FeatureStore(catalog.features).plan(read_table(catalog.images, IMAGES), encoder_version)


@uncached
def encode_images(
    todo: list[ImageItem], encoder: Encoder, data_dir: Path, batch_size: int, cluster: str | None = None
) -> ExtractResult:
    """Encode `todo` in this process, or across the Dask cluster `cluster` (radcap.operations.cluster)."""
    store, run_id = FeatureStore(DataCatalog(data_dir).features), new_run_id()
    with dask_client(cluster if todo else None) as client:
        if client is None:
            result = extract_features(
                todo,
                encoder.forward_fn(),
                store,
                encoder.name,
                encoder.store_version,
                batch_size=batch_size,
                input_size=encoder.input_size,
                run_id=run_id,
            )
        else:
            from radcap.operations.scaleout import extract_on_cluster

            result = extract_on_cluster(
                client,
                todo,
                encoder.spec,
                encoder.precision,
                store.root,
                batch_size,
                run_id,
                get_settings().encoder.cluster_task_images,
            )
    return result


@uncached
def record_feature_run(
    data_dir: Path, encoder: Encoder, result: ExtractResult, skipped: int, rejects: list[dict]
) -> dict:
    catalog = DataCatalog(data_dir)
    all_rejects = rejects + result.rejects
    write_rejects(all_rejects, catalog.feature_rejects)
    if encoder.precision == "fp32":  # how to reload the encoder of a version that captioners train on
        FeatureStore(catalog.features).record_encoder(encoder.version, encoder.spec)
    summary = {
        "encoder": encoder.name,
        "encoder_version": encoder.version,
        "encoder_spec": encoder.spec,
        "precision": encoder.precision,
        "store_version": encoder.store_version,
        "encoded": result.encoded,
        "already_stored": skipped,
        "rejected": len(all_rejects),
        "seconds": round(result.seconds, 2),
        "images_per_second": round(result.encoded / result.seconds, 2) if result.encoded else None,
    }
    write_json(summary, catalog.feature_summary)
    get_run_logger().info("features: %s", summary)
    return summary
