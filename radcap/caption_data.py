"""Study-level training examples for the decoders: features of up to `max_views` images and token ids.

A report (IU study, MedPix image caption) becomes one example. Its images are ordered frontal, lateral,
then unknown views, and the first `max_views` are kept; a missing view is zeros with view_mask 0. Reports
whose images have no stored features for the chosen encoder are listed as rejects, not dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from radcap.features import FeatureStore, current_sha256
from radcap.vocab import Vocabulary

VIEW_ORDER = {"frontal": 0, "lateral": 1, "unknown": 2}


@dataclass
class CaptionSet:
    report_ids: list[str]
    texts: list[str]
    pooled: np.ndarray  # (N, V, 1024) float32
    view_mask: np.ndarray  # (N, V) float32
    grid: np.ndarray | None = None  # (N, V, 49, 1024) float16
    image_ids: list[list[str]] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.report_ids)

    def features(self, index: np.ndarray | slice) -> dict[str, np.ndarray]:
        out = {"pooled": self.pooled[index], "view_mask": self.view_mask[index]}
        if self.grid is not None:
            out["grid"] = self.grid[index]
        return out

    def tokens(self, vocab: Vocabulary) -> np.ndarray:
        return np.asarray(vocab.encode_padded(self.texts), np.int32)


def mean_view(pooled: np.ndarray, view_mask: np.ndarray) -> np.ndarray:
    """(S,V,D) per-view vectors -> (S,D) unit vectors: the mean of the views present, L2-normalized."""
    x = (pooled * view_mask[..., None]).sum(1) / np.maximum(view_mask.sum(1, keepdims=True), 1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def pack_views(studies: list[list[int]], pooled: np.ndarray, grid: np.ndarray | None, max_views: int) -> dict:
    """Per-image features -> per-study arrays: `studies` lists each study's rows of `pooled`/`grid`, in view
    order. Gives {'pooled' (S,V,D) float32, 'view_mask' (S,V)[, 'grid' (S,V,49,D) float16]}; missing views are 0."""
    dim = pooled.shape[-1]
    out = {"pooled": np.zeros((len(studies), max_views, dim), np.float32),
           "view_mask": np.zeros((len(studies), max_views), np.float32)}
    if grid is not None:
        out["grid"] = np.zeros((len(studies), max_views, 49, dim), np.float16)
    for s, rows in enumerate(studies):
        for v, row in enumerate(rows[:max_views]):
            out["pooled"][s, v] = pooled[row]
            out["view_mask"][s, v] = 1.0
            if grid is not None:
                out["grid"][s, v] = grid[row].reshape(49, dim)
    return out


def build_caption_set(
    reports: pd.DataFrame,
    images: pd.DataFrame,
    store: FeatureStore,
    encoder_version: str,
    split: str,
    max_views: int = 2,
    grid: bool = False,
) -> CaptionSet:
    """Examples of one split, in report_id order (deterministic)."""
    chosen = reports[reports["split"] == split].sort_values("report_id")
    imgs = images[images["report_id"].isin(chosen["report_id"])].copy()
    imgs["_order"] = imgs["view"].map(VIEW_ORDER).fillna(2)
    imgs = imgs.sort_values(["report_id", "_order", "image_id"])
    # Each image's features for its file's current content (the newest row when the file is gone).
    current = {image_id: current_sha256(path) for image_id, path in zip(imgs["image_id"], imgs["path"])}
    stored = store.load(encoder_version, current, grid=grid)
    row_of = {image_id: i for i, image_id in enumerate(stored["image_id"])}
    by_report = imgs.groupby("report_id")["image_id"].apply(list).to_dict()

    keep, rejects, views = [], [], []
    for report_id in chosen["report_id"]:
        present = [i for i in by_report.get(report_id, []) if i in row_of][:max_views]
        if not present:
            rejects.append({"source": report_id, "item": report_id, "kind": "report", "stage": "captioning",
                            "reason": f"no image of this report has features of its current file for encoder "
                                      f"{encoder_version} (run `radcap features`)"})
            continue
        keep.append(report_id)
        views.append(present)
    packed = pack_views([[row_of[i] for i in present] for present in views], stored["pooled"],
                        stored["grid"] if grid else None, max_views)
    texts = chosen.set_index("report_id").loc[keep, "target"].tolist()
    return CaptionSet(keep, texts, packed["pooled"], packed["view_mask"], packed.get("grid"), views, rejects)
