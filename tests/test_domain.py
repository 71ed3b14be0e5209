"""The out-of-domain guard: calibration, the score on other images, the modality rule, both policies, and the
flag in every output (captions, retrieval results, the pyfunc)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radcap import read_captions
from radcap.domain.guard import Density, DomainGuard, modality_family, study_scores, study_signal_scores
from tests.conftest import make_tiny_captioner, run_cli_here
from tests.dicom_factory import make_dicom


def fit(features, statistics=None, study=None, groups=None, **options) -> DomainGuard:
    """A guard fitted on images that are each their own study and group unless told otherwise."""
    study = np.arange(len(features)) if study is None else study
    return DomainGuard.fit(features, statistics, study, study if groups is None else groups, **options)


def latent(rng, n, dim=64, factors=8, shift=0.0, basis=None):
    """n vectors with `factors` latent factors in `dim` channels, plus noise (a structured domain)."""
    basis = rng.normal(size=(factors, dim)) if basis is None else basis
    return (rng.normal(size=(n, len(basis))) @ basis + 0.1 * rng.normal(size=(n, dim)) + shift).astype(np.float32)


def test_out_of_fold_calibration_flags_about_the_percentile_and_catches_a_shifted_domain(tmp_path):
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(8, 64))
    guard = fit(latent(rng, 2000, basis=basis), percentile=95, modalities=["CT", "MR", "CT"], regions=["Head"])
    held_out = guard.score_images(latent(rng, 2000, basis=basis))
    assert 0.03 < np.mean(held_out > guard.threshold) < 0.07  # ~5%, on images neither model nor threshold saw
    assert np.mean(guard.score_images(latent(rng, 500, basis=basis, shift=3.0)) > guard.threshold) > 0.95
    other = (rng.normal(size=(500, 64)) * 3).astype(np.float32)  # not the same structure at all
    assert np.mean(guard.score_images(other) > guard.threshold) > 0.95
    guard.save(tmp_path)
    again = DomainGuard.load(tmp_path)
    np.testing.assert_allclose(again.score_images(other), guard.score_images(other), rtol=1e-5)
    assert again.modalities == ["CT", "MR"] and again.threshold == guard.threshold
    assert DomainGuard.load(tmp_path / "nothing") is None  # a model saved before the guard


def test_two_view_studies_are_flagged_at_the_percentile_not_at_twice_it():
    """A study is judged by its worst view, so the threshold is calibrated on study scores: with a per-image
    threshold 1 - 0.95² ≈ 9.75% of in-domain two-view studies would be flagged."""
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(8, 64))
    studies = 1500
    images = latent(rng, 2 * studies, basis=basis)  # views independent given the domain: the hard case
    study = np.repeat(np.arange(studies), 2)
    guard = fit(images, study=study, signals=("features",))
    assert guard.calibration["per"] == "study" and guard.calibration["multi_view_studies"] == studies
    assert 0.03 < guard.calibration["multi_view_flagged"] < 0.07
    held_out = latent(rng, 4000, basis=basis).reshape(2000, 2, 64)
    scores = study_scores(guard, held_out, np.ones((2000, 2), np.float32))
    assert 0.03 < np.mean(scores > guard.threshold) < 0.07
    per_image = fit(images, signals=("features",))  # the same images calibrated one by one
    assert np.mean(study_scores(per_image, held_out, np.ones((2000, 2), np.float32)) > per_image.threshold) > 0.08


def test_pixel_statistics_catch_what_the_features_do_not_see():
    """Intruders whose features are in domain (an encoder that maps them among its training images) but whose
    pixels are not: the image signal flags them, the features alone flag only their usual ~5%, and the combined
    score still flags about 5% of in-domain studies."""
    rng = np.random.default_rng(4)
    basis, pixel_basis = rng.normal(size=(8, 64)), rng.normal(size=(4, 30))
    train = latent(rng, 1500, basis=basis), latent(rng, 1500, dim=30, factors=4, basis=pixel_basis)
    guard = fit(*train)
    assert set(guard.densities) == {"features", "image"}
    inside = latent(rng, 1000, basis=basis), latent(rng, 1000, dim=30, factors=4, basis=pixel_basis)
    intruders = latent(rng, 500, basis=basis), latent(rng, 500, dim=30, factors=4, basis=pixel_basis, shift=2.0)
    assert 0.03 < np.mean(guard.score_images(*inside) > guard.threshold) < 0.08
    assert np.mean(guard.score_images(*intruders) > guard.threshold) > 0.95
    mask = np.ones((500, 1), np.float32)
    alone = study_signal_scores(guard, intruders[0][:, None], mask, intruders[1][:, None])
    assert np.mean(alone["features"] > 1.0) < 0.1 and np.mean(alone["image"] > 1.0) > 0.95
    with pytest.raises(ValueError, match="pixel statistics"):
        guard.score_images(intruders[0])  # a path that forgot the statistics fails, never judges on half
    unknown = np.full_like(intruders[1], np.nan)  # statistics not computable (features given directly)
    by_features = guard.signal_scores(*intruders)["features"]
    np.testing.assert_allclose(guard.score_images(intruders[0], unknown), by_features, rtol=1e-6)


def test_early_layers_catch_what_the_last_layer_and_the_pixels_do_not(tmp_path):
    """Intruders whose pooled features and pixel statistics are in domain but whose early-layer statistics are
    not (an encoder whose last layer maps them among its training images): the layers signal flags them, the
    other two alone flag their usual ~5%; the guard saved and loaded judges the same; a path that gives no
    early-layer statistics (an optimized build from before them) is refused, never judged on the other signals."""
    from radcap.core.errors import RadcapError

    rng = np.random.default_rng(7)
    bases = rng.normal(size=(8, 64)), rng.normal(size=(4, 30)), rng.normal(size=(6, 48))

    def sample(n, layer_shift=0.0):
        return (
            latent(rng, n, basis=bases[0]),
            latent(rng, n, dim=30, factors=4, basis=bases[1]),
            latent(rng, n, dim=48, factors=6, basis=bases[2], shift=layer_shift),
        )

    pooled, statistics, layers = sample(1500)
    guard = fit(pooled, statistics, layers=layers)
    assert set(guard.densities) == {"features", "layers", "image"} and guard.needs_layers
    inside, intruders = sample(1000), sample(500, layer_shift=2.0)
    assert 0.03 < np.mean(guard.score_images(*inside) > guard.threshold) < 0.08
    assert np.mean(guard.score_images(*intruders) > guard.threshold) > 0.95
    mask = np.ones((500, 1), np.float32)
    alone = study_signal_scores(guard, intruders[0][:, None], mask, intruders[1][:, None], intruders[2][:, None])
    assert np.mean(alone["layers"] > 1.0) > 0.95
    assert np.mean(alone["features"] > 1.0) < 0.1 and np.mean(alone["image"] > 1.0) < 0.1
    guard.save(tmp_path)
    again = DomainGuard.load(tmp_path)
    assert again is not None and again.needs_layers
    np.testing.assert_allclose(again.score_images(*intruders), guard.score_images(*intruders), rtol=1e-5)
    with pytest.raises(RadcapError, match="optimize-encoder"):
        guard.score_images(*intruders[:2])
    without = fit(pooled, statistics, layers=layers, signals=("features", "image"))
    assert set(without.densities) == {"features", "image"}  # `domain.signals` leaves the layers out
    assert np.mean(without.score_images(*intruders[:2]) > without.threshold) < 0.1


def test_one_signal_far_outside_is_enough_when_the_others_are_in_domain(tmp_path):
    """Surprise keeps growing past the highest training score (an exponential tail), so an image that one signal
    sees far outside and the others see inside is flagged by the sum of three; a guard saved before the tail
    (format 2) loads and judges with the empirical p alone, as it was calibrated."""
    import json

    from radcap.domain.guard import surprise

    reference = np.sort(np.random.default_rng(8).gamma(2.0, 1.0, 1000))
    far = surprise(np.array([reference[-1], 2 * reference[-1], 4 * reference[-1]]), reference)
    assert far[0] < far[1] < far[2] and far[1] > np.log(1001)  # the empirical p stops at 1/(n+1)
    capped = surprise(np.array([2 * reference[-1], 4 * reference[-1]]), reference, tail=False)
    np.testing.assert_allclose(capped, np.log(1001))

    rng = np.random.default_rng(9)
    bases = rng.normal(size=(8, 64)), rng.normal(size=(4, 30)), rng.normal(size=(6, 48))
    train = [latent(rng, 1500, dim=b.shape[1], factors=len(b), basis=b) for b in bases]
    guard = fit(train[0], train[1], layers=train[2])
    intruders = [latent(rng, 200, dim=b.shape[1], factors=len(b), basis=b) for b in bases]
    intruders[1] = intruders[1] + 12.0  # pixels far outside, features and early layers inside (the phantoms)
    assert np.mean(guard.score_images(*intruders) > guard.threshold) > 0.95
    guard.save(tmp_path)
    meta = json.loads((tmp_path / "domain.json").read_text())
    assert meta["format"] == 3 and meta["tail"] is True
    meta.pop("tail")
    (tmp_path / "domain.json").write_text(json.dumps({**meta, "format": 2}))
    old = DomainGuard.load(tmp_path)
    assert old is not None and old.tail is False
    assert np.all(old.signal_scores(*intruders)["image"] <= np.log(len(old.references["image"]) + 1) + 1e-9)


def test_a_guard_saved_by_radcap_0_2_loads_and_judges_as_it_did(tmp_path):
    """Format 1 (pooled features only, a per-image threshold): no pixel statistics needed, the same scores."""
    import json

    rng = np.random.default_rng(5)
    pooled = rng.normal(size=(20, 6)).astype(np.float32)
    mean, std = pooled.mean(0), pooled.std(0)
    components = np.linalg.svd((pooled - mean) / std, full_matrices=False)[2][:2].astype(np.float32)
    np.savez(tmp_path / "domain.npz", mean=mean, std=std, components=components, variances=np.ones(2, np.float32))
    meta = {"threshold": 1.5, "percentile": 95.0, "residual_variance": 0.5, "modalities": ["XR"], "regions": []}
    (tmp_path / "domain.json").write_text(json.dumps(meta | {"calibration_images": 20, "components": 2}))
    guard = DomainGuard.load(tmp_path)
    assert guard is not None and not guard.needs_statistics and guard.calibration["per"] == "image"
    z = (pooled[:3] - mean) / std
    inside = ((z @ components.T) ** 2).sum(1)
    outside = ((z - z @ components.T @ components) ** 2).sum(1) / 0.5
    np.testing.assert_allclose(guard.score_images(pooled[:3]), np.sqrt((inside + outside) / 6), rtol=1e-5)
    assert "percentile of the training images' scores" in guard.judge(9.0)[1]


def one_signal_guard(threshold: float = 10.0, modalities=("CT", "MR")) -> DomainGuard:
    density = Density(
        np.zeros(2, np.float32), np.ones(2, np.float32), np.eye(2, dtype=np.float32)[:1], np.ones(1, np.float32), 1.0
    )
    return DomainGuard(
        {"features": density}, {"features": 1.0}, threshold, 95.0, list(modalities), [], {"per": "study"}
    )


def test_the_modality_rule_flags_whatever_the_score():
    guard = one_signal_guard()
    assert guard.judge(0.1, "MR") == (True, None) and guard.judge(0.1, None) == (True, None)
    in_domain, reason = guard.judge(0.1, "CR")
    assert not in_domain and "modality XR is not among the training modalities (CT, MR)" in reason
    assert not guard.judge(11.0, "CT")[0]
    assert "above the threshold 10.00 (the 95th percentile of the training studies' scores" in guard.judge(11.0)[1]
    assert modality_family("DX") == modality_family("cr") == modality_family("X-ray") == "XR"


def test_a_study_is_as_far_out_as_its_farthest_view():
    """Study scores from image scores: in-domain studies score below the threshold, a study with one foreign
    view scores as that view (above it), and a missing view (masked) counts for nothing, whatever it holds."""
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(4, 32))
    guard = fit(latent(rng, 1000, dim=32, factors=4, basis=basis), percentile=95)
    inside, outside = latent(rng, 2, dim=32, basis=basis), latent(rng, 2, dim=32, basis=basis, shift=5.0)
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
    """The tiny captioner with a guard fitted on 96 chest X-rays (random:0 encoder features and early-layer
    statistics, and the pixel statistics of the 128-pixel files the test exports)."""
    from radcap.imaging.encoders import resolve_encoder
    from radcap.imaging.statistics import image_statistics

    encoder = resolve_encoder("random:0")
    forward = encoder.forward_fn()
    xrays = _pixels(shared_data / "covid_cxr" / "images", 96, 224)
    outputs = [forward(np.stack(xrays[i : i + 32])) for i in range(0, 96, 32)]
    pooled, layers = np.concatenate([o[0] for o in outputs]), np.concatenate([o[2] for o in outputs])
    statistics = np.stack([image_statistics(x / 255.0) for x in _pixels(shared_data / "covid_cxr" / "images", 96)])
    guard = fit(pooled, statistics, percentile=95, modalities=["CR"], layers=layers)
    assert set(guard.densities) == {"features", "layers", "image"}
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
    done = run_cli_here(
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
    captions = read_captions(out).set_index("source_path")
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
        same_verdict_everywhere(guarded_captioner, export, captions)
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
    guard = one_signal_guard(modalities=["XR"])
    in_domain, reason = guard.judge(0.1, None, chroma)
    assert not in_domain and "colour image" in reason
    assert guard.judge(0.1, None, 0.0)[0]
    guard.max_chroma = None  # the rule off, for a collection with colour overlays
    assert guard.judge(0.1, None, chroma)[0]


def same_verdict_everywhere(captioner: Path, export: Path, captions: pd.DataFrame) -> None:
    """The REST endpoint's model (the pyfunc) and the page's reader judge a study as bulk captioning did: the
    same score (features, early layers and pixel statistics) and verdict, for in- and out-of-domain files alike."""
    from types import SimpleNamespace

    from radcap.captioning.bundle import load_bundle
    from radcap.registry.store import LoadedModel
    from radcap.serving.pyfunc_captioner import RadcapCaptioner
    from radcap.serving.study import StudyReader

    names = ["xray0.png", "xray1.png", "ct0.png", "ct1.png"]
    assert captions.loc[names, "in_domain"].nunique() == 2  # both verdicts among them, or this proves little
    pyfunc = RadcapCaptioner()
    pyfunc.load_context(SimpleNamespace(artifacts={"captioner": str(captioner)}))
    served = pyfunc.predict(None, pd.DataFrame({"image_path": [str(export / n) for n in names], "study_id": names}))
    reader = StudyReader(LoadedModel(load_bundle(captioner), str(captioner), "local"))
    for name, row in zip(names, served.itertuples()):
        page = reader.generate([(name, (export / name).read_bytes())])
        assert row.in_domain == page.in_domain == captions.loc[name, "in_domain"], name
        assert row.ood_score == pytest.approx(captions.loc[name, "ood_score"], rel=1e-4), name
        assert page.ood_score == pytest.approx(captions.loc[name, "ood_score"], rel=1e-4), name


@pytest.mark.slow
@pytest.mark.realdata
def test_chest_xrays_are_flagged_for_a_medpix_model_whose_encoder_never_saw_one(
    tmp_path_factory, shared_data: Path, prefect_api
):
    """The issue's user: MedPix alone. An encoder pretrained on 120 MedPix CT/MR training images only, a tiny
    captioner trained on their features, then `caption_flow` on real chest X-ray PNGs and on MedPix dev images no
    step saw: the X-rays are flagged far more often than the MedPix images."""
    import json

    from radcap.core.settings import get_settings
    from radcap.flows.caption import caption_flow
    from radcap.flows.features import extract_features_flow
    from radcap.flows.ingest import ingest_reports
    from radcap.flows.pretrain import pretrain_encoder_flow
    from radcap.flows.train import train_flow

    root = tmp_path_factory.mktemp("medpix-only")
    medpix = shared_data / "medpix2"
    rows = [json.loads(line) for line in (medpix / "descriptions_train.jsonl").read_text().splitlines()][::12][:120]
    manifest = pd.DataFrame(
        {
            "image": [str(medpix / "images" / f"{r['image']}.png") for r in rows],
            "caption": [r["Description"]["Caption"] or "no caption." for r in rows],
            "patient_id": [r["U_id"] for r in rows],
            "modality": [r["Type"] for r in rows],
            "labels": [f"modality:{r['Type']};region:{r['Location Category']}" for r in rows],
            "split": "train",
        }
    )
    manifest.to_csv(root / "manifest.csv", index=False)
    data = root / "data"
    ingest_reports("manifest", root / "manifest.csv", data)
    settings = get_settings()
    encoder_cfg = settings.encoder.model_copy(
        update={
            "epochs": 1,
            "pretrain_size": 64,
            "pretrain_batch_size": 8,
            "min_label_count": 2,
            "registered_name": "radcap-encoder-medpix-only-test",
        }
    )
    encoder = pretrain_encoder_flow([data], root / "encoder", encoder_cfg)["registered"]
    version = extract_features_flow(data, encoder, 32)["encoder_version"]
    captioner_cfg = settings.captioner.model_copy(
        update={
            "architecture": "show-tell",
            "units": 16,
            "embed_dim": 8,
            "epochs": 1,
            "min_epochs": 1,
            "beam_width": 1,
            "registered_name": "radcap-captioner-medpix-only-test",
        }
    )
    trained = train_flow(data, root / "captioner", captioner_cfg, version)
    bundle = root / "captioner" / "captioner"
    assert trained["registered"] and (bundle / "domain.json").exists()

    xrays, dev = root / "xrays", root / "medpix-dev"
    xrays.mkdir()
    dev.mkdir()
    for path in sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[:40]:
        (xrays / path.name).write_bytes(path.read_bytes())
    dev_rows = [json.loads(line) for line in (medpix / "descriptions_dev.jsonl").read_text().splitlines()][::10][:20]
    for r in dev_rows:
        (dev / f"{r['image']}.png").write_bytes((medpix / "images" / f"{r['image']}.png").read_bytes())
    shares = {}
    for name, folder in (("xrays", xrays), ("dev", dev)):
        caption_flow(folder, root / f"captions-{name}", str(bundle))
        captions = read_captions(root / f"captions-{name}")
        assert captions["ood_score"].notna().all()
        shares[name] = float((~captions["in_domain"].astype(bool)).mean())
    # Measured on this tiny setup (120 training images, 1 epoch at 64 px): 85% of the X-rays, 5% of dev with the
    # default signals (early layers and pixel statistics); 45% of the X-rays with the last layer's features and the
    # pixel statistics (radcap 0.3's guard), which this bound fails. benchmarks/domain_guard.py has the full size.
    assert shares["xrays"] >= 0.7 and shares["dev"] <= 0.2 and shares["xrays"] >= 4 * shares["dev"], shares
