"""Image loading: every supported kind from real pixels, and every unusable file as a clear rejection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from radcap.imaging.decode import ImageRejected, letterbox, load_image, prepare
from tests.dicom_factory import make_dicom

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def real(shared_data: Path) -> np.ndarray:
    """A real chest X-ray (8-bit grayscale) from ../shared/data."""
    path = sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[0]
    return np.asarray(Image.open(path).convert("L"))


def _expected(real: np.ndarray) -> np.ndarray:
    return real.astype(np.float32) / 255.0


def test_png_8bit_grayscale(tmp_path, real):
    Image.fromarray(real).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.kind == "png" and loaded.pixels.shape == real.shape
    np.testing.assert_allclose(loaded.pixels, _expected(real), atol=1e-6)


def test_png_16bit_is_min_max_scaled(tmp_path, real):
    wide = real.astype(np.uint16) * 257 + 1000  # 16-bit, offset: min-max must undo both
    Image.fromarray(wide).save(tmp_path / "a16.png")
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")
    pixels = load_image(tmp_path / "a16.png").pixels
    span = (real.astype(np.float32) - real.min()) / (real.max() - real.min())
    np.testing.assert_allclose(pixels, span, atol=1e-4)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_png_becomes_luminance(tmp_path, real, mode):
    Image.fromarray(real).convert(mode).save(tmp_path / "c.png")
    pixels = load_image(tmp_path / "c.png").pixels
    assert pixels.shape == real.shape
    assert np.abs(pixels - _expected(real)).mean() < 0.01  # grey stays grey; alpha is ignored


def test_jpeg_8bit_and_rgb(tmp_path, real):
    Image.fromarray(real).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(real).convert("RGB").save(tmp_path / "c.jpeg", quality=95)
    for name in ("g.jpg", "c.jpeg"):
        loaded = load_image(tmp_path / name)
        assert loaded.kind == "jpeg" and np.abs(loaded.pixels - _expected(real)).mean() < 0.02


def test_file_type_comes_from_content_not_extension(tmp_path, real):
    Image.fromarray(real).save(tmp_path / "scan.png")
    (tmp_path / "scan.png").rename(tmp_path / "IM00017")  # PACS exports often have no extension
    make_dicom(tmp_path / "a.png", real)  # a DICOM named .png
    assert load_image(tmp_path / "IM00017").kind == "png"
    assert load_image(tmp_path / "a.png").kind == "dicom"


def test_dicom_monochrome2_matches_png(tmp_path, real):
    """An 8-bit DICOM without a window holds display values, as an 8-bit PNG does: the two decode alike (a
    min-max stretch would make the same picture from a PACS look unlike the training PNGs)."""
    loaded = load_image(make_dicom(tmp_path / "m2.dcm", real))
    Image.fromarray(real).save(tmp_path / "same.png")
    np.testing.assert_array_equal(loaded.pixels, load_image(tmp_path / "same.png").pixels)
    np.testing.assert_allclose(loaded.pixels, real / 255.0, atol=1e-6)
    dim = load_image(make_dicom(tmp_path / "dim.dcm", (real // 4).astype(np.uint8))).pixels
    assert dim.max() <= 0.25 + 1e-6  # a dark image stays dark


def test_dicom_window_maps_its_own_range_not_the_image_extremes(tmp_path, real):
    raw = real.astype(np.uint16) * 4  # 0..1020
    center, width = 512.0, 4096.0  # wider than the values: they sit in the middle of the grey scale
    loaded = load_image(make_dicom(tmp_path / "wide.dcm", raw, window=(center, width))).pixels
    expected = np.clip((raw - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(loaded, expected, atol=1e-5)
    assert loaded.min() > 0.35 and loaded.max() < 0.65
    exact = make_dicom(tmp_path / "exact.dcm", raw, window=(center, 1024.0))
    sigmoid = make_dicom(tmp_path / "sigmoid.dcm", raw, window=(center, 1024.0))
    for path, function in ((exact, "LINEAR_EXACT"), (sigmoid, "SIGMOID")):
        import pydicom

        ds = pydicom.dcmread(path)
        ds.VOILUTFunction = function
        ds.save_as(path)
    np.testing.assert_allclose(load_image(exact).pixels, np.clip((raw - center) / 1024.0 + 0.5, 0, 1), atol=1e-5)
    np.testing.assert_allclose(load_image(sigmoid).pixels, 1 / (1 + np.exp(-4 * (raw - center) / 1024.0)), atol=1e-5)


def test_dicom_monochrome1_is_inverted(tmp_path, real):
    m2 = load_image(make_dicom(tmp_path / "m2.dcm", real)).pixels
    m1 = load_image(make_dicom(tmp_path / "m1.dcm", 255 - real, photometric="MONOCHROME1")).pixels
    np.testing.assert_allclose(m1, m2, atol=1e-5)  # stored inverted + MONOCHROME1 = the same picture


def test_dicom_rescale_and_window(tmp_path, real):
    raw = real.astype(np.uint16) * 4  # stored values 0..1020; slope 2, intercept -1000 -> -1000..1040 "HU"
    hu = raw.astype(np.float32) * 2 - 1000
    center, width = 0.0, 600.0
    loaded = load_image(make_dicom(tmp_path / "ct.dcm", raw, slope=2, intercept=-1000, window=(center, width))).pixels
    windowed = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0, 1)  # DICOM linear window (PS3.3 C.11.2.1.2)
    np.testing.assert_allclose(loaded, windowed, atol=0.01)
    assert (loaded == 0).mean() > 0.01 and (loaded == 1).mean() > 0.01  # the window clips both ends


def test_dicom_without_window_is_min_max_after_rescale(tmp_path, real):
    raw = real.astype(np.uint16) * 16 + 7
    loaded = load_image(make_dicom(tmp_path / "nw.dcm", raw, slope=0.5, intercept=100)).pixels
    span = (real.astype(np.float32) - real.min()) / (real.max() - real.min())
    np.testing.assert_allclose(loaded, span, atol=1e-4)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless, JPEGBaseline8Bit], ids=lambda s: s.name)
def test_compressed_dicom(tmp_path, real, syntax):
    path = make_dicom(tmp_path / "c.dcm", real, transfer_syntax=syntax)
    pixels = load_image(path).pixels
    tolerance = 0.02 if syntax == JPEGBaseline8Bit else 1e-5  # baseline JPEG is lossy
    assert np.abs(pixels - real / 255.0).mean() < tolerance


def _rejected(path: Path) -> str:
    with pytest.raises(ImageRejected) as info:
        load_image(path)
    return str(info.value)


def test_unusable_files_are_rejected_with_reasons(tmp_path, real):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "0 bytes" in _rejected(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("this is a radiology report, not an image\n")
    assert "not a PNG, JPEG or DICOM" in _rejected(tmp_path / "notes.png")
    Image.fromarray(real).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "cannot decode" in _rejected(tmp_path / "cut.png")
    assert "not found" in _rejected(tmp_path / "missing.png")


def test_unusable_dicoms_are_rejected(tmp_path, real):
    assert "no pixel data" in _rejected(make_dicom(tmp_path / "np.dcm", real, with_pixels=False))
    full = make_dicom(tmp_path / "full.dcm", real).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(full[: len(full) - real.size // 2])  # pixel data cut in half
    assert "DICOM" in _rejected(tmp_path / "cut.dcm")


def test_absurd_dimensions_are_rejected(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "tiny.png")
    Image.fromarray(np.zeros((40, 2000), np.uint8)).save(tmp_path / "strip.png")
    assert "dimensions" in _rejected(tmp_path / "tiny.png")
    assert "dimensions" in _rejected(tmp_path / "strip.png")


def test_letterbox_keeps_aspect_and_pads_with_black(real):
    tall = np.ones((300, 150), np.float32)
    square = letterbox(tall, 224)
    assert square.shape == (224, 224)
    assert square[:, :50].max() == 0 and square[:, -50:].max() == 0  # padded sides
    assert square[:, 60:160].min() > 0.99  # the image itself, not stretched
    out = letterbox(_expected(real), 224)
    assert out.min() >= 0 and out.max() <= 1


def test_prepare_gives_the_same_pixels_for_png_and_dicom(tmp_path, real):
    Image.fromarray(real).save(tmp_path / "a.png")
    png = prepare(tmp_path / "a.png", 224).astype(int)
    dcm = prepare(make_dicom(tmp_path / "a.dcm", real), 224).astype(int)
    assert png.dtype == int and png.shape == (224, 224)
    # PNG is /255, DICOM is min-max: equal when the image spans 0..255, close otherwise
    assert np.abs(png - dcm).mean() < 255 * (1 - (real.max() - real.min()) / 255) + 2


def test_size_bombs_are_rejected_before_decoding(tmp_path, real, monkeypatch):
    """A header that declares gigabytes of pixels is refused from the header alone: pixel_array is never called."""
    import pydicom

    import radcap.imaging.decode as imaging

    path = make_dicom(tmp_path / "bomb.dcm", real)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16000, 16000, 32, 32, 31
    ds.SamplesPerPixel = 3
    ds.save_as(path)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(lambda self: pytest.fail("decoded a bomb")))
    assert "over the 512 MiB limit" in _rejected(path)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0")
    monkeypatch.setattr(imaging, "MAX_FILE_BYTES", 0)
    assert "over the 0 MiB limit" in _rejected(big)  # large files are not even read


def test_png_claiming_a_huge_canvas_is_rejected_before_decoding(tmp_path, real):
    import io

    buffer = io.BytesIO()
    Image.fromarray(real).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = (60000).to_bytes(4, "big") * 2  # IHDR width and height
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    reason = _rejected(tmp_path / "bomb.png")
    assert "60000x60000" in reason or "cannot decode" in reason


def test_dicom_voi_lut_maps_onto_its_own_top(tmp_path, real):
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = make_dicom(tmp_path / "lut.dcm", real)
    lut = (np.linspace(0, 1, 256) ** 0.5 * 3000).astype(np.uint16)  # a gamma curve, top 3000 of a 12-bit range
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path)
    np.testing.assert_allclose(load_image(path).pixels, lut[real] / 3000.0, atol=1e-5)
