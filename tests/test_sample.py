"""The embedded default: deterministic, and what each report says is visible in its image."""

from __future__ import annotations

import numpy as np
from PIL import Image

from radcap.core.settings import SampleSettings, TextRules
from radcap.ingestion.iu import read_iu_xml
from radcap.ingestion.phantoms import Findings, impression_text, mesh_terms, render_frontal, write_sample


def _lung_mean(img: np.ndarray, side: str, rows: slice) -> float:
    n = img.shape[0]
    cols = slice(int(0.25 * n), int(0.38 * n)) if side == "right" else slice(int(0.62 * n), int(0.75 * n))
    return float(img[rows, cols].mean())


def test_findings_are_visible():
    rng = np.random.default_rng(0)
    n = 128
    normal = Findings(False, None, None, None, None)
    base = render_frontal(normal, n, rng)
    effusion = render_frontal(Findings(False, "left", None, None, None), n, rng)
    lower = slice(int(0.62 * n), int(0.72 * n))
    assert _lung_mean(effusion, "left", lower) > _lung_mean(base, "left", lower) + 0.2
    assert abs(_lung_mean(effusion, "right", lower) - _lung_mean(base, "right", lower)) < 0.05
    big_heart = render_frontal(Findings(True, None, None, None, None), n, rng)
    row = int(0.63 * n)
    assert (big_heart[row] > 0.58).sum() > (base[row] > 0.58).sum() + 0.1 * n
    ptx = render_frontal(Findings(False, None, None, "right", None), n, rng)
    air = ptx[int(0.35 * n) : int(0.45 * n), int(0.22 * n) : int(0.27 * n)]  # lateral right lung: air, no markings
    assert air.mean() < 0.1 and air.std() < 0.01


def test_report_text_matches_findings():
    f = Findings(True, "right", None, None, ("left", "lower"))
    assert impression_text(f) == "1. Right pleural effusion. 2. Left lower lobe consolidation. 3. Cardiomegaly."
    assert mesh_terms(f) == ["Cardiomegaly", "Pleural Effusion/right", "Consolidation/lung/lower lobe/left"]
    assert impression_text(Findings(False, None, None, None, None)) == "No acute cardiopulmonary abnormality."


def test_sample_is_deterministic_and_ingestible(tmp_path):
    cfg = SampleSettings(studies=6, image_size=64, seed=3)
    a, b = tmp_path / "a", tmp_path / "b"
    write_sample(a, cfg)
    write_sample(b, cfg)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 6 + 12 + 1
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    parsed = read_iu_xml(a / "ecgen-radiology", TextRules(), a / "images", a / "indiana_projections.csv")
    assert len(parsed.reports) == 6 and not parsed.rejects
    assert {i["view"] for i in parsed.images} == {"frontal", "lateral"}
    assert all(i["path"] for i in parsed.images)
    assert Image.open(parsed.images[0]["path"]).size == (64, 64)
