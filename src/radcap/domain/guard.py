"""Knowing what a model does not know: a description of its training domain, and a score that says how far a
new study lies from it.

The guard a captioner (or a retriever) carries:
* what its training data was, where the sources say: the modalities (CT, MR, X-ray...) and body regions;
* one density model per signal (values standardized with the training statistics):
  - `features`: the encoder's pooled CheXNet features, by a probabilistic-PCA distance (`Density`: the
    Mahalanobis distance on the principal components that explain 95% of their variance plus the scaled
    distance to that subspace, over the square root of the dimension);
  - `layers`: the encoder's early layers (each channel's mean and spread in DenseNet-121's pool2_relu and
    pool3_relu, `radcap.models.encoder.EARLY_LAYERS`), by the same distance on 99% of their variance. Early
    layers keep what the last one discards (texture, contrast, the field of view), so they separate images the
    encoder was never trained to tell apart: an untrained encoder, or one that never saw a chest X-ray;
  - `image`: the image's pixel statistics (`radcap.imaging.statistics`: histogram, black field, field-of-view
    shape, edges, symmetry), by the distance to the nearest training images (`Neighbours`), for what the
    features do not separate: an encoder that never saw a chest X-ray, or an untrained one, maps X-rays close
    to CT slices, but their pixels still differ.
* calibration per study, out of fold, on the training split only (never a reported split): its images are split
  into 5 folds by patient or case, and density models fitted without each fold score it. Those out-of-fold
  scores are each signal's reference: a new image's score on a signal becomes its surprise, -log p, p the share
  of reference scores at least as high (beyond their 90th percentile, an exponential tail fitted to them, so
  that the surprise keeps growing past the highest reference score). An image's combined score is the sum of
  its signals' surprises (Fisher's method: evidence from independent signals adds up; the largest of them
  instead flagged fewer intruders at the same in-domain rate, 74% of chest X-rays against 83% for a MedPix
  model with the untrained encoder, because the two signals flag different in-domain images). A study's score
  is its highest image score, as captioning judges a study by its worst view, and the threshold is the
  `percentile` (95th) of the out-of-fold study scores: about 5% of in-domain studies are flagged, two-view
  studies included (a per-image threshold flags up to 1 - 0.95² of them).
A study is out of domain when its score is above the threshold, when a DICOM's Modality is outside the
training modalities, or when an image is in colour (chroma above `max_chroma`: radiographs, CT and MR are
grayscale), whatever the score. Saved as `domain.json` (threshold, calibration, metadata) and `domain.npz`
(arrays, loaded with `allow_pickle=False`); a guard saved by radcap 0.2 (one signal, a per-image threshold) or 0.3
(no tail) still loads and judges as it did.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from radcap.core.errors import RadcapError
from radcap.core.io import atomic_path, write_json
from radcap.data_contracts.features import EARLY_DIM
from radcap.imaging.statistics import STATISTICS_DIM

log = logging.getLogger(__name__)
DOMAIN_JSON, DOMAIN_ARRAYS = "domain.json", "domain.npz"
SIGNALS = ("features", "layers", "image")
LAYERS_EXPLAINED = 0.99  # early-layer statistics: their rarer directions are where intruders differ (measured:
# benchmarks/domain_guard.py; 95% kept too little of what separates a chest X-ray from a CT or MR slice)
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
class Density:
    """A probabilistic-PCA distance from the training vectors (see the module doc)."""

    mean: np.ndarray  # (D,) standardization
    std: np.ndarray  # (D,)
    components: np.ndarray  # (k, D) principal directions of the standardized training vectors
    variances: np.ndarray  # (k,) their variances
    residual_variance: float  # mean variance left outside the k components

    @classmethod
    def fit(cls, train: np.ndarray, explained: float) -> Density:
        train = np.asarray(train, np.float64)
        mean, std = train.mean(axis=0), np.maximum(train.std(axis=0), 1e-3)
        z = (train - mean) / std
        _, singular, vt = np.linalg.svd(z, full_matrices=False)
        variances = singular**2 / max(len(z) - 1, 1)
        k = int(np.searchsorted(np.cumsum(variances) / max(variances.sum(), 1e-12), explained) + 1)
        k = max(1, min(k, len(variances) - 1)) if len(variances) > 1 else 1
        residual = float(variances[k:].sum() / max(z.shape[1] - k, 1)) if len(variances) > k else 1e-6
        return cls(
            mean.astype(np.float32),
            std.astype(np.float32),
            vt[:k].astype(np.float32),
            np.maximum(variances[:k], 1e-6).astype(np.float32),
            max(residual, 1e-6),
        )

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """(N,D) -> (N,) distances; NaN for a row with NaN (an image whose statistics are unknown)."""
        z = (np.asarray(vectors, np.float32) - self.mean) / self.std
        projected = z @ self.components.T
        inside = (projected**2 / self.variances).sum(axis=1)
        outside = ((z - projected @ self.components) ** 2).sum(axis=1) / self.residual_variance
        return np.sqrt((inside + outside) / z.shape[1])

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        names = ("mean", "std", "components", "variances")
        return {f"{prefix}{n}": getattr(self, n) for n in names} | {
            f"{prefix}residual_variance": np.array(self.residual_variance, np.float64)
        }

    @classmethod
    def from_arrays(cls, arrays, prefix: str, residual: float | None = None) -> Density:
        return cls(
            arrays[f"{prefix}mean"],
            arrays[f"{prefix}std"],
            arrays[f"{prefix}components"],
            arrays[f"{prefix}variances"],
            float(arrays[f"{prefix}residual_variance"]) if residual is None else residual,
        )


@dataclass
class Neighbours:
    """A k-nearest-neighbour distance to the training vectors, standardized with their statistics: the mean
    distance to the `k` nearest, over the square root of the dimension. For a signal whose training images form
    many separate clusters (MedPix's CT windows, MR sequences, body regions), where one Gaussian would also
    cover the space between them: measured on MedPix's pixel statistics, a Gaussian flagged 38% of chest X-rays,
    this 73% (benchmarks/domain_guard.py)."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    points: np.ndarray  # (N, D) standardized training vectors
    k: int = 3

    @classmethod
    def fit(cls, train: np.ndarray, k: int = 3) -> Neighbours:
        train = np.asarray(train, np.float32)
        mean, std = train.mean(axis=0), np.maximum(train.std(axis=0), 1e-3)
        return cls(mean, std, ((train - mean) / std).astype(np.float32), k)

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """(N,D) -> (N,) distances; NaN for a row with NaN."""
        z = (np.asarray(vectors, np.float32) - self.mean) / self.std
        k = min(self.k, len(self.points))
        out = np.empty(len(z), np.float64)
        squared_points = (self.points.astype(np.float64) ** 2).sum(axis=1)
        for start in range(0, len(z), 256):  # (256, N) distances at a time, whatever N
            part = z[start : start + 256].astype(np.float64)
            d2 = (part**2).sum(axis=1)[:, None] + squared_points[None] - 2 * part @ self.points.T
            nearest = np.partition(np.maximum(d2, 0.0), k - 1, axis=1)[:, :k]
            out[start : start + 256] = np.sqrt(nearest).mean(axis=1)
        return out / np.sqrt(z.shape[1])

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}mean": self.mean, f"{prefix}std": self.std, f"{prefix}points": self.points}

    @classmethod
    def from_arrays(cls, arrays, prefix: str, k: int) -> Neighbours:
        return cls(arrays[f"{prefix}mean"], arrays[f"{prefix}std"], arrays[f"{prefix}points"], k)


def fit_signal(name: str, train: np.ndarray, explained: float) -> Density | Neighbours:
    """The density model of one signal: the encoder's features and early-layer statistics are many correlated
    channels, which PCA summarizes; the pixel statistics are few, and their training images form clusters (see
    Neighbours)."""
    if name == "image":
        return Neighbours.fit(train)
    return Density.fit(train, LAYERS_EXPLAINED if name == "layers" else explained)


def _folds(groups: np.ndarray, folds: int) -> np.ndarray:
    """A fold per image, by the hash of its group (patient, case): stable across runs and machines."""
    return np.array([int(hashlib.sha256(str(k).encode()).hexdigest()[:8], 16) % folds for k in groups])


def _study_max(image_scores: np.ndarray, study: np.ndarray, studies: int) -> np.ndarray:
    """(N,) image scores and each image's study index -> (S,) the highest finite score of each study (NaN: none)."""
    out = np.full(studies, -np.inf)
    finite = np.isfinite(image_scores)
    np.maximum.at(out, study[finite], image_scores[finite])
    return np.where(np.isfinite(out), out, np.nan)


def surprise(scores: np.ndarray, reference: np.ndarray, tail: bool = True) -> np.ndarray:
    """-log p of each score, p the share of in-domain reference scores (sorted, out of fold) at least as high,
    counted with one pseudo-observation so that p > 0; a score that could not be computed (NaN) says nothing: 0.

    Beyond the reference's 90th percentile, p follows an exponential tail fitted to the reference scores above it
    (peaks over a threshold): without it p stops at 1/(n+1) past the highest reference score, so a signal that
    sees an image far outside the training domain adds no more evidence than one that sees it barely outside,
    and a sum over several signals can miss what one of them alone sees far outside (tests/test_domain.py). On
    the real collections of benchmarks/domain_guard.py (untrained encoder, seed 0, against the same run without
    the tail) it moved the default signals' shares by under a point, and other subsets both ways: it raises the
    threshold of a sum a little, as training images far out now count more.
    `tail=False`: the empirical p alone (guards saved before radcap 0.4 were calibrated with it)."""
    scores = np.asarray(scores, np.float64)
    known = np.nan_to_num(scores, nan=-np.inf)
    above = len(reference) - np.searchsorted(reference, known, side="left")
    p = (above + 1.0) / (len(reference) + 1.0)
    if tail and len(reference) >= 20:
        start = float(np.quantile(reference, 0.9))
        excess = reference[reference > start] - start
        scale = float(excess.mean()) if len(excess) and excess.mean() > 0 else 0.0
        if scale > 0:
            share = (np.sum(reference > start) + 1.0) / (len(reference) + 1.0)
            beyond = known > start
            p = np.where(beyond, share * np.exp(-np.maximum(known - start, 0.0) / scale), p)
    return np.where(np.isnan(scores), 0.0, -np.log(p))


@dataclass
class DomainGuard:
    densities: dict[str, Density | Neighbours]  # signal -> its density model (SIGNALS order)
    references: dict[str, np.ndarray]  # signal -> its sorted out-of-fold training image scores ({}: radcap 0.2)
    threshold: float  # on the combined study score
    percentile: float
    modalities: list[str] = field(default_factory=list)  # families, e.g. ["CT", "MR"]
    regions: list[str] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # per: study | image, counts, out-of-fold flag rates
    max_chroma: float | None = 0.05  # an image more colourful than this is not a radiograph (None: no rule)
    tail: bool = True  # surprises with an exponential tail (False: a guard saved before radcap 0.4)

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        statistics: np.ndarray | None,
        study: np.ndarray,
        groups: np.ndarray,
        percentile: float = 95.0,
        explained: float = 0.95,
        modalities: list[str] | None = None,
        regions: list[str] | None = None,
        folds: int = 5,
        max_chroma: float | None = 0.05,
        signals: tuple[str, ...] = SIGNALS,
        layers: np.ndarray | None = None,
    ) -> DomainGuard:
        """From training images: pooled features (N,D), pixel statistics (N,K; NaN rows for images no longer
        readable; None: no image signal), early-layer statistics (N,E; NaN rows where unknown; None: no layers
        signal), each image's study index (N,) and group (N,), calibrated per study out of fold (see the module
        doc)."""
        values = {"features": np.asarray(features, np.float32)}
        if layers is not None:
            values["layers"] = np.asarray(layers, np.float32)
        if statistics is not None:
            values["image"] = np.asarray(statistics, np.float32)
        values = {name: v for name, v in values.items() if name in signals}
        if not values:
            raise ValueError(f"no signal to fit among {signals}")
        study = np.asarray(study, np.int64)
        studies = int(study.max()) + 1 if len(study) else 0
        fold = _folds(np.asarray(groups), folds)
        known = {name: np.isfinite(v).all(axis=1) for name, v in values.items()}
        out_of_fold = {name: np.full(len(study), np.nan) for name in values}
        for f in range(folds):
            held = fold == f
            for name, v in values.items():
                fitting = ~held & known[name]
                if held.any() and fitting.sum() > 2:
                    out_of_fold[name][held] = fit_signal(name, v[fitting], explained).score(v[held])
        references = {name: np.sort(s[np.isfinite(s)]) for name, s in out_of_fold.items()}
        surprises = {name: surprise(out_of_fold[name], references[name], tail=True) for name in values}
        combined = _study_max(np.sum(list(surprises.values()), axis=0), study, studies)
        finite = np.isfinite(combined)
        threshold = float(np.percentile(combined[finite], percentile)) if finite.any() else float("inf")
        views = np.bincount(study, minlength=studies)
        flagged, multi = combined > threshold, finite & (views > 1)
        alone = {name: _study_max(s, study, studies) for name, s in surprises.items()}
        calibration = {
            "per": "study",
            "images": len(study),
            "studies": int(finite.sum()),
            "flagged": float(flagged[finite].mean()) if finite.any() else None,
            "multi_view_studies": int(multi.sum()),
            "multi_view_flagged": float(flagged[multi].mean()) if multi.any() else None,
            # Each signal alone, thresholded at the same percentile of its own study scores (what it adds).
            "alone_thresholds": {
                name: float(np.percentile(a[np.isfinite(a)], percentile)) if np.isfinite(a).any() else float("inf")
                for name, a in alone.items()
            },
            "images_without_statistics": int((~known["image"]).sum()) if "image" in known else None,
            "images_without_layers": int((~known["layers"]).sum()) if "layers" in known else None,
        }
        if calibration["images_without_statistics"]:
            log.warning(
                "%d training images could not be read again for their pixel statistics; the guard learnt that "
                "signal without them",
                calibration["images_without_statistics"],
            )
        if calibration["images_without_layers"]:
            log.warning(
                "%d training images have no early-layer statistics in the feature store (stored before radcap "
                "0.4; `radcap features` adds them); the guard learnt that signal without them",
                calibration["images_without_layers"],
            )
        return cls(
            {name: fit_signal(name, v[known[name]], explained) for name, v in values.items()},
            references,
            threshold,
            percentile,
            sorted({m for m in map(modality_family, modalities or []) if m}),
            sorted(set(regions or [])),
            calibration,
            max_chroma,
        )

    @property
    def needs_statistics(self) -> bool:
        return "image" in self.densities

    @property
    def needs_layers(self) -> bool:
        return "layers" in self.densities

    def signal_scores(
        self, pooled: np.ndarray, statistics: np.ndarray | None = None, layers: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Each signal's (N,) image scores: its surprise, -log p against its out-of-fold training scores (radcap
        0.2's guard: the raw distance). NaN where a signal could not be computed."""
        if self.needs_statistics and statistics is None:
            raise ValueError("this guard judges the images' pixel statistics too: pass them (Decoded.statistics)")
        if self.needs_layers and layers is None:
            raise RadcapError(
                "this model's out-of-domain guard judges the encoder's early layers, which this encoder does not "
                "give (an optimized build made before radcap 0.4): build it again with `radcap optimize-encoder`"
            )
        values = {"features": pooled, "image": statistics, "layers": layers}
        out = {}
        for name, density in self.densities.items():
            raw = density.score(np.asarray(values[name]))
            out[name] = (
                np.where(np.isnan(raw), np.nan, surprise(raw, self.references[name], self.tail))
                if self.references
                else raw
            )
        return out

    def score_images(
        self, pooled: np.ndarray, statistics: np.ndarray | None = None, layers: np.ndarray | None = None
    ) -> np.ndarray:
        """(N,D) pooled features, (N,K) pixel statistics and (N,E) early-layer statistics -> (N,) combined scores:
        the sum of the signals' surprises (Fisher's method: independent evidence adds up; a signal that could not
        be computed adds 0)."""
        return np.nansum(np.stack(list(self.signal_scores(pooled, statistics, layers).values())), axis=0)

    def judge(self, score: float, modality: str | None = None, chroma: float = 0.0) -> tuple[bool, str | None]:
        """(in_domain, reason when not) for a study's score, its DICOM modality when known, and its most colourful
        image's chroma (radiographs, CT and MR are grayscale: a colour picture is not one)."""
        if self.max_chroma is not None and chroma > self.max_chroma:
            return False, f"a colour image (chroma {chroma:.2f} above {self.max_chroma:.2f}): not a radiological image"
        family = modality_family(modality)
        if family and self.modalities and family not in self.modalities:
            return False, f"modality {family} is not among the training modalities ({', '.join(self.modalities)})"
        if score > self.threshold:
            unit = "studies" if self.calibration.get("per") == "study" else "images"
            return False, (
                f"out-of-domain score {score:.2f} above the threshold {self.threshold:.2f} "
                f"(the {self.percentile:g}th percentile of the training {unit}' scores, out of fold)"
            )
        return True, None

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for name, density in self.densities.items():
            arrays |= density.arrays(f"{name}_")
            arrays[f"{name}_reference"] = self.references[name]
        with atomic_path(folder / DOMAIN_ARRAYS) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        write_json(
            {
                "format": 3,
                "tail": self.tail,
                "signals": list(self.densities),
                "kinds": {name: type(d).__name__ for name, d in self.densities.items()},
                "neighbours": {name: d.k for name, d in self.densities.items() if isinstance(d, Neighbours)},
                "threshold": self.threshold,
                "percentile": self.percentile,
                "modalities": self.modalities,
                "regions": self.regions,
                "calibration": self.calibration,
                "statistics_dim": STATISTICS_DIM,
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
            densities: dict[str, Density | Neighbours]
            if meta.get("format", 1) == 1:  # radcap 0.2: pooled features only, a per-image threshold
                densities = {"features": Density.from_arrays(arrays, "", float(meta["residual_variance"]))}
                references: dict[str, np.ndarray] = {}
                calibration = {"per": "image", "images": int(meta.get("calibration_images", 0))}
            else:
                densities = {
                    name: Neighbours.from_arrays(arrays, f"{name}_", int(meta["neighbours"][name]))
                    if meta["kinds"][name] == "Neighbours"
                    else Density.from_arrays(arrays, f"{name}_")
                    for name in meta["signals"]
                }
                references = {name: arrays[f"{name}_reference"] for name in meta["signals"]}
                calibration = dict(meta["calibration"])
        return cls(
            densities,
            references,
            float(meta["threshold"]),
            float(meta["percentile"]),
            list(meta["modalities"]),
            list(meta["regions"]),
            calibration,
            meta.get("max_chroma"),
            bool(meta.get("tail", False)),  # format 2 (radcap 0.3): the empirical p alone
        )


def guard_summary(guard: DomainGuard) -> dict:
    """What a training run logs about its guard: threshold, components per signal, out-of-fold flag rates."""
    calibration = guard.calibration
    summary: dict = {"domain_threshold": round(guard.threshold, 4), "domain_modalities": ",".join(guard.modalities)}
    summary |= {
        f"domain_{name}_components": len(d.components) for name, d in guard.densities.items() if isinstance(d, Density)
    }
    for key in ("flagged", "multi_view_flagged"):
        if calibration.get(key) is not None:
            summary[f"domain_oof_{key}"] = round(calibration[key], 4)
    return summary


def study_scores(
    guard: DomainGuard,
    pooled: np.ndarray,
    view_mask: np.ndarray,
    statistics: np.ndarray | None = None,
    layers: np.ndarray | None = None,
) -> np.ndarray:
    """(S,V,D) study features, (S,V,K) pixel and (S,V,E) early-layer statistics -> (S,) combined scores: each
    study's highest image score."""
    return per_study(guard.score_images(*_flat(pooled, statistics, layers)), view_mask)


def study_signal_scores(
    guard: DomainGuard,
    pooled: np.ndarray,
    view_mask: np.ndarray,
    statistics: np.ndarray | None = None,
    layers: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Each signal alone, per study (S,): its highest image surprise over the signal's own threshold (the same
    percentile of its out-of-fold study scores), so above 1 flags at that signal's own threshold."""
    limits = guard.calibration.get("alone_thresholds", {})
    return {
        name: per_study(np.nan_to_num(scores, nan=-np.inf), view_mask) / limits.get(name, guard.threshold)
        for name, scores in guard.signal_scores(*_flat(pooled, statistics, layers)).items()
    }


def _flat(pooled: np.ndarray, *others: np.ndarray | None) -> tuple:
    flat = pooled.reshape(-1, pooled.shape[-1])
    return flat, *(None if o is None else o.reshape(len(flat), -1) for o in others)


def per_study(image_scores: np.ndarray, view_mask: np.ndarray) -> np.ndarray:
    return np.where(view_mask > 0, image_scores.reshape(view_mask.shape), -np.inf).max(axis=1)


def set_statistics(image_ids: list[list[str]], view_mask: np.ndarray, images: pd.DataFrame) -> np.ndarray:
    """(S,V,K) pixel statistics of a caption set's images (in its view slots), read again from their files
    (`images` table paths); NaN where a file is gone or no longer decodes."""
    from radcap.imaging.decode import ImageRejected, load_image

    path_of = dict(zip(images["image_id"], images["path"]))
    out = np.full((*view_mask.shape, STATISTICS_DIM), np.nan, np.float32)
    for s, ids in enumerate(image_ids):
        for v, image_id in enumerate(ids[: view_mask.shape[1]]):
            path = path_of.get(image_id)
            if not isinstance(path, str) or not path:
                continue
            try:
                image = load_image(Path(path))
            except ImageRejected:
                continue
            out[s, v] = image.statistics
    return out


def set_layers(
    image_ids: list[list[str]], view_mask: np.ndarray, images: pd.DataFrame, store, encoder_version: str
) -> np.ndarray:
    """(S,V,E) early-layer statistics of a caption set's images (in its view slots), from the feature store
    (`radcap.imaging.features.FeatureStore`) rows of the encoder its features came from, for the images' current
    files (`images` table paths), as the set's own features were chosen; NaN where a row predates them."""
    from radcap.imaging.features import current_sha256

    path_of = dict(zip(images["image_id"], images["path"]))
    wanted = {i for ids in image_ids for i in ids}
    shas = {i: current_sha256(path_of[i]) if isinstance(path_of.get(i), str) else None for i in wanted}
    loaded = store.load(encoder_version, shas, early=True)
    row_of = {image_id: k for k, image_id in enumerate(loaded["image_id"])}
    out = np.full((*view_mask.shape, EARLY_DIM), np.nan, np.float32)
    for s, ids in enumerate(image_ids):
        for v, image_id in enumerate(ids[: view_mask.shape[1]]):
            if image_id in row_of:
                out[s, v] = loaded["early"][row_of[image_id]]
    return out


def domain_guard(
    sets: list, images: pd.DataFrame, reports: pd.DataFrame, cfg, store=None, encoder_version: str | None = None
) -> DomainGuard:
    """The guard of a model trained on the caption sets `sets` (its fitting and selection sets: the train
    split), with the images' modalities and regions from the images table, their groups from the reports,
    their pixel statistics from their files and their early-layer statistics from the feature store `store`
    (rows of `encoder_version`; None: no layers signal)."""
    group_of = dict(zip(reports["report_id"], reports["group_id"]))
    signals = tuple(getattr(cfg, "signals", SIGNALS))
    with_layers = "layers" in signals and store is not None and encoder_version is not None
    features, statistics, layers, study, groups = [], [], [], [], []
    offset = 0
    for s in sets:
        present = s.view_mask > 0
        features.append(s.pooled[present])
        if "image" in signals:
            statistics.append(set_statistics(s.image_ids, s.view_mask, images)[present])
        if with_layers:
            layers.append(set_layers(s.image_ids, s.view_mask, images, store, str(encoder_version))[present])
        index = np.broadcast_to(np.arange(len(s))[:, None], present.shape)[present]
        study.append(index + offset)
        groups += [group_of[s.report_ids[i]] for i in index]
        offset += len(s)
    image_ids = {image_id for s in sets for ids in s.image_ids for image_id in ids}
    rows = images[images["image_id"].isin(image_ids)]
    return DomainGuard.fit(
        np.concatenate(features),
        np.concatenate(statistics) if statistics else None,
        np.concatenate(study),
        np.asarray(groups),
        cfg.percentile,
        cfg.explained_variance,
        modalities=rows["modality"].dropna().tolist(),
        regions=rows["location_category"].dropna().tolist(),
        max_chroma=cfg.max_chroma,
        signals=signals,
        layers=np.concatenate(layers) if layers else None,
    )


def fit_guard_for(sets: list, data_dir: Path, cfg, encoder_version: str) -> DomainGuard:
    """`domain_guard` for a model trained on `sets` from the data directory `data_dir` (its images and reports
    tables, and its feature store's rows of `encoder_version`): what training a captioner or a retriever fits."""
    from radcap.core.catalog import DataCatalog
    from radcap.core.io import read_table
    from radcap.data_contracts import IMAGES, REPORTS
    from radcap.imaging.features import FeatureStore

    catalog = DataCatalog(data_dir)
    images, reports = read_table(catalog.images, IMAGES), read_table(catalog.reports, REPORTS)
    return domain_guard(sets, images, reports, cfg, FeatureStore(catalog.features), encoder_version)
