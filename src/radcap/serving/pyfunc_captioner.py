"""The registered `radcap-captioner` as an MLflow pyfunc model, logged as code (MLflow "models from code"):
nothing is pickled; the artifacts are the captioner bundle (JSON config, JSON vocabulary, HDF5 weights).

Input: a DataFrame with `image_path` or `image_base64` (the file's bytes, base64: what a REST request
carries; one row per image; rows sharing a `study_id` make one report, in frontal-first order if a `view`
column is given), or with `pooled` (and `grid` for attention models) feature
vectors instead of paths. Output: a DataFrame with `study_id`, `caption`, and the domain guard's `ood_score`,
`in_domain` and `ood_reason` (null for a model saved without a guard).
Params: `beam_width`, `length_penalty`, `no_repeat_ngram`, `consensus_samples` (defaults: the bundle's).
The encoder is exactly the one of the training features (radcap.imaging.encoders.encoder_for), loaded at first use.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from radcap.captioning.bulk import judge_studies
from radcap.captioning.bundle import load_bundle
from radcap.captioning.data import VIEW_ORDER, pack_views
from radcap.core.errors import RadcapError
from radcap.core.runtime import apply_offline_defaults
from radcap.data_contracts.features import EARLY_DIM
from radcap.imaging.encoders import encoder_for
from radcap.imaging.features import stream_features
from radcap.imaging.statistics import STATISTICS_DIM


class BadInput(RadcapError, MlflowException):
    """A caller's input that cannot be captioned: a RadcapError for Python callers, and for `mlflow models serve`
    an HTTP 400 whose JSON `message` is the reason (an exception of another kind would be a 500)."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


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

    def _image_features(
        self, images: Sequence[Path | bytes], names: list[str]
    ) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray, np.ndarray | None]:
        encoder, forward = self._forward()
        pooled, grid, chroma, statistics = [], [], [], []
        early: list[np.ndarray | None] = []
        # Batches are padded to one size: a request of one study pays for its own views only, not for 16 images.
        size = min(16, max(self.bundle.config.max_views, len(images)))
        for batch in stream_features(
            list(range(len(images))), images.__getitem__, forward, size, encoder.input_size, grid=True
        ):
            if batch.reasons:
                k, reason = min(batch.reasons.items())
                raise RadcapError(f"{names[batch.items[k]]}: {reason}")
            pooled.append(batch.features.pooled)
            grid.append(batch.grid_rows(list(range(len(batch.items)))))
            chroma += batch.chroma
            statistics.append(batch.encoded_statistics())
            early.append(batch.features.early)
        known = [e for e in early if e is not None]
        layers = np.concatenate(known) if len(known) == len(early) else None  # None: the encoder gives none
        return np.concatenate(pooled), np.concatenate(grid), chroma, np.concatenate(statistics), layers

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            return self._predict(model_input, params)
        except RadcapError as exc:
            raise BadInput(str(exc)) from None

    def _predict(self, model_input: pd.DataFrame, params: dict | None) -> pd.DataFrame:
        config = self.bundle.config
        frame = model_input.reset_index(drop=True)
        if "study_id" not in frame:
            frame = frame.assign(study_id=[str(i) for i in range(len(frame))])
        chroma = [0.0] * len(frame)
        # Rows given as features carry no pixels: the guard judges them by the signals it can compute (NaN: unknown).
        statistics = np.full((len(frame), STATISTICS_DIM), np.nan, np.float32)
        layers: np.ndarray | None = np.full((len(frame), EARLY_DIM), np.nan, np.float32)
        grid: np.ndarray | None
        if "image_base64" in frame:
            images = [_from_base64(value, k) for k, value in enumerate(frame["image_base64"])]
            pooled, grid, chroma, statistics, layers = self._image_features(
                images, [f"image_base64 row {k}" for k in range(len(frame))]
            )
        elif "image_path" in frame:
            paths = frame["image_path"].astype(str).tolist()
            pooled, grid, chroma, statistics, layers = self._image_features([Path(p) for p in paths], paths)
        else:
            pooled = np.stack(frame["pooled"].map(np.asarray)).astype(np.float32)
            grid = (
                np.stack(frame["grid"].map(lambda g: np.asarray(g).reshape(config.grid_cells, -1))).astype(np.float16)
                if "grid" in frame
                else None
            )
        rank = frame["view"].map(VIEW_ORDER).fillna(2) if "view" in frame else pd.Series(0, index=frame.index)
        studies = list(dict.fromkeys(frame["study_id"]))
        rows = [sorted(frame.index[frame["study_id"] == study], key=lambda r: (rank[r], r)) for study in studies]
        features = pack_views(rows, pooled, grid, config.max_views)
        captions = self.bundle.report(features, **(params or {}))
        verdicts = judge_studies(
            self.bundle.domain,
            pooled,
            statistics,
            rows,
            [None] * len(rows),
            [max(chroma[r] for r in study) for study in rows],
            layers,
        )
        return pd.DataFrame(
            {
                "study_id": studies,
                "caption": captions,
                "ood_score": [v[0] for v in verdicts],
                "in_domain": [v[1] for v in verdicts],
                "ood_reason": [v[2] for v in verdicts],
            }
        )


def _from_base64(value, row: int) -> bytes:
    if isinstance(value, (bytes, bytearray)):  # a caller in Python may pass the bytes themselves
        return bytes(value)
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise RadcapError(f"image_base64 row {row}: not valid base64") from None
