"""The out-of-domain guard: calibration, the score on other images, the modality rule, both policies, and the
flag in every output (captions, retrieval results, the pyfunc)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radcap.domain.guard import DomainGuard, modality_family, study_scores
from tests.conftest import make_tiny_captioner, run_cli
from tests.dicom_factory import make_dicom


def test_out_of_fold_calibration_flags_about_the_percentile_and_catches_a_shifted_domain(tmp_path):
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(8, 64))

    def domain(n, shift=0.0):  # 8 latent factors in 64 channels, plus noise
        return (rng.normal(size=(n, 8)) @ basis + 0.1 * rng.normal(size=(n, 64)) + shift).astype(np.float32)

    guard = DomainGuard.fit(domain(2000), percentile=95, modalities=["CT", "MR", "CT"], regions=["Head"])
    held_out = guard.score_images(domain(2000))
    assert 0.03 < np.mean(held_out > guard.threshold) < 0.07  # ~5%, on images neither model nor threshold saw
    assert np.mean(guard.score_images(domain(500, shift=3.0)) > guard.threshold) > 0.95
    other = (rng.normal(size=(500, 64)) * 3).astype(np.float32)  # not the same structure at all
    assert np.mean(guard.score_images(other) > guard.threshold) > 0.95
    guard.save(tmp_path)
    again = DomainGuard.load(tmp_path)
    np.testing.assert_allclose(again.score_images(other), guard.score_images(other), rtol=1e-5)
    assert again.modalities == ["CT", "MR"] and again.threshold == guard.threshold
    assert DomainGuard.load(tmp_path / "nothing") is None  # a model saved before the guard


def test_the_modality_rule_flags_whatever_the_score():
    guard = DomainGuard(
        np.zeros(2, np.float32),
        np.ones(2, np.float32),
        np.eye(2, dtype=np.float32)[:1],
        np.ones(1, np.float32),
        1.0,
        10.0,
        95.0,
        ["CT", "MR"],
    )
    assert guard.judge(0.1, "MR") == (True, None) and guard.judge(0.1, None) == (True, None)
    in_domain, reason = guard.judge(0.1, "CR")
    assert not in_domain and "modality XR is not among the training modalities (CT, MR)" in reason
    assert not guard.judge(11.0, "CT")[0] and "above the threshold" in guard.judge(11.0, "CT")[1]
    assert modality_family("DX") == modality_family("cr") == modality_family("X-ray") == "XR"


def test_a_study_is_as_far_out_as_its_farthest_view():
    """Study scores from image scores: in-domain studies score below the threshold, a study with one foreign
    view scores as that view (above it), and a missing view (masked) counts for nothing, whatever it holds."""
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(4, 32))

    def images(n, shift=0.0):
        return (rng.normal(size=(n, 4)) @ basis + 0.1 * rng.normal(size=(n, 32)) + shift).astype(np.float32)

    guard = DomainGuard.fit(images(1000), percentile=95)
    inside, outside = images(2), images(2, shift=5.0)
    pooled = np.stack([inside, [inside[0], outside[0]], [inside[1], outside[1]]])
    mask = np.array([[1, 1], [1, 1], [1, 0]], np.float32)  # the third study's foreign view is a masked slot
    scores = study_scores(guard, pooled, mask)
    image_scores = guard.score_images(pooled.reshape(-1, 32)).reshape(3, 2)
    assert scores[0] == pytest.approx(image_scores[0].max()) and scores[0] < guard.threshold
    assert scores[1] == pytest.approx(image_scores[1, 1]) and scores[1] > guard.threshold
    assert scores[2] == pytest.approx(image_scores[2, 0]) and scores[2] < guard.threshold


def _pixels(folder: Path, n: int, size: int = 128) -> list[np.ndarray]:
    return [np.asarray(Image.open(f).convert("L").resize((size, size))) for f in sorted(folder.glob("*.png"))[:n]]


@pytest.fixture(scope="module")
def guarded_captioner(tmp_path_factory, shared_data: Path) -> Path:
    """The tiny captioner with a guard fitted on 96 chest X-rays' features (random:0 encoder)."""
    from radcap.imaging.encoders import resolve_encoder

    encoder = resolve_encoder("random:0")
    forward = encoder.forward_fn()
    xrays = _pixels(shared_data / "covid_cxr" / "images", 96, 224)
    pooled = np.concatenate([forward(np.stack(xrays[i : i + 32]))[0] for i in range(0, 96, 32)])
    guard = DomainGuard.fit(pooled, percentile=95, modalities=["CR"])
    return make_tiny_captioner(tmp_path_factory.mktemp("guarded") / "captioner", domain=guard)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("policy", ["flag", "withhold"])
def test_the_flag_reaches_the_captions_and_withhold_writes_no_caption(
    policy, guarded_captioner, tmp_path, shared_data, prefect_api
):
    import json

    export = tmp_path / "export"
    export.mkdir()
    for k, pixels in enumerate(_pixels(shared_data / "covid_cxr" / "images", 100)[96:]):  # X-rays it never saw
        Image.fromarray(pixels).save(export / f"xray{k}.png")
    for k, pixels in enumerate(_pixels(shared_data / "medpix2" / "images", 4)):  # CT/MR slices: another domain
        Image.fromarray(pixels).save(export / f"ct{k}.png")
    make_dicom(export / "ct-labelled-dicom", _pixels(shared_data / "covid_cxr" / "images", 1)[0], study_uid="1.2.3.9")
    from pydicom import dcmread

    ds = dcmread(export / "ct-labelled-dicom")
    ds.Modality = "CT"  # an X-ray's pixels, but the header says CT: flagged by the modality rule
    ds.save_as(export / "ct-labelled-dicom")
    out = tmp_path / "out"
    done = run_cli(
        "--json",
        "caption",
        "--input",
        str(export),
        "--out",
        str(out),
        "--model",
        str(guarded_captioner),
        env={"RADCAP_CAPTION__OOD_POLICY": policy},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    captions = pd.read_parquet(out / "captions.parquet").set_index("source_path")
    assert captions["ood_score"].notna().all() and captions["in_domain"].notna().all()
    ct = captions.loc[[f"ct{k}.png" for k in range(4)]]
    assert (~ct["in_domain"]).sum() >= 3  # CT/MR slices are unlike chest X-rays
    dicom = captions.loc["ct-labelled-dicom"]
    assert not dicom["in_domain"] and "modality CT" in dicom["ood_reason"]
    flagged = captions[~captions["in_domain"]]
    assert summary["out_of_domain_studies"] == len(flagged) >= 4
    if policy == "withhold":
        assert flagged["caption"].isna().all() and flagged["ood_reason"].str.startswith("withheld: ").all()
        assert captions.loc[captions["in_domain"], "caption"].notna().all()
    else:
        assert captions["caption"].notna().all()
    csv = pd.read_csv(out / "captions.csv")
    assert {"ood_score", "in_domain", "ood_reason"} <= set(csv.columns)


def test_tables_written_before_the_guard_still_read(tmp_path):
    """Schema evolution: a captions table without the new nullable columns reads with them null."""
    from radcap.core.io import read_table
    from radcap.data_contracts import CAPTIONS

    old = CAPTIONS.empty().drop(columns=["ood_score", "in_domain", "ood_reason"])
    old.loc[0] = [
        "s",
        "i",
        "frontal",
        "a.png",
        "0" * 64,
        "no acute disease.",
        "m",
        "1",
        "e",
        pd.Timestamp.now(tz="UTC"),
    ]
    old.to_parquet(tmp_path / "captions.parquet")
    frame = read_table(tmp_path / "captions.parquet", CAPTIONS)
    assert frame["ood_score"].isna().all() and list(frame.columns) == CAPTIONS.column_names


def test_a_colour_picture_is_not_a_radiograph(tmp_path, shared_data):
    from radcap.imaging.decode import load_image

    xray = np.asarray(Image.open(sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[0]).convert("L"))
    Image.fromarray(np.stack([xray] * 3, -1)).save(tmp_path / "gray-as-rgb.png")  # grayscale stored as RGB
    colour = np.stack([xray, np.roll(xray, 40, axis=1), 255 - xray], -1)
    Image.fromarray(colour).save(tmp_path / "colour.jpg", quality=95)
    assert load_image(tmp_path / "gray-as-rgb.png").chroma == 0.0
    chroma = load_image(tmp_path / "colour.jpg").chroma
    assert chroma > 0.2
    guard = DomainGuard(
        np.zeros(2, np.float32),
        np.ones(2, np.float32),
        np.eye(2, dtype=np.float32)[:1],
        np.ones(1, np.float32),
        1.0,
        10.0,
        95.0,
        ["XR"],
    )
    in_domain, reason = guard.judge(0.1, None, chroma)
    assert not in_domain and "colour image" in reason
    assert guard.judge(0.1, None, 0.0)[0]
    guard.max_chroma = None  # the rule off, for a collection with colour overlays
    assert guard.judge(0.1, None, chroma)[0]
