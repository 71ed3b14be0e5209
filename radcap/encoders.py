"""Resolve `--encoder` to a loaded CheXNet and a stable version string for the feature store.

Accepted: `random[:SEED]` (untrained, for baselines and tests), a CheXNet Keras `.h5` weights file, a
`.keras` model file (loaded in Keras safe mode), or an MLflow registry URI (`models:/radcap-encoder/3`,
`models:/radcap-encoder@champion`). With none given, the latest registered `radcap-encoder` is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radcap.errors import RadcapError
from radcap.imaging import file_sha256

ENCODER_NAME = "chexnet-densenet121"
REGISTERED_ENCODER = "radcap-encoder"


@dataclass
class Encoder:
    model: object  # keras.Model: the CheXNet classifier
    name: str
    version: str
    input_size: int = 224

    def forward_fn(self):
        """uint8 (B,S,S) numpy -> (pooled (B,1024), grid (B,7,7,1024)) numpy, compiled once per shape."""
        import tensorflow as tf

        from models.encoder import feature_extractor, standardize

        extractor = feature_extractor(self.model)

        @tf.function(reduce_retracing=True)
        def run(batch):
            return extractor(standardize(batch), training=False)

        def forward(batch: np.ndarray):
            pooled, grid = run(tf.convert_to_tensor(batch))
            return pooled.numpy(), grid.numpy()

        return forward


def resolve_encoder(spec: str | None) -> Encoder:
    from models.encoder import build_chexnet, load_chexnet_h5

    if spec is None:
        return _from_registry(f"models:/{REGISTERED_ENCODER}/latest")
    if spec.startswith("random"):
        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return Encoder(build_chexnet(seed=seed), ENCODER_NAME, f"random-seed{seed}")
    if spec.startswith("models:/"):
        return _from_registry(spec)
    path = Path(spec)
    if not path.is_file():
        raise RadcapError(f"{path}: encoder file not found (or use random, models:/{REGISTERED_ENCODER}/N)")
    if path.suffix == ".h5":
        model = build_chexnet()
        try:
            load_chexnet_h5(model, path)
        except ValueError as exc:
            raise RadcapError(str(exc)) from exc
        return Encoder(model, ENCODER_NAME, f"h5-{file_sha256(path)[:12]}")
    if path.suffix == ".keras":
        return Encoder(_load_keras(path), ENCODER_NAME, f"keras-{file_sha256(path)[:12]}")
    raise RadcapError(f"{path}: unsupported encoder file (expected .h5 CheXNet weights or .keras)")


def _load_keras(path: Path):
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # keras raises many types for a bad file
        raise RadcapError(f"{path}: cannot load the Keras model: {exc}") from exc


def _from_registry(uri: str) -> Encoder:
    import mlflow
    from mlflow.exceptions import MlflowException

    name_and_ref = uri.removeprefix("models:/")
    client = mlflow.MlflowClient()
    try:
        if name_and_ref.endswith("/latest"):
            name = name_and_ref.split("/")[0]
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise RadcapError(
                    f"no '{name}' model is registered yet: run `radcap pretrain-encoder`, "
                    "or pass --encoder random or a CheXNet .h5 file"
                )
            version = max(versions, key=lambda v: int(v.version))
        elif "@" in name_and_ref:
            name, alias = name_and_ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = name_and_ref.split("/", 1)
            version = client.get_model_version(name, number)
        local = Path(mlflow.artifacts.download_artifacts(version.source))
    except MlflowException as exc:
        raise RadcapError(f"{uri}: {exc.message}") from exc
    files = sorted(local.rglob("*.keras"))
    if not files:
        raise RadcapError(f"{uri}: the registered model holds no .keras file")
    return Encoder(_load_keras(files[0]), ENCODER_NAME, f"{version.name}/{version.version}")
