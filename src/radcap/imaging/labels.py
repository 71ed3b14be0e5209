"""Image labels for pretraining the encoder, derived from what each dataset offers.

Every label is a 'namespace:value' string. An image is *annotated* for a namespace when its source can say
yes or no for every value of it; the loss ignores (masks) the namespaces an image is not annotated for, so
datasets with different label sets train one encoder together.

* IU X-Ray: the report's MeSH major terms mapped to the 14 ChestX-ray14 observations (CheXNet's head,
  namespace `cxr14`); a report indexed only as 'normal' is annotated with all 14 negative. Reports with
  'No Indexing' are not annotated. The view (frontal/lateral) where known.
* MedPix 2.0: `modality` (CT/MR), `plane` (axial/coronal/sagittal/other) and `region` (Location Category).
* Manifests: the `labels` column ('finding:Pneumonia; view:AP'), plus view and modality columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CHESTXRAY14 = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

# MeSH major heading (text before the first '/') -> ChestX-ray14 observation. Only unambiguous headings:
# 'Opacity', 'Density' or 'Granuloma' could be several observations and are left out.
MESH_TO_CXR14 = {
    "Pulmonary Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Effusion",
    "Infiltrate": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Pulmonary Edema": "Edema",
    "Pulmonary Congestion": "Edema",  # vascular congestion counts as edema in CheXpert's rules too
    "Emphysema": "Emphysema",
    "Pulmonary Emphysema": "Emphysema",
    "Pulmonary Fibrosis": "Fibrosis",
    "Hernia, Hiatal": "Hernia",
}
NOT_INDEXED = "No Indexing"

# Namespaces whose values exclude each other (one per image): scored by top-1 accuracy.
EXCLUSIVE = ("modality", "plane", "region", "view", "finding")
PLANES = {"axial": "axial", "transverse": "axial", "coronal": "coronal", "sagittal": "sagittal"}


def mesh_to_cxr14(terms: list[str]) -> list[str] | None:
    """ChestX-ray14 labels of a report's MeSH terms; None when the report was not indexed."""
    heads = {t.split("/")[0].strip() for t in terms if t and t.strip()}
    if not heads or heads == {NOT_INDEXED}:
        return None
    found = set()
    for term in terms:
        parts = [p.strip() for p in term.split("/")]
        label = MESH_TO_CXR14.get(parts[0])
        if label:
            found.add(label)
        elif parts[0] == "Thickening" and any(p.lower().startswith("pleura") for p in parts[1:]):
            found.add("Pleural_Thickening")
    return sorted(found)


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value).strip() != ""


def image_labels(image: dict, report: dict | None) -> list[str]:
    """All 'namespace:value' labels of one image row (IMAGES contract), given its report row."""
    given = image.get("labels")  # an array from Parquet: no truth value
    labels = set(given if given is not None else [])
    dataset = image["dataset"]
    if image.get("view") in ("frontal", "lateral"):
        labels.add(f"view:{image['view']}")
    if dataset == "iu-xray" and report is not None:
        mesh = report.get("mesh")
        cxr14 = mesh_to_cxr14(list(mesh if mesh is not None else []))
        if cxr14 is not None:
            labels.update(f"cxr14:{label}" for label in cxr14)
            labels.add("cxr14:*")  # marks the image as annotated for cxr14 even when all are negative
    if _present(image.get("modality")):
        labels.add(f"modality:{str(image['modality']).strip()}")
    if dataset == "medpix2":
        if _present(image.get("plane")):
            labels.add(f"plane:{PLANES.get(str(image['plane']).strip().lower(), 'other')}")
        if _present(image.get("location_category")):
            labels.add(f"region:{str(image['location_category']).strip()}")
    return sorted(labels)


def labelled_images(images: pd.DataFrame, reports: pd.DataFrame) -> pd.DataFrame:
    """LABELLED_IMAGES rows: images that exist on disk and carry at least one label namespace."""
    report_of = {r["report_id"]: r for r in reports.to_dict("records")}
    rows = []
    for image in images.to_dict("records"):
        if not _present(image.get("path")):
            continue
        report = report_of.get(image["report_id"])
        labels = image_labels(image, report)
        namespaces = sorted({label.split(":", 1)[0] for label in labels})
        if namespaces:
            rows.append(
                {
                    "image_id": image["image_id"],
                    "path": image["path"],
                    "split": image["split"],
                    "group_id": str((report or {}).get("group_id") or image["report_id"]),  # patient / case
                    "labels": [label for label in labels if label != "cxr14:*"],
                    "namespaces": namespaces,
                }
            )
    return pd.DataFrame(rows, columns=["image_id", "path", "split", "group_id", "labels", "namespaces"])


@dataclass(frozen=True)
class LabelSpace:
    """The encoder's output units: one sigmoid per label, each belonging to a namespace."""

    labels: tuple[str, ...]

    @classmethod
    def fit(cls, train: pd.DataFrame, min_count: int = 5) -> LabelSpace:
        """Labels with at least `min_count` positive training images; an exclusive namespace needs two values."""
        counts = pd.Series([label for labels in train["labels"] for label in labels], dtype=object).value_counts()
        kept = sorted(label for label, n in counts.items() if n >= min_count)
        by_namespace: dict[str, list[str]] = {}
        for label in kept:
            by_namespace.setdefault(label.split(":", 1)[0], []).append(label)
        final = [
            label
            for namespace, labels in by_namespace.items()
            for label in labels
            if namespace not in EXCLUSIVE or len(labels) >= 2
        ]
        return cls(tuple(sorted(final)))

    @property
    def namespaces(self) -> list[str]:
        return sorted({label.split(":", 1)[0] for label in self.labels})

    def namespace_of(self) -> np.ndarray:
        return np.array([label.split(":", 1)[0] for label in self.labels])

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(targets, mask), both (N, K) float32: mask is 1 where the image is annotated for the unit's namespace."""
        index = {label: k for k, label in enumerate(self.labels)}
        owner = self.namespace_of()
        targets = np.zeros((len(frame), len(self.labels)), np.float32)
        mask = np.zeros_like(targets)
        for i, (labels, namespaces) in enumerate(zip(frame["labels"], frame["namespaces"])):
            mask[i] = np.isin(owner, list(namespaces))
            for label in labels:
                if label in index:
                    targets[i, index[label]] = 1.0
        return targets, mask

    def class_weights(self, targets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CheXNet's weighting, per unit over annotated images: positives weigh |N|/|all|, negatives |P|/|all|."""
        annotated = mask.sum(axis=0).clip(min=1.0)
        positives = (targets * mask).sum(axis=0)
        negatives = annotated - positives
        return (negatives / annotated).astype(np.float32), (positives / annotated).astype(np.float32)

    def to_json(self) -> dict:
        return {"labels": list(self.labels), "namespaces": self.namespaces, "exclusive": list(EXCLUSIVE)}
