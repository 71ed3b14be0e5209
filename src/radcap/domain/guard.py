"""Knowing what a model does not know: a description of its training domain, and a score that says how far a
new image lies from it.

The guard a captioner (or a retriever) carries:
* what its training data was, where the sources say: the modalities (CT, MR, X-ray...) and body regions;
* a density model of its training images' pooled CheXNet features: the features are standardized with the
  training statistics, projected on the principal components that explain 95% of their variance, and an image
  scores its Mahalanobis distance in that subspace plus the scaled distance to it (a probabilistic-PCA
  distance: it also sees what the components miss), divided by the square root of the dimension so scores are
  comparable across models. A study's score is its highest image score.
* a threshold, calibrated out of fold on the training split (never a reported split): the training images
  are split into 5 folds by patient or case, a density model fitted without each fold scores it, and the
  threshold is the `percentile` (95th by default) of those scores, so about 5% of in-domain images are
  flagged (a small selection set alone gave a noisy threshold: 22% of the chest X-rays' held-out patients
  flagged against 4.5% out of fold, benchmarks/domain_guard.py).
A study is out of domain when its score is above the threshold, when a DICOM's Modality is outside the
training modalities, or when an image is in colour (chroma above `max_chroma`: radiographs, CT and MR are
grayscale), whatever the score. Saved as `domain.json` (threshold, metadata) and `domain.npz`
(arrays, loaded with `allow_pickle=False`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radcap.core.io import atomic_path, write_json

DOMAIN_JSON, DOMAIN_ARRAYS = "domain.json", "domain.npz"
# DICOM Modality codes and dataset spellings of one family of images.
MODALITY_FAMILIES = {
    "CT": "CT",
    "MR": "MR",
    "MRI": "MR",
    "CR": "XR",
    "DX": "XR",
    "CX": "XR",
    "DR": "XR",
    "RG": "XR",
    "XR": "XR",
    "X-RAY": "XR",
    "XRAY": "XR",
    "US": "US",
    "NM": "NM",
    "PT": "PET",
    "MG": "MG",
}


def modality_family(value: object) -> str | None:
    text = value.strip().upper() if isinstance(value, str) else ""
    return MODALITY_FAMILIES.get(text, text or None)


@dataclass
class DomainGuard:
    mean: np.ndarray  # (D,) standardization
    std: np.ndarray  # (D,)
    components: np.ndarray  # (k, D) principal directions of the standardized training features
    variances: np.ndarray  # (k,) their variances
    residual_variance: float  # mean variance left outside the k components
    threshold: float
    percentile: float
    modalities: list[str] = field(default_factory=list)  # families, e.g. ["CT", "MR"]
    regions: list[str] = field(default_factory=list)
    calibration_images: int = 0
    max_chroma: float | None = 0.05  # an image more colourful than this is not a radiograph (None: no rule)

    @classmethod
    def fit(
        cls,
        train: np.ndarray,
        groups: np.ndarray | None = None,
        percentile: float = 95.0,
        explained: float = 0.95,
        modalities: list[str] | None = None,
        regions: list[str] | None = None,
        folds: int = 5,
        max_chroma: float | None = 0.05,
    ) -> DomainGuard:
        """From training images' pooled features (N,D), calibrated out of fold: the images are split into
        `folds` by group (patient, case: `groups`, else each image alone), a guard fitted without each fold
        scores it, and the threshold is the `percentile` of those scores. So the threshold comes from images
        the density model did not see, without touching any split that is reported."""
        guard = cls._density(train, explained)
        keys = np.asarray(groups if groups is not None else np.arange(len(train))).astype(str)
        fold = np.array([int(hashlib.sha256(k.encode()).hexdigest()[:8], 16) % folds for k in keys])
        scores = [
            cls._density(train[fold != f], explained).score_images(train[fold == f])
            for f in range(folds)
            if (fold == f).any() and (fold != f).sum() > 2
        ]
        guard.threshold = float(np.percentile(np.concatenate(scores), percentile)) if scores else float("inf")
        guard.percentile = percentile
        guard.modalities = sorted({m for m in map(modality_family, modalities or []) if m})
        guard.regions = sorted(set(regions or []))
        guard.calibration_images = int(sum(len(s) for s in scores))
        guard.max_chroma = max_chroma
        return guard

    @classmethod
    def _density(cls, train: np.ndarray, explained: float) -> DomainGuard:
        mean, std = train.mean(axis=0), np.maximum(train.std(axis=0), 1e-3)
        z = (train - mean) / std
        _, singular, vt = np.linalg.svd(z, full_matrices=False)
        variances = singular**2 / max(len(z) - 1, 1)
        k = int(np.searchsorted(np.cumsum(variances) / variances.sum(), explained) + 1)
        k = max(1, min(k, len(variances) - 1)) if len(variances) > 1 else 1
        residual = float(variances[k:].sum() / max(z.shape[1] - k, 1)) if len(variances) > k else 1e-6
        return cls(
            mean.astype(np.float32),
            std.astype(np.float32),
            vt[:k].astype(np.float32),
            np.maximum(variances[:k], 1e-6).astype(np.float32),
            max(residual, 1e-6),
            float("inf"),
            0.0,
        )

    def score_images(self, pooled: np.ndarray) -> np.ndarray:
        """(N,D) pooled features -> (N,) distances (see the module doc)."""
        z = (np.asarray(pooled, np.float32) - self.mean) / self.std
        projected = z @ self.components.T
        inside = (projected**2 / self.variances).sum(axis=1)
        outside = ((z - projected @ self.components) ** 2).sum(axis=1) / self.residual_variance
        return np.sqrt((inside + outside) / z.shape[1])

    def judge(self, score: float, modality: str | None = None, chroma: float = 0.0) -> tuple[bool, str | None]:
        """(in_domain, reason when not) for a study's score, its DICOM modality when known, and its most colourful
        image's chroma (radiographs, CT and MR are grayscale: a colour picture is not one)."""
        if self.max_chroma is not None and chroma > self.max_chroma:
            return False, f"a colour image (chroma {chroma:.2f} above {self.max_chroma:.2f}): not a radiological image"
        family = modality_family(modality)
        if family and self.modalities and family not in self.modalities:
            return False, f"modality {family} is not among the training modalities ({', '.join(self.modalities)})"
        if score > self.threshold:
            return False, (
                f"out-of-domain score {score:.2f} above the threshold {self.threshold:.2f} "
                f"(the {self.percentile:g}th percentile of validation images)"
            )
        return True, None

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / DOMAIN_ARRAYS) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, mean=self.mean, std=self.std, components=self.components, variances=self.variances)
        write_json(
            {
                "threshold": self.threshold,
                "percentile": self.percentile,
                "residual_variance": self.residual_variance,
                "modalities": self.modalities,
                "regions": self.regions,
                "calibration_images": self.calibration_images,
                "components": len(self.components),
                "max_chroma": self.max_chroma,
            },
            folder / DOMAIN_JSON,
        )

    @classmethod
    def load(cls, folder: Path) -> DomainGuard | None:
        """The guard saved in a bundle folder, or None for a model saved without one (radcap 0.1)."""
        if not (folder / DOMAIN_JSON).exists():
            return None
        meta = json.loads((folder / DOMAIN_JSON).read_text(encoding="utf-8"))
        with np.load(folder / DOMAIN_ARRAYS, allow_pickle=False) as arrays:
            return cls(
                arrays["mean"],
                arrays["std"],
                arrays["components"],
                arrays["variances"],
                float(meta["residual_variance"]),
                float(meta["threshold"]),
                float(meta["percentile"]),
                list(meta["modalities"]),
                list(meta["regions"]),
                int(meta.get("calibration_images", 0)),
                meta.get("max_chroma"),
            )


def image_vectors(pooled: np.ndarray, view_mask: np.ndarray) -> np.ndarray:
    """A CaptionSet's per-view features (S,V,D) -> the present images' vectors (N,D)."""
    return pooled.reshape(-1, pooled.shape[-1])[view_mask.reshape(-1) > 0]


def study_scores(guard: DomainGuard, pooled: np.ndarray, view_mask: np.ndarray) -> np.ndarray:
    """(S,V,D) study features -> (S,) the highest image score of each study."""
    scores = guard.score_images(pooled.reshape(-1, pooled.shape[-1])).reshape(view_mask.shape)
    return np.where(view_mask > 0, scores, -np.inf).max(axis=1)


def domain_guard(sets: list, images, reports, cfg) -> DomainGuard:
    """The guard of a model trained on the caption sets `sets` (its fitting and selection sets: the train
    split), with the images' modalities and regions from the images table and their groups from the reports."""
    vectors = np.concatenate([image_vectors(s.pooled, s.view_mask) for s in sets])
    group_of = dict(zip(reports["report_id"], reports["group_id"]))
    groups = np.array([group_of[rid] for s in sets for rid, ids in zip(s.report_ids, s.image_ids) for _ in ids])
    image_ids = {image_id for s in sets for ids in s.image_ids for image_id in ids}
    rows = images[images["image_id"].isin(image_ids)]
    return DomainGuard.fit(
        vectors,
        groups,
        cfg.percentile,
        cfg.explained_variance,
        modalities=rows["modality"].dropna().tolist(),
        regions=rows["location_category"].dropna().tolist(),
        max_chroma=cfg.max_chroma,
    )
