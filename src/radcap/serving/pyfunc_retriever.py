"""The registered `radcap-retriever` as an MLflow pyfunc model, logged as code (nothing pickled): the
retriever bundle (JSON config, JSON vocabulary, HDF5 weights) and the Parquet index are its artifacts.

Input: a DataFrame with `text` (report-to-image search) or with `pooled` feature vectors of one image per
row (image-to-report retrieval). Output: one row per (query, rank) with item_id, score, text, source.
Params: `top_k`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from radcap.core.runtime import apply_offline_defaults
from radcap.retrieval.retriever import RetrievalIndex, read_retriever


class RadcapRetriever(PythonModel):
    def load_context(self, context):
        apply_offline_defaults()  # an entry point: a serving process may start here
        self.bundle = read_retriever(Path(context.artifacts["retriever"]))
        self.index = RetrievalIndex.load(Path(context.artifacts["index"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        top_k = int((params or {}).get("top_k", 5))
        if "text" in model_input:
            queries, kind, labels = (
                self.bundle.text_embeddings(model_input["text"].astype(str).tolist()),
                "image",
                model_input["text"],
            )
        else:
            pooled = np.stack(model_input["pooled"].map(np.asarray)).astype(np.float32)[:, None, :]
            queries, kind, labels = (
                self.bundle.image_embeddings(pooled, np.ones(pooled.shape[:2], np.float32)),
                "report",
                model_input.index.astype(str),
            )
        hits = self.index.search(queries, kind, top_k)
        return pd.concat([h.assign(query=str(q)) for q, h in zip(labels, hits)], ignore_index=True)
