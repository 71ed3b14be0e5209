"""Image loading and normalization, the same for training, feature extraction and captioning.

Supported: PNG and JPEG (8- and 16-bit; grayscale, RGB, RGBA, palette) and DICOM (pydicom; compressed
transfer syntaxes through pylibjpeg). The file type is sniffed from the bytes, not the extension, so PACS
exports without extensions work.

Intensity policy, giving a float32 grayscale image in [0, 1]:
* 8-bit PNG/JPEG: value / 255 (the image is already windowed for display);
* 16-bit PNG: min-max over the image (such files rarely carry their bit depth or window);
* DICOM: Modality LUT (rescale slope/intercept), then the VOI LUT or the first window (center/width) when
  present, else min-max; MONOCHROME1 is inverted so that air is dark, as in MONOCHROME2;
* colour (RGB/RGBA/YBR) becomes luminance; alpha is dropped.
Geometry policy: letterbox. The longer side is resized to `size` (anti-aliased), the shorter side is padded
symmetrically with 0, so anatomy is never stretched. The network input is the grayscale replicated to 3
channels and standardized with the ImageNet mean/std, as CheXNet was trained.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MIN_SIDE, MAX_SIDE, MAX_ASPECT = 32, 16384, 8.0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageRejected(Exception):
    """This file cannot be used as an image; the message is the reject reason."""


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # float32, HxW, [0, 1]
    kind: str  # png, jpeg, dicom
    dicom: object | None = None  # the pydicom Dataset, for callers that need UIDs (never logged)


def sniff(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_image(path: Path, read_dicom_header: bool = False) -> LoadedImage:
    """Decode any supported file to a [0, 1] grayscale array, or raise ImageRejected with the reason."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except FileNotFoundError:
        raise ImageRejected("file not found") from None
    except OSError as exc:
        raise ImageRejected(f"cannot read file: {exc.strerror}") from None
    if not head:
        raise ImageRejected("empty file (0 bytes)")
    kind = sniff(head)
    if kind == "dicom":
        pixels, dataset = _load_dicom(path)
        return LoadedImage(_check_shape(pixels), kind, dataset if read_dicom_header else None)
    if kind in ("png", "jpeg"):
        return LoadedImage(_check_shape(_load_raster(path)), kind)
    raise ImageRejected("not a PNG, JPEG or DICOM file (unrecognized content)")


def _check_shape(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE or max(h, w) / min(h, w) > MAX_ASPECT:
        raise ImageRejected(f"unsuitable dimensions {w}x{h} (sides {MIN_SIDE}..{MAX_SIDE}, aspect <= {MAX_ASPECT:g})")
    if not np.isfinite(pixels).all():
        raise ImageRejected("pixel values are not finite")
    return pixels


def _minmax(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _load_raster(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            w, h = img.size
            if max(w, h) > MAX_SIDE or min(w, h) < 1:  # before decoding a decompression bomb
                raise ImageRejected(f"unsuitable dimensions {w}x{h}")
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return _minmax(np.asarray(img))
            if mode == "L":
                return np.asarray(img, dtype=np.float32) / 255.0
            if mode in ("LA", "RGBA", "RGB", "P", "1", "CMYK", "YCbCr", "PA"):
                return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            raise ImageRejected(f"unsupported image mode {mode}")
    except ImageRejected:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"cannot decode image: {exc}") from None


def _load_dicom(path: Path) -> tuple[np.ndarray, object]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise ImageRejected(f"cannot read DICOM: {exc}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageRejected("DICOM has no pixel data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageRejected(f"multi-frame DICOM ({frames} frames) is not supported; export single frames")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if max(rows, cols) > MAX_SIDE or min(rows, cols) < 1:
        raise ImageRejected(f"unsuitable dimensions {cols}x{rows}")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for truncated data or missing decoders
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageRejected(f"cannot decode DICOM pixels (transfer syntax {syntax}): {exc}") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour
        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
        arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return _minmax(arr), ds
    arr = apply_modality_lut(arr, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds, index=0)
    pixels = _minmax(arr)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels, ds


def letterbox(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize the longer side to `size` and pad the shorter one symmetrically with 0 (see module doc)."""
    h, w = pixels.shape
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = Image.fromarray(pixels.astype(np.float32), mode="F").resize(
        (new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0 if scale < 1 else None
    )
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top: top + new_h, left: left + new_w] = np.clip(np.asarray(resized), 0.0, 1.0)
    return out


def to_network_input(square: np.ndarray) -> np.ndarray:
    """HxW [0,1] -> HxWx3 standardized with the ImageNet statistics (CheXNet's preprocessing)."""
    return (square[..., None] - IMAGENET_MEAN) / IMAGENET_STD


def prepare(path: Path, size: int) -> np.ndarray:
    """File -> letterboxed uint8 grayscale (compact; standardized later, on the accelerator side)."""
    return (letterbox(load_image(path).pixels, size) * 255.0 + 0.5).astype(np.uint8)
