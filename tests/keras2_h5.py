"""Writes weights in the published CheXNet file's layout, so tests can prove `load_chexnet_h5` reads it."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np


def save_chexnet_h5_keras2_layout(model: keras.Model, path: Path) -> None:
    """Write weights in the published file's layout (Keras 2 `save_weights`: `layer_names`, `weight_names`,
    'conv1/conv'-style names). Used by the tests to prove `load_chexnet_h5` reads that structure."""

    def keras2(name: str) -> str:
        return {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn"}.get(name, name)

    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.1.5"
        layer_names = []
        for layer in model.layers:
            name = keras2(layer.name)
            layer_names.append(name.encode())
            group = f.create_group(name)
            weight_names = []
            for weight in layer.weights:
                wname = f"{name}/{weight.name.split('/')[-1]}:0"
                group.create_dataset(wname, data=weight.numpy())
                weight_names.append(wname.encode())
            group.attrs["weight_names"] = (
                np.array(weight_names, dtype="S") if weight_names else np.array([], dtype="S1")
            )
        f.attrs["layer_names"] = np.array(layer_names, dtype="S")  # fixed-length bytes, as Keras 2 wrote them
