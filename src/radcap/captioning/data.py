"""Study-level training examples for the decoders: features of up to `max_views` images and token ids.

A report (IU study, MedPix image caption) becomes one example. Its images are ordered frontal, lateral,
then unknown views, and the first `max_views` are kept; a missing view is zeros with view_mask 0. Reports
whose images have no stored features for the chosen encoder are listed as rejects, not dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from radcap.core.catalog import DataCatalog
from radcap.core.errors import RadcapError
from radcap.core.io import read_table
from radcap.data_contracts import IMAGES, REPORTS
from radcap.data_contracts.features import GRID_CELLS
from radcap.imaging.features import FeatureStore, current_sha256
from radcap.ingestion.splits import in_selection_carve
from radcap.text.vocab import Vocabulary

VIEW_ORDER = {"frontal": 0, "lateral": 1, "unknown": 2}


@dataclass
class CaptionSet:
    report_ids: list[str]
    texts: list[str]
    pooled: np.ndarray  # (N, V, D) float32
    view_mask: np.ndarray  # (N, V) float32
    grid: np.ndarray | None = None  # (N, V, cells, D) float16
    image_ids: list[list[str]] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)  # patient / case of each report (empty: unknown)

    def __len__(self) -> int:
        return len(self.report_ids)

    def features(self, index: np.ndarray | slice) -> dict[str, np.ndarray]:
        out = {"pooled": self.pooled[index], "view_mask": self.view_mask[index]}
        if self.grid is not None:
            out["grid"] = self.grid[index]
        return out

    def tokens(self, vocab: Vocabulary) -> np.ndarray:
        return np.asarray(vocab.encode_padded(self.texts), np.int32)

    def subset(self, report_ids: list[str]) -> CaptionSet:
        """The examples of `report_ids`, in that order."""
        position = {r: i for i, r in enumerate(self.report_ids)}
        index = np.array([position[r] for r in report_ids], dtype=np.int64)
        return CaptionSet(
            list(report_ids),
            [self.texts[i] for i in index],
            self.pooled[index],
            self.view_mask[index],
            None if self.grid is None else self.grid[index],
            [self.image_ids[i] for i in index] if self.image_ids else [],
            group_ids=[self.group_ids[i] for i in index] if self.group_ids else [],
        )

    @staticmethod
    def concat(sets: list[CaptionSet]) -> CaptionSet:
        """One set of several (e.g. every split of a data directory); grids are dropped."""
        sets = [s for s in sets if len(s)]
        if not sets:
            return CaptionSet([], [], np.zeros((0, 1, 0), np.float32), np.zeros((0, 1), np.float32))
        return CaptionSet(
            [r for s in sets for r in s.report_ids],
            [t for s in sets for t in s.texts],
            np.concatenate([s.pooled for s in sets]),
            np.concatenate([s.view_mask for s in sets]),
            None,
            [i for s in sets for i in s.image_ids],
            group_ids=[g for s in sets for g in s.group_ids] if all(s.group_ids for s in sets) else [],
        )

    def feature_statistics(self, attention: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std over the images present (grid cells for attention, pooled vectors else)."""
        present = self.view_mask.reshape(-1) > 0
        if attention:
            if self.grid is None:
                raise ValueError("this caption set was loaded without the attention grid")
            values = self.grid.reshape(-1, self.grid.shape[2], self.grid.shape[3])[present].astype(np.float32)
            values = values.reshape(-1, values.shape[-1])
        else:
            values = self.pooled.reshape(-1, self.pooled.shape[-1])[present]
        return values.mean(axis=0), np.maximum(values.std(axis=0), 1e-3)


def mean_view(pooled: np.ndarray, view_mask: np.ndarray) -> np.ndarray:
    """(S,V,D) per-view vectors -> (S,D) unit vectors: the mean of the views present, L2-normalized."""
    x = (pooled * view_mask[..., None]).sum(1) / np.maximum(view_mask.sum(1, keepdims=True), 1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def pack_views(studies: list[list[int]], pooled: np.ndarray, grid: np.ndarray | None, max_views: int) -> dict:
    """Per-image features -> per-study arrays: `studies` lists each study's rows of `pooled`/`grid`, in view
    order. Gives {'pooled' (S,V,D) float32, 'view_mask' (S,V)[, 'grid' (S,V,cells,D) float16]}; missing views are 0."""
    dim = pooled.shape[-1]
    out = {
        "pooled": np.zeros((len(studies), max_views, dim), np.float32),
        "view_mask": np.zeros((len(studies), max_views), np.float32),
    }
    if grid is not None:
        out["grid"] = np.zeros((len(studies), max_views, GRID_CELLS, dim), np.float16)
    for s, rows in enumerate(studies):
        for v, row in enumerate(rows[:max_views]):
            out["pooled"][s, v] = pooled[row]
            out["view_mask"][s, v] = 1.0
            if grid is not None:
                out["grid"][s, v] = grid[row].reshape(GRID_CELLS, dim)
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
            rejects.append(
                {
                    "source": report_id,
                    "item": report_id,
                    "kind": "report",
                    "stage": "captioning",
                    "reason": f"no image of this report has features of its current file for encoder "
                    f"{encoder_version} (run `radcap features`)",
                }
            )
            continue
        keep.append(report_id)
        views.append(present)
    packed = pack_views(
        [[row_of[i] for i in present] for present in views],
        stored["pooled"],
        stored["grid"] if grid else None,
        max_views,
    )
    kept = chosen.set_index("report_id").loc[keep]
    return CaptionSet(
        keep,
        kept["target"].tolist(),
        packed["pooled"],
        packed["view_mask"],
        packed.get("grid"),
        views,
        rejects,
        kept["group_id"].astype(str).tolist(),
    )


def load_caption_sets(
    data_dir: Path, encoder_version: str, splits: tuple[str, ...], max_views: int, grid: bool = False, min_size: int = 1
) -> dict[str, CaptionSet]:
    """The one caption-set loader: each split's examples from a data directory's tables and feature store,
    or RadcapError when a split has fewer than `min_size` reports with features."""
    catalog = DataCatalog(data_dir)
    reports, images = read_table(catalog.reports, REPORTS), read_table(catalog.images, IMAGES)
    store = FeatureStore(catalog.features)
    sets = {s: build_caption_set(reports, images, store, encoder_version, s, max_views, grid) for s in splits}
    for split, data in sets.items():
        if len(data) < min_size:
            raise RadcapError(
                f"{data_dir}: {len(data)} '{split}' reports have features for encoder {encoder_version} "
                f"(at least {min_size} needed; run `radcap features`)"
            )
    return sets


def training_sets(
    data_dir: Path, encoder_version: str, rules, max_views: int, grid: bool = False, min_size: int = 1
) -> dict[str, CaptionSet]:
    """{'train': what the model fits, 'val': what every choice is made on}. With `rules.select_on == "carve"`
    both come from the train split (by group, deterministically) and the val and test splits are never read,
    so no choice can touch what is reported; with "val", the val split is the selection set."""
    if rules.select_on == "val":
        return load_caption_sets(data_dir, encoder_version, ("train", "val"), max_views, grid, min_size)
    train = load_caption_sets(data_dir, encoder_version, ("train",), max_views, grid)["train"]
    chosen = [rid for rid, group in zip(train.report_ids, train.group_ids) if in_selection_carve(group, rules)]
    selected = set(chosen)
    kept = [rid for rid in train.report_ids if rid not in selected]
    sets = {"train": train.subset(kept), "val": train.subset(chosen)}
    sets["train"].rejects = train.rejects
    for name, data in sets.items():
        if len(data) < min_size:
            raise RadcapError(
                f"{data_dir}: the carved {name} set has {len(data)} reports (at least {min_size} needed); "
                "add training data or set RADCAP_SPLIT__SELECT_FRACTION"
            )
    return sets
