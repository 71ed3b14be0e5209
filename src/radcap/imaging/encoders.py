"""Resolve an encoder spec to a loaded CheXNet, with the version string the feature store keys rows by.

Accepted specs: `random[:SEED]` (untrained, for baselines and tests), a CheXNet Keras `.h5` weights file, a
`.keras` model file (loaded in Keras safe mode), or an MLflow registry URI (`models:/radcap-encoder/3`,
`models:/radcap-encoder@champion`, `models:/radcap-encoder/latest`). Versions: `random-seedN`,
`h5-<sha256[:12]>` / `keras-<sha256[:12]>` of the file, or `NAME/N` for a registry version.

Provenance: a captioner or retriever records the encoder version of its training features and a spec that
reloads exactly it (`Encoder.spec`: a registry URI with the version number, or the file's absolute path).
`encoder_for` loads that encoder and checks the version, so a model is never fed features of another
encoder: a moved, edited or missing file, or a deleted registry version, stops the run with one line.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from radcap.core.errors import RadcapError
from radcap.imaging.decode import file_sha256
from radcap.imaging.features import spec_for_version
from radcap.registry.store import download, parse_model_uri

ENCODER_NAME = "chexnet-densenet121"
REGISTERED_ENCODER = "radcap-encoder"


@dataclass
class Encoder:
    """An encoder, known by its version before its network is built or read: a run that finds every image already
    stored (a nightly re-run, an inbox run with nothing new) never loads DenseNet-121 at all."""

    load: Callable[[], Any]  # builds or reads the keras.Model (the CheXNet classifier), at the first use of `model`
    name: str
    version: str
    spec: str  # reloads exactly this encoder
    input_size: int = 224

    precision: str = "fp32"  # bf16 / int8: an optimized build of this encoder (radcap.imaging.precision)
    optimized: Path | None = None  # that build's IR folder
    optimized_uri: str | None = None
    _model: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self.load()
        return self._model

    @property
    def store_version(self) -> str:
        """The key of this encoder's features in the feature store (`VERSION@PRECISION` below fp32)."""
        from radcap.imaging.precision import store_version

        return store_version(self.version, self.precision)

    def forward_fn(self):
        """uint8 (B,S,S) numpy -> (pooled (B,1024), grid (B,7,7,1024), early-layer statistics (B,1536)) numpy,
        compiled once per shape."""
        if self.optimized is not None:
            from radcap.imaging.precision import openvino_forward

            return openvino_forward(self.optimized, self.precision)
        import tensorflow as tf

        from radcap.models.encoder import feature_extractor, standardize

        extractor = feature_extractor(self.model)

        @tf.function(reduce_retracing=True)
        def run(batch):
            return extractor(standardize(batch), training=False)

        def forward(batch: np.ndarray):
            pooled, grid, early = run(tf.convert_to_tensor(batch))
            return pooled.numpy(), grid.numpy(), early.numpy()

        return forward


def resolve_encoder(spec: str | None) -> Encoder:
    """The encoder a user names (`radcap features --encoder`); None means the newest registered one."""
    from radcap.models.encoder import build_chexnet, load_chexnet_h5, read_chexnet_h5

    if spec is None:
        return _from_registry(f"models:/{REGISTERED_ENCODER}/latest")
    if spec.startswith("random"):
        try:
            seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        except ValueError:
            raise RadcapError(f"{spec}: expected random or random:SEED with an integer seed") from None
        return Encoder(partial(build_chexnet, seed=seed), ENCODER_NAME, f"random-seed{seed}", f"random:{seed}")
    if spec.startswith("models:/"):
        return _from_registry(spec)
    path = Path(spec)
    if not path.is_file():
        raise RadcapError(f"{path}: encoder file not found (or use random, models:/{REGISTERED_ENCODER}/N)")
    if path.suffix == ".h5":
        try:
            stored = read_chexnet_h5(path)  # a wrong file is refused now, not when the first image needs it
        except ValueError as exc:
            raise RadcapError(str(exc)) from exc

        def published_chexnet():
            model = build_chexnet()
            try:
                load_chexnet_h5(model, path, stored)
            except ValueError as exc:
                raise RadcapError(str(exc)) from exc
            return model

        return Encoder(published_chexnet, ENCODER_NAME, f"h5-{file_sha256(path)[:12]}", str(path.resolve()))
    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):  # a .keras file is a zip archive; anything else is refused now
            raise RadcapError(f"{path}: not a Keras .keras archive")
        return Encoder(partial(_load_keras, path), ENCODER_NAME, f"keras-{file_sha256(path)[:12]}", str(path.resolve()))
    raise RadcapError(f"{path}: unsupported encoder file (expected .h5 CheXNet weights or .keras)")


def encoder_for(config, override: str | None = None) -> Encoder:
    """Exactly the encoder a saved model's features came from (`config.encoder_version`, reloaded by
    `config.encoder_spec` or by `override`, e.g. the encoder file at its new place), or RadcapError."""
    expected = getattr(config, "encoder_version", None)
    if not expected:
        raise RadcapError("the model records no encoder version; retrain it with this radcap version")
    spec = override or getattr(config, "encoder_spec", None) or spec_for_version(expected)
    if not spec:
        raise RadcapError(
            f"the model's features came from encoder {expected}, a file whose path it does not "
            "record: pass that file with --encoder"
        )
    try:
        encoder = resolve_encoder(spec)
    except RadcapError as exc:
        raise RadcapError(f"cannot load the model's encoder {expected}: {exc}") from exc
    if encoder.version != expected:
        raise RadcapError(
            f"{spec} is encoder {encoder.version}, but the model's features came from {expected}: "
            "give the encoder it was trained with (--encoder), never another one"
        )
    return encoder


def at_precision(encoder: Encoder, precision: str) -> Encoder:
    """`encoder` at `precision`: itself for fp32, else its registered optimized build (never built here)."""
    from dataclasses import replace

    from radcap.imaging.precision import check_precision, find_optimized_encoder

    if check_precision(precision) == "fp32":
        return encoder
    found = find_optimized_encoder(encoder.version, precision)
    if found is None:
        raise RadcapError(
            f"no {precision} build of encoder {encoder.version}: run `radcap optimize-encoder "
            f"--encoder {encoder.spec} --precision {precision}` once"
        )
    uri, folder = found
    return replace(encoder, precision=precision, optimized=folder, optimized_uri=uri)


def _load_keras(path: Path):
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise RadcapError(f"{path}: cannot load the Keras model: {exc}") from exc


def _from_registry(uri: str) -> Encoder:
    try:
        name, number = parse_model_uri(uri)
    except RadcapError as exc:
        if uri.endswith("/latest"):
            raise RadcapError(
                f"{exc}: run `radcap pretrain-encoder`, or pass --encoder random or a CheXNet .h5 file"
            ) from None
        raise

    def registered_keras():
        files = sorted(download(name, number).rglob("*.keras"))
        if not files:
            raise RadcapError(f"models:/{name}/{number}: the registered model holds no .keras file")
        return _load_keras(files[0])

    return Encoder(registered_keras, ENCODER_NAME, f"{name}/{number}", f"models:/{name}/{number}")
