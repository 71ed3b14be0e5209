"""CheXNet: DenseNet-121 with a multi-label sigmoid head, and its feature extractor.

`weights=None` everywhere: nothing is downloaded. The encoder is either trained here
(`radcap pretrain-encoder`) or loaded from the published CheXNet Keras weights file
(brucechou1983_CheXNet_Keras_0.3.0_weights.h5), whose layout `load_chexnet_h5` reads.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf

FEATURE_LAYER = "relu"  # DenseNet-121's last BN+ReLU: 7x7x1024 at 224 px
# The out-of-domain guard's early-layer signal: the inputs of DenseNet-121's first two transitions (56x56x256 and
# 28x28x512 at 224 px). Early layers keep the image statistics the last one discards: measured on MedPix 2.0 vs real
# chest X-rays (benchmarks/domain_guard.py), their channel statistics separate the two where the last layer's
# cannot, with an untrained encoder as with one that never saw an X-ray.
EARLY_LAYERS = ("pool2_relu", "pool3_relu")
CHEXNET_OUTPUTS = 14  # the published CheXNet head: the 14 ChestX-ray14 observations (radcap.imaging.labels.CHESTXRAY14)


def build_chexnet(n_outputs: int = CHEXNET_OUTPUTS, input_size: int | None = 224, seed: int = 0) -> keras.Model:
    """DenseNet-121 -> global average pool -> Dense(n_outputs, sigmoid) named `predictions` (CheXNet layout)."""
    keras.utils.set_random_seed(seed)
    shape = (input_size, input_size, 3) if input_size else (None, None, 3)
    base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=shape, pooling="avg")
    outputs = keras.layers.Dense(n_outputs, activation="sigmoid", name="predictions")(base.output)
    model = keras.Model(base.input, outputs, name="chexnet")
    _glorot_from(model, seed)
    return model


def _glorot_from(model: keras.Model, seed: int) -> None:
    """Draw every kernel again from a generator of `seed` alone (Glorot uniform, Keras' default). Keras takes
    each initializer's seed from Python's global `random`, which other threads of a busy process (Prefect's,
    MLflow's) also draw from, so two builds of `random:0` in one process could differ; `random:N` must be
    the same weights wherever and whenever it is built, since features are keyed by that name."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if not variable.path.endswith("kernel"):
            continue  # batch-norm scales/offsets/statistics and biases have constant initial values
        shape = tuple(variable.shape)
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        limit = np.sqrt(6.0 / ((shape[-2] + shape[-1]) * receptive))
        variable.assign(rng.uniform(-limit, limit, shape).astype(np.float32))


def feature_extractor(model: keras.Model) -> keras.Model:
    """(pooled 1024-d, spatial grid HxWx1024) from the encoder's last convolutional block, and the early-layer
    statistics (the mean and standard deviation over positions of each channel of `EARLY_LAYERS`, 1,536-d)."""
    spatial = model.get_layer(FEATURE_LAYER).output
    pooled = keras.layers.GlobalAveragePooling2D(name="pooled")(spatial)
    early = keras.ops.concatenate([_channel_moments(model.get_layer(n).output) for n in EARLY_LAYERS], axis=-1)
    return keras.Model(model.input, [pooled, spatial, early], name="chexnet_features")


def _channel_moments(maps):
    """(N,H,W,C) -> (N,2C): each channel's mean and standard deviation over positions."""
    ops = keras.ops
    return ops.concatenate([ops.mean(maps, axis=(1, 2)), ops.std(maps, axis=(1, 2))], axis=-1)


def uint8_feature_model(model: keras.Model, input_size: int) -> keras.Model:
    """uint8 letterboxed squares (N,S,S) -> (pooled, grid, early): the whole inference graph in one Keras model,
    for export to other runtimes (standardization included, so they are fed what the TensorFlow path is fed)."""
    extractor = feature_extractor(model)
    images = keras.Input((input_size, input_size), dtype="uint8", name="images")
    pooled, grid, early = extractor(keras.layers.Lambda(standardize, name="standardize")(images))
    return keras.Model(images, [pooled, grid, early], name="chexnet_uint8_features")


def standardize(images_uint8: tf.Tensor) -> tf.Tensor:
    """uint8 letterboxed grayscale (N,H,W) -> ImageNet-standardized (N,H,W,3) float32, inside the graph."""
    x = tf.cast(images_uint8, tf.float32)[..., None] / 255.0
    mean = tf.constant([0.485, 0.456, 0.406])
    std = tf.constant([0.229, 0.224, 0.225])
    return (x - mean) / std


def _h5_layer_weights(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, weights) in file order, from a Keras-2 `save_weights` or full-model `.h5` file."""
    with h5py.File(path, "r") as f:
        group = f.get("model_weights", f)
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["layer_names"]]
        out = []
        for name in names:
            layer = group[name]
            weight_names = [w.decode() if isinstance(w, bytes) else w for w in layer.attrs["weight_names"]]
            if weight_names:
                out.append((name, [np.asarray(layer[w]) for w in weight_names]))
        return out


def _norm(name: str) -> str:
    return name.replace("/", "_")  # Keras 2 named DenseNet layers 'conv1/conv', Keras 3 'conv1_conv'


def read_chexnet_h5(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """The weighted layers of a CheXNet Keras `.h5`, read without building a model (so a wrong file is refused at
    once, before any network is built). Raises ValueError naming the file when it is not Keras HDF5 weights."""
    try:
        stored = _h5_layer_weights(path)
    except (OSError, KeyError) as exc:
        raise ValueError(f"{path}: not a Keras HDF5 weights file ({exc})") from exc
    if not stored:
        raise ValueError(f"{path}: not a Keras HDF5 weights file (no weighted layers)")
    return stored


def load_chexnet_h5(model: keras.Model, path: Path, stored: list[tuple[str, list[np.ndarray]]] | None = None) -> int:
    """Load a CheXNet Keras `.h5` into `model` by layer name (Keras 2 or 3 naming); return layers loaded.

    `stored` is the file's layers when already read by `read_chexnet_h5`. Raises ValueError naming the first layer
    whose name or shapes do not match.
    """
    stored = read_chexnet_h5(path) if stored is None else stored
    by_name = {_norm(layer.name): layer for layer in model.layers if layer.weights}
    if len(stored) != len(by_name):
        raise ValueError(f"{path}: {len(stored)} weighted layers in the file, {len(by_name)} in the model")
    for name, weights in stored:
        layer = by_name.get(_norm(name))
        if layer is None:
            raise ValueError(f"{path}: layer '{name}' has no counterpart in the model")
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if expected != [w.shape for w in weights]:
            raise ValueError(f"{path}: layer '{name}' shapes {[w.shape for w in weights]} != model {expected}")
        layer.set_weights(weights)
    return len(stored)
