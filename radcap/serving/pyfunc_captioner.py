"""The registered `radcap-captioner` as an MLflow pyfunc model, logged as code (MLflow "models from code"):
nothing is pickled; the artifacts are the captioner bundle (JSON config, JSON vocabulary, HDF5 weights).

Input: a DataFrame with `image_path` (one row per image; rows sharing a `study_id` make one report, in
frontal-first order if a `view` column is given), or with `pooled` (and `grid` for attention models) feature
vectors instead of paths. Output: a DataFrame with `study_id`, `caption`, and the domain guard's `ood_score`,
`in_domain` and `ood_reason` (null for a model saved without a guard).
Params: `beam_width`, `length_penalty`, `no_repeat_ngram` (defaults: the bundle's, chosen on validation).
The encoder is exactly the one of the training features (radcap.encoders.encoder_for), loaded at first use.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from radcap.caption_data import VIEW_ORDER, pack_views
from radcap.captioner_bundle import load_bundle
from radcap.captioning import judge_studies
from radcap.encoders import encoder_for
from radcap.errors import RadcapError
from radcap.features import stream_features
from radcap.runtime import apply_offline_defaults


class RadcapCaptioner(PythonModel):
    def load_context(self, context):
        apply_offline_defaults()  # an entry point: a serving process may start here
        self.bundle = load_bundle(Path(context.artifacts["captioner"]))
        self._encoder = None

    def _forward(self):
        if self._encoder is None:
            encoder = encoder_for(self.bundle.config)
            self._encoder = (encoder, encoder.forward_fn())
        return self._encoder

    def _image_features(self, paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[float]]:
        encoder, forward = self._forward()
        pooled, grid, chroma = [], [], []
        for batch in stream_features(paths, Path, forward, 16, encoder.input_size, grid=True):
            if batch.reasons:
                k, reason = min(batch.reasons.items())
                raise RadcapError(f"{batch.items[k]}: {reason}")
            pooled.append(batch.encoded.pooled)
            grid.append(batch.encoded.grid)
            chroma += batch.chroma
        return np.concatenate(pooled), np.concatenate(grid), chroma

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        config = self.bundle.config
        frame = model_input.reset_index(drop=True)
        if "study_id" not in frame:
            frame = frame.assign(study_id=[str(i) for i in range(len(frame))])
        chroma = [0.0] * len(frame)
        if "image_path" in frame:
            pooled, grid, chroma = self._image_features(frame["image_path"].astype(str).tolist())
        else:
            pooled = np.stack(frame["pooled"].map(np.asarray)).astype(np.float32)
            grid = (np.stack(frame["grid"].map(lambda g: np.asarray(g).reshape(config.grid_cells, -1))).astype(np.float16)
                    if "grid" in frame else None)
        rank = frame["view"].map(VIEW_ORDER).fillna(2) if "view" in frame else pd.Series(0, index=frame.index)
        studies = list(dict.fromkeys(frame["study_id"]))
        rows = [sorted(frame.index[frame["study_id"] == study], key=lambda r: (rank[r], r)) for study in studies]
        features = pack_views(rows, pooled, grid, config.max_views)
        captions = self.bundle.report(features, **(params or {}))
        verdicts = judge_studies(self.bundle.domain, pooled, rows, [None] * len(rows),
                                 [max(chroma[r] for r in study) for study in rows])
        return pd.DataFrame({"study_id": studies, "caption": captions, "ood_score": [v[0] for v in verdicts],
                             "in_domain": [v[1] for v in verdicts], "ood_reason": [v[2] for v in verdicts]})


mlflow.models.set_model(RadcapCaptioner())
