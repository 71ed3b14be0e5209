"""`radcap app` driven by Streamlit's AppTest (in process, no browser): real images from ../shared/data, a DICOM
made from real pixels with fake patient values, broken inputs; the report, the findings, the attention maps,
the messages, and that no patient value reaches the page or the log."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.dicom_factory import FAKE_PATIENT, make_dicom

pytestmark = pytest.mark.realdata
REPORT = "left pleural effusion."


@pytest.fixture
def app(parrot_captioner: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from radcap.web import PAGE

    monkeypatch.setenv("RADCAP_APP__MODEL", str(parrot_captioner))
    monkeypatch.setenv("RADCAP_APP__RETRIEVER", "")
    at = AppTest.from_file(str(PAGE), default_timeout=180)
    at.run()
    assert not at.exception and not at.error, (at.exception, at.error)
    return at


@pytest.fixture(scope="module")
def xrays(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[:3]


def page_text(at) -> str:
    """Everything the page holds (every element's message, tables included), as one string."""
    out = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    out += [frame.value.to_csv() for frame in at.dataframe]
    return "\n".join(out)


def upload(at, *files: tuple[str, bytes]):
    at.file_uploader[0].set_value([(name, data, "application/octet-stream") for name, data in files])
    at.run()
    assert not at.exception, at.exception
    return at


def real_pixels(path: Path, size: int = 256) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L").resize((size, size)), np.uint8)


def findings(at) -> dict[str, str]:
    table = next(frame.value for frame in at.dataframe if "finding" in frame.value)
    return dict(zip(table["finding"], table["status"]))


def test_report_findings_and_attention_for_a_real_chest_xray(app, xrays):
    at = upload(app, (xrays[0].name, xrays[0].read_bytes()))
    assert not at.error
    assert [m.value for m in at.markdown if m.value.startswith("> ")] == [f"> {REPORT}"]
    assert findings(at) == {"No Finding": "negative", "Pleural Effusion": "positive"}
    # One image shown, frontal by upload order, and one attention map per view for the chosen word.
    assert any(f"frontal: {xrays[0].name}" in text for text in [page_text(at)])
    words = at.button_group(key="word")
    assert words.options == ["1. left", "2. pleural", "3. effusion", "4. ."] and words.value == "1. left"
    assert page_text(at).count("frontal, word 1: left") == 1
    words.set_value("3. effusion").run()
    assert "frontal, word 3: effusion" in page_text(at) and "frontal, word 1: left" not in page_text(at)


def test_a_beam_width_of_one_is_greedy_and_still_writes_the_report(app, xrays):
    at = upload(app, (xrays[0].name, xrays[0].read_bytes()))
    at.sidebar.slider(key="beam_width").set_value(1).run()
    assert [m.value for m in at.markdown if m.value.startswith("> ")] == [f"> {REPORT}"]


def test_two_views_with_a_dicom_lateral_show_no_patient_value(app, xrays, tmp_path, caplog):
    """An extension-less DICOM from real pixels, MONOCHROME1 (stored inverted) with ViewPosition LL, beside a
    PNG frontal: labelled lateral by its header, shown as the model sees it, and no patient value anywhere."""
    pixels = real_pixels(xrays[1])
    dicom = make_dicom(tmp_path / "IM2", 255 - pixels, photometric="MONOCHROME1", view_position="LL")
    caplog.set_level(logging.DEBUG)
    at = upload(app, ("IM2", dicom.read_bytes()), (xrays[0].name, xrays[0].read_bytes()))
    assert not at.error
    text = page_text(at)
    assert f"frontal: {xrays[0].name}" in text and "lateral: IM2" in text
    assert "lateral, word 1: left" in text  # an attention map over the lateral view too
    for value in FAKE_PATIENT.values():
        assert value not in text and value not in caplog.text
        assert value.replace("^", " ") not in text

    # What the model saw of the DICOM is the un-inverted real image (8 bits, no window: as its PNG).
    from radcap.serving.study import read_upload

    shown = read_upload("IM2", dicom.read_bytes()).image.pixels
    np.testing.assert_allclose(shown, pixels / 255.0, atol=1e-6)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "case", ["truncated", "not an image", "three images", "no pixel data", "over the limit", "empty"]
)
def test_bad_input_is_a_message_naming_the_file(app, xrays, tmp_path, monkeypatch, case):
    real = xrays[0].read_bytes()
    if case == "truncated":
        files, expected = [("cut.png", real[: len(real) // 3])], "cut.png: cannot decode png image"
    elif case == "not an image":
        files, expected = [("notes.txt", b"patient was seen today")], "notes.txt: not a PNG, JPEG or DICOM file"
    elif case == "three images":
        files, expected = [(f"{k}.png", real) for k in range(3)], "3 images: a study here has at most 2"
    elif case == "no pixel data":
        dicom = make_dicom(tmp_path / "IM1", real_pixels(xrays[0]), with_pixels=False)
        files, expected = [("IM1", dicom.read_bytes())], "IM1: DICOM has no pixel data"
    elif case == "empty":
        files, expected = [("zero.png", b"")], "zero.png: empty file"
    else:
        monkeypatch.setenv("RADCAP_APP__MAX_UPLOAD_MB", "1")
        big = _png_bytes(np.random.default_rng(0).integers(0, 255, (1200, 1200), dtype=np.uint8))
        assert len(big) > 2**20
        files, expected = [("big.png", big)], "big.png: file is 1 MiB, over the page's 1 MiB limit"
    at = upload(app, *files)
    assert [e.value for e in at.error] and expected in at.error[0].value, [e.value for e in at.error]
    assert not [m for m in at.markdown if m.value.startswith("> ")]  # no report for a refused study
    assert "Traceback" not in page_text(at)


def test_a_study_picked_from_a_folder(parrot_captioner, xrays, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from radcap.web import PAGE

    study = "1.2.826.0.1.3680043.99.1"
    export = tmp_path / "export"
    (export / "S1").mkdir(parents=True)
    make_dicom(export / "S1" / "IM1", real_pixels(xrays[0]), study_uid=study, view_position="PA")
    make_dicom(export / "S1" / "IM2", real_pixels(xrays[1]), study_uid=study, view_position="LL")
    monkeypatch.setenv("RADCAP_APP__MODEL", str(parrot_captioner))
    monkeypatch.setenv("RADCAP_APP__RETRIEVER", "")
    monkeypatch.setenv("RADCAP_APP__STUDIES", str(export))
    at = AppTest.from_file(str(PAGE), default_timeout=180)
    at.run()
    picker = at.sidebar.selectbox(key="study")
    assert picker.options == ["(none)", "S1/IM1 + S1/IM2"]
    picker.set_value("S1/IM1 + S1/IM2").run()
    assert not at.error and not at.exception
    assert [m.value for m in at.markdown if m.value.startswith("> ")] == [f"> {REPORT}"]
    assert "frontal: IM1" in page_text(at) and "lateral: IM2" in page_text(at)
    assert study not in page_text(at)  # studies are named by their files, not by header values


@pytest.mark.slow
def test_models_page_lists_versions_with_metrics_and_the_champion(parrot_captioner, monkeypatch):
    import mlflow
    from streamlit.testing.v1 import AppTest

    from radcap.registry import store as registry
    from radcap.web import PAGE

    name = "radcap-app-models-test"
    mlflow.set_experiment("radcap-tests")
    with mlflow.start_run():
        first = registry.register_captioner(parrot_captioner, name, {"val_CIDEr": "0.4100"})
        second = registry.register_captioner(parrot_captioner, name, {"val_CIDEr": "0.5200"})
    registry.set_champion(name, first)
    record = {
        "outcome": "refused",
        "reason": "CIDEr gain not significant",
        "split": "test",
        "metrics": {second: {"CIDEr": 0.5, "reports": 10}, first: {"CIDEr": 0.49, "reports": 10}},
    }
    registry.tag_version(name, second, {"promotion": record})
    monkeypatch.setenv("RADCAP_APP__MODEL", f"models:/{name}@champion")
    monkeypatch.setenv("RADCAP_APP__RETRIEVER", "")
    at = AppTest.from_file(str(PAGE), default_timeout=180)
    at.run()
    at.switch_page("pages/models.py").run()
    assert not at.error and not at.exception, [e.value for e in at.error]
    table = at.dataframe[0].value.set_index("version")
    assert table.loc[int(first), "aliases"] == "champion" and table.loc[int(second), "aliases"] == ""
    assert table.loc[int(second), "val_CIDEr"] == pytest.approx(0.52)
    assert table.loc[int(second), "test_CIDEr"] == pytest.approx(0.5)
    assert table.loc[int(second), "promotion"].startswith("refused")
    assert f"promotion history (oldest first): {first}" in page_text(at)


@pytest.mark.slow
def test_models_page_shows_the_agreement_trend_and_the_drift_banner(parrot_captioner, monkeypatch, tmp_path):
    """What `radcap monitor` records (its MLflow run, the `degraded` tag) is what the pages show."""
    import mlflow
    from streamlit.testing.v1 import AppTest

    from radcap.core.settings import get_settings
    from radcap.monitoring.agreement import score_studies, weekly_table
    from radcap.monitoring.drift import DriftReport
    from radcap.monitoring.simulation import stream
    from radcap.registry import store as registry
    from radcap.tasks.monitor import Agreement, record_night
    from radcap.web import PAGE

    name = "radcap-app-drift-test"
    mlflow.set_experiment("radcap-tests")
    with mlflow.start_run():
        version = registry.register_captioner(parrot_captioner, name, {})
    registry.set_champion(name, version)
    frame = stream(["no acute disease.", "small left pleural effusion.", "mild cardiomegaly."], 14, 5, seed=0)
    frame["model_version"] = version
    scored = score_studies(frame)
    agreement = Agreement(frame, scored, weekly_table(frame, scored, 200, 0.95))
    drift = DriftReport(version, "degraded", f"version {version} degraded: words_kept 0.9 -> 0.5")
    record_night.fn(agreement, drift, name, get_settings())
    monkeypatch.setenv("RADCAP_APP__MODEL", f"models:/{name}@champion")
    monkeypatch.setenv("RADCAP_APP__RETRIEVER", "")
    at = AppTest.from_file(str(PAGE), default_timeout=180)
    at.run()
    at.switch_page("pages/models.py").run()
    assert [e.value for e in at.error] == [
        f"Drift alarm: the served model's drafts agree less with signed reports than they did. {drift.message}"
    ]
    weeks = at.dataframe[1].value
    assert list(weeks["week"]) == ["2026-01-05", "2026-01-12"] and weeks["drafted"].sum() == len(frame)
