"""`radcap features`: every image of a data directory -> CheXNet features in `DIR/features/` (resumable)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.core.settings import get_settings
from radcap.tasks.features import encode_images, load_encoder, plan_features, record_feature_run


@flow(name="extract-features")
def extract_features_flow(
    data_dir: Path,
    encoder: str | None = None,
    batch_size: int = 32,
    precision: str = "fp32",
    cluster: str | None = None,
) -> dict:
    """Below fp32 the features are stored as `VERSION@PRECISION`: never mixed with those captioners train on.
    `cluster`: a Dask cluster to encode on (default: settings' `cluster`, unset: in-process)."""
    model = load_encoder(encoder, precision)
    todo, skipped, rejects = plan_features(data_dir, model.store_version)
    result = encode_images(quote(todo), quote(model), data_dir, batch_size, cluster or get_settings().cluster)
    return record_feature_run(data_dir, quote(model), quote(result), skipped, quote(rejects))
