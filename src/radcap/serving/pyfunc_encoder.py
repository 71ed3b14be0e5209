"""An optimized encoder (`radcap optimize-encoder`: OpenVINO IR at bf16 or int8) as an MLflow pyfunc model,
logged as code (nothing pickled): the IR folder with `optimized.json` is its artifact.

Input: a DataFrame with `image_path`. Output: `pooled` (1024 floats per image). radcap itself loads the IR
folder directly (`radcap.imaging.encoders.at_precision`); the pyfunc lets other systems use the same artifact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from radcap.core.errors import RadcapError
from radcap.core.runtime import apply_offline_defaults
from radcap.imaging.features import stream_features
from radcap.imaging.precision import OptimizedMeta, openvino_forward


class RadcapOptimizedEncoder(PythonModel):
    def load_context(self, context):
        apply_offline_defaults()  # an entry point: a serving process may start here
        self.folder = Path(context.artifacts["encoder"])
        self.meta = OptimizedMeta.load(self.folder)
        self.forward = openvino_forward(self.folder, self.meta.precision)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        paths = [Path(p) for p in model_input["image_path"].astype(str)]
        pooled = []
        for batch in stream_features(paths, Path, self.forward, 16, self.meta.input_size, grid=False):
            if batch.reasons:
                k, reason = min(batch.reasons.items())
                raise RadcapError(f"{batch.items[k]}: {reason}")
            pooled.append(batch.features.pooled)
        return pd.DataFrame({"pooled": list(np.concatenate(pooled).astype(np.float64))})
