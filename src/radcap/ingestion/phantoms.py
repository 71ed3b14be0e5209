"""The embedded default dataset: synthetic chest radiograph phantoms whose visible features match their reports.

Each study draws a few findings (cardiomegaly, pleural effusion, lung nodule, pneumothorax, consolidation),
renders a frontal and a lateral phantom in which those findings are visible, and writes a report in the
Open-i XML layout (with IU's `XXXX` de-identification placeholders and MeSH major terms) plus the
projections CSV. So the whole pipeline can run, and learn something real, on a machine with no data.
Images are oriented like radiographs: the patient's left is on the image's right.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lxml import etree
from PIL import Image, ImageFilter

from radcap.core.settings import SampleSettings

SIDES = ("right", "left")
ZONES = ("upper", "lower")


@dataclass(frozen=True)
class Findings:
    cardiomegaly: bool
    effusion: str | None  # right, left, bilateral
    nodule: tuple[str, str] | None  # (side, zone)
    pneumothorax: str | None
    consolidation: tuple[str, str] | None

    @property
    def normal(self) -> bool:
        return not (self.cardiomegaly or self.effusion or self.nodule or self.pneumothorax or self.consolidation)


def draw_findings(rng: np.random.Generator) -> Findings:
    def maybe(p: float, choices: list) -> Any:
        return choices[rng.integers(len(choices))] if rng.random() < p else None

    lobes = [(s, z) for s in SIDES for z in ZONES]
    return Findings(
        cardiomegaly=bool(rng.random() < 0.3),
        effusion=maybe(0.25, ["right", "left", "bilateral"]),
        nodule=maybe(0.2, lobes),
        pneumothorax=maybe(0.12, list(SIDES)),
        consolidation=maybe(0.2, lobes),
    )


# ---------------------------------------------------------------- images


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _lung_geometry(side: str, n: int) -> tuple[float, float, float, float]:
    """(cy, cx, ry, rx) of a lung field; patient's right lung is on the image's left."""
    cx = 0.33 * n if side == "right" else 0.67 * n
    return 0.47 * n, cx, 0.28 * n, 0.13 * n


def render_frontal(f: Findings, n: int, rng: np.random.Generator) -> np.ndarray:
    img = np.full((n, n), 0.08)
    img[_ellipse(n, n, 0.55 * n, 0.5 * n, 0.5 * n, 0.42 * n)] = 0.55  # soft tissue
    lungs = {}
    for side in SIDES:
        lungs[side] = _ellipse(n, n, *_lung_geometry(side, n))
        img[lungs[side]] = 0.22
    # lung markings: faint vessels, so that a pneumothorax (no markings) is visible
    texture = rng.normal(0.0, 0.035, (n, n))
    for side in SIDES:
        if f.pneumothorax == side:
            cy, cx, ry, rx = _lung_geometry(side, n)
            collapsed = _ellipse(n, n, cy + 0.04 * n, cx + (0.03 if side == "right" else -0.03) * n, ry * 0.7, rx * 0.6)
            img[lungs[side] & ~collapsed] = 0.05  # air, no markings
            lungs[side] = collapsed
            img[collapsed] = 0.26
    for side in SIDES:
        img[lungs[side]] += texture[lungs[side]]
    img[:, int(0.47 * n) : int(0.53 * n)] = np.maximum(img[:, int(0.47 * n) : int(0.53 * n)], 0.7)  # spine
    heart_rx = (0.19 if f.cardiomegaly else 0.12) * n
    img[_ellipse(n, n, 0.63 * n, 0.55 * n, 0.13 * n, heart_rx)] = 0.62
    y = np.arange(n)[:, None]
    if f.effusion:
        for side in SIDES if f.effusion == "bilateral" else (f.effusion,):
            cy, cx, ry, rx = _lung_geometry(side, n)
            level = cy + ry * 0.35  # fluid fills the base, with a meniscus towards the lateral wall
            x = np.arange(n)[None, :]
            lateral = (cx - x) if side == "right" else (x - cx)
            meniscus = level - 0.25 * np.clip(lateral, 0, None)
            img[_ellipse(n, n, cy, cx, ry, rx) & (y >= meniscus)] = 0.6
    for finding, radius, value in ((f.nodule, 0.035, 0.75), (f.consolidation, 0.09, 0.48)):
        if finding:
            side, zone = finding
            cy, cx, ry, _ = _lung_geometry(side, n)
            cy += (-0.45 if zone == "upper" else 0.3) * ry
            blob = _ellipse(n, n, cy, cx, radius * n, radius * n * 1.3)
            img[blob] = value + rng.normal(0, 0.03, int(blob.sum()))
    return img


def render_lateral(f: Findings, n: int, rng: np.random.Generator) -> np.ndarray:
    img = np.full((n, n), 0.08)
    img[_ellipse(n, n, 0.55 * n, 0.5 * n, 0.48 * n, 0.34 * n)] = 0.55
    lung = _ellipse(n, n, 0.47 * n, 0.5 * n, 0.3 * n, 0.22 * n)
    img[lung] = 0.24 + rng.normal(0, 0.035, int(lung.sum()))
    img[_ellipse(n, n, 0.62 * n, 0.42 * n, 0.14 * n, (0.16 if f.cardiomegaly else 0.1) * n)] = 0.62
    img[:, int(0.78 * n) : int(0.84 * n)] = 0.7  # spine, posterior
    if f.effusion:  # posterior costophrenic sulcus fills first
        y, x = np.ogrid[:n, :n]
        img[lung & (y > 0.68 * n - 0.3 * (x - 0.5 * n).clip(0))] = 0.6
    return img


def to_png(img: np.ndarray, path: Path, rng: np.random.Generator) -> None:
    img = img + rng.normal(0, 0.02, img.shape)
    pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").filter(ImageFilter.GaussianBlur(1.2)).save(path, optimize=True)


# ---------------------------------------------------------------- reports


def _side(side: str) -> str:
    return "bilateral" if side == "bilateral" else side


def findings_text(f: Findings, rng: np.random.Generator) -> str:
    sentences = [
        "The heart is enlarged."
        if f.cardiomegaly
        else rng.choice(
            [
                "The heart size is normal.",
                "Heart size within normal limits.",
                "The cardiomediastinal silhouette is normal.",
            ]
        )
    ]
    if f.consolidation:
        sentences.append(f"There is focal consolidation in the {f.consolidation[0]} {f.consolidation[1]} lobe.")
    elif not f.nodule:
        sentences.append(rng.choice(["The lungs are clear.", "No focal airspace disease."]))
    if f.nodule:
        sentences.append(f"There is a nodule in the {f.nodule[0]} {f.nodule[1]} lobe.")
    if f.effusion == "bilateral":
        sentences.append("There are bilateral pleural effusions.")
    elif f.effusion:
        sentences.append(f"There is a {f.effusion} pleural effusion.")
    else:
        sentences.append("No pleural effusion.")
    sentences.append(f"There is a {f.pneumothorax} pneumothorax." if f.pneumothorax else "No pneumothorax.")
    return " ".join(str(s) for s in sentences)


def impression_text(f: Findings) -> str:
    if f.normal:
        return "No acute cardiopulmonary abnormality."
    items = []
    if f.pneumothorax:
        items.append(f"{f.pneumothorax.capitalize()} pneumothorax.")
    if f.effusion:
        items.append(
            "Bilateral pleural effusions."
            if f.effusion == "bilateral"
            else f"{f.effusion.capitalize()} pleural effusion."
        )
    if f.consolidation:
        items.append(f"{f.consolidation[0].capitalize()} {f.consolidation[1]} lobe consolidation.")
    if f.nodule:
        items.append(f"{f.nodule[0].capitalize()} {f.nodule[1]} lobe nodule.")
    if f.cardiomegaly:
        items.append("Cardiomegaly.")
    if len(items) == 1:
        return items[0]
    return " ".join(f"{i}. {item}" for i, item in enumerate(items, start=1))  # IU-style numbered list


def mesh_terms(f: Findings) -> list[str]:
    terms = []
    if f.cardiomegaly:
        terms.append("Cardiomegaly")
    if f.effusion:
        terms.append(f"Pleural Effusion/{_side(f.effusion)}")
    if f.nodule:
        terms.append(f"Nodule/lung/{f.nodule[1]} lobe/{f.nodule[0]}")
    if f.pneumothorax:
        terms.append(f"Pneumothorax/{f.pneumothorax}")
    if f.consolidation:
        terms.append(f"Consolidation/lung/{f.consolidation[1]} lobe/{f.consolidation[0]}")
    return terms or ["normal"]


def report_xml(uid: int, f: Findings, image_ids: list[str], rng: np.random.Generator) -> bytes:
    root = etree.Element("eCitation")
    etree.SubElement(root, "meta", type="rr")
    etree.SubElement(root, "uId", id=f"CXR{uid}")
    etree.SubElement(root, "docSource").text = "RADCAP-PHANTOM"
    etree.SubElement(root, "licenseType").text = "synthetic"
    article = etree.SubElement(etree.SubElement(root, "MedlineCitation"), "Article")
    etree.SubElement(article, "ArticleTitle").text = "radcap synthetic chest radiograph phantoms"
    abstract = etree.SubElement(article, "Abstract")
    sections = {
        "COMPARISON": "None.",
        "INDICATION": str(
            rng.choice(["XXXX-year-old with cough.", "Chest pain.", "Shortness of breath.", "Preop exam."])
        ),
        "FINDINGS": findings_text(f, rng),
        "IMPRESSION": impression_text(f),
    }
    for label, text in sections.items():
        etree.SubElement(abstract, "AbstractText", Label=label).text = text
    mesh = etree.SubElement(root, "MeSH")
    for term in mesh_terms(f):
        etree.SubElement(mesh, "major").text = term
    for number, image_id in enumerate(image_ids, start=1):
        parent = etree.SubElement(root, "parentImage", id=image_id)
        etree.SubElement(parent, "figureId").text = f"F{number}"
        etree.SubElement(parent, "caption").text = "Xray Chest PA and Lateral"
    return etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True)


def write_sample(out: Path, cfg: SampleSettings) -> dict:
    """Write `out/ecgen-radiology/*.xml`, `out/images/*.png`, `out/indiana_projections.csv` atomically."""
    rng = np.random.default_rng(cfg.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "ecgen-radiology").mkdir()
        (staging / "images").mkdir()
        projections = []
        for uid in range(1, cfg.studies + 1):
            f = draw_findings(rng)
            ids = {view: f"CXR{uid}_IM-{uid:04d}-{code}" for view, code in (("Frontal", "1001"), ("Lateral", "2001"))}
            to_png(render_frontal(f, cfg.image_size, rng), staging / "images" / f"{ids['Frontal']}.png", rng)
            to_png(render_lateral(f, cfg.image_size, rng), staging / "images" / f"{ids['Lateral']}.png", rng)
            (staging / "ecgen-radiology" / f"{uid}.xml").write_bytes(report_xml(uid, f, list(ids.values()), rng))
            projections += [(uid, f"{i.removeprefix('CXR')}.dcm.png", view) for view, i in ids.items()]
        with open(staging / "indiana_projections.csv", "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([("uid", "filename", "projection"), *projections])
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"studies": cfg.studies, "images": 2 * cfg.studies, "path": str(out)}


def write_pacs_export(sample: Path, out: Path, studies: int, start_uid: int = 10_000) -> dict:
    """A PACS-like export of `studies` new phantom studies (not in the sample the models learn from):
    nested `STUDYn/SERIESm/IMn` DICOM files without extensions, frontal (PA) and lateral (LL) views sharing a
    StudyInstanceUID, and synthetic patient attributes that `radcap caption` must keep out of its outputs."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rng = np.random.default_rng(start_uid)
    size = int(np.asarray(Image.open(next((sample / "images").glob("*.png")))).shape[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for n in range(studies):
            f = draw_findings(rng)
            study_uid = generate_uid(entropy_srcs=["radcap-demo-study", str(start_uid + n)])
            for series, (view, render) in enumerate((("PA", render_frontal), ("LL", render_lateral)), start=1):
                png = staging / "render.png"
                to_png(render(f, size, rng), png, rng)
                pixels = np.asarray(Image.open(png).convert("L"))
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
                meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[study_uid, view])
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                path = staging / f"STUDY{n + 1}" / f"SERIES{series}" / f"IM{series}"
                path.parent.mkdir(parents=True, exist_ok=True)
                ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
                ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
                ds.StudyInstanceUID, ds.SeriesInstanceUID = (
                    study_uid,
                    generate_uid(entropy_srcs=[study_uid, str(series)]),
                )
                ds.Modality, ds.ViewPosition = "CR", view
                ds.PatientName, ds.PatientID, ds.PatientBirthDate = (
                    f"Phantom^Demo{n + 1}",
                    f"DEMO-{n + 1:04d}",
                    "19700101",
                )
                ds.Rows, ds.Columns = pixels.shape
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
                ds.PixelData = pixels.tobytes()
                pydicom.dcmwrite(path, ds, enforce_file_format=True)
            png.unlink()
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"studies": studies, "images": 2 * studies, "path": str(out)}
