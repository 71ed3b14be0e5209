"""Image loading and normalization, the same for training, feature extraction and captioning.

Supported: PNG and JPEG (8- and 16-bit; grayscale, RGB, RGBA, palette) and DICOM (pydicom; compressed
transfer syntaxes through pylibjpeg). The file type is sniffed from the bytes, not the extension, so PACS
exports without extensions work.

A file is read once: its SHA-256 is the hash of exactly the bytes that are decoded (`read_image`), so a
file edited while a run is reading it can never be recorded under the other version's hash.

Intensity policy, giving a float32 grayscale image in [0, 1]:
* 8-bit PNG/JPEG: value / 255 (the image is already windowed for display);
* 16-bit PNG: min-max over the image (such files rarely carry their bit depth or window);
* DICOM: Modality LUT (rescale slope/intercept), then the VOI LUT or the first window (center/width,
  LINEAR / LINEAR_EXACT / SIGMOID) when present, mapped onto [0, 1] by its own output range (window bottom 0,
  top 1: never stretched to the image's own extremes); without either, 8-bit-or-less unsigned pixels with no
  rescale are display values (value / 255, exactly as an 8-bit PNG), anything else min-max; MONOCHROME1 is
  inverted so that air is dark, as in MONOCHROME2;
* colour (RGB/RGBA/YBR) becomes luminance (8-bit: / 255, as a colour PNG); alpha is dropped.
Geometry policy: letterbox. The longer side is resized to `size` (anti-aliased), the shorter side is padded
symmetrically with 0, so anatomy is never stretched. The network standardizes the result with the ImageNet
mean/std inside its graph (`models.encoder.standardize`), as CheXNet was trained.

Limits, checked before anything large is allocated (size and decompression bombs): a file over
`MAX_FILE_BYTES` is not read; an image whose declared size (DICOM: Rows x Columns x frames x samples x bytes
per sample; PNG/JPEG: width x height) exceeds `MAX_PIXELS` pixels or `MAX_PIXEL_BYTES` bytes is not decoded;
a DICOM with more than `MAX_SEQUENCE_ITEMS` sequence items is not parsed; only the pixel-related tags
(`PIXEL_TAGS`) are parsed at all; sides must be within MIN_SIDE..MAX_SIDE with an aspect ratio of at most MAX_ASPECT.

Every failure, whatever raised it (a truncated file, a lying header, a missing decoder, a bug in a
third-party decoder), becomes `ImageRejected` with a reason that names no header value: DICOM errors are
reported by their type only, since a decoder's message may quote a patient attribute.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from radcap.imaging.statistics import image_statistics

MIN_SIDE, MAX_SIDE, MAX_ASPECT = 32, 16384, 8.0
MAX_FILE_BYTES = 512 * 2**20  # no radiograph file is this large; a bigger one is not read into memory
MAX_PIXELS = 16384 * 16384  # declared pixels of one image, before decoding
MAX_PIXEL_BYTES = 512 * 2**20  # declared decoded bytes of a DICOM's pixel data (all frames)
MAX_SEQUENCE_ITEMS = 100_000  # sequence items in a file: each becomes Python objects when parsed
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb check uses the same limit
# The attributes decoding needs: pixel module, LUTs, windows. Nothing else of a header is ever parsed, so a
# patient attribute is never even read, and huge or deep sequences elsewhere in the header are skipped.
PIXEL_TAGS = [
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
]


def quiet_pydicom():
    """pydicom, configured so that it never logs or warns: its messages about invalid data quote element
    values (a patient name among them), and radcap never forwards those. Returns the module."""
    import pydicom

    logger = logging.getLogger("pydicom")
    if logger.propagate:
        logger.setLevel(logging.CRITICAL + 1)
        logger.propagate = False
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        for module in (r"pydicom(\..*)?$", r"radcap\.(imaging|pacs)$"):  # where pydicom's warnings are attributed
            warnings.filterwarnings("ignore", module=module)
    return pydicom


class ImageRejected(Exception):
    """This file cannot be used as an image; the message is the reject reason (`sha256` when it was read)."""

    def __init__(self, reason: str, sha256: str = ""):
        super().__init__(reason)
        self.sha256 = sha256


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # float32, HxW, [0, 1]
    kind: str  # png, jpeg, dicom
    sha256: str = ""  # of the bytes that were decoded
    chroma: float = 0.0  # mean spread between the colour channels, in [0, 1]: 0 for a grayscale image

    @property
    def statistics(self) -> np.ndarray:
        """The pixel statistics the out-of-domain guard reads (radcap.imaging.statistics), at the image's own
        aspect ratio: what every path (captioning, serving, the guard's fitting) computes them from."""
        return image_statistics(self.pixels, self.chroma)


class Decoded(NamedTuple):
    """What the pipelines decode a file to (`read_image`)."""

    square: np.ndarray  # letterboxed uint8 grayscale
    sha256: str
    chroma: float  # see LoadedImage
    statistics: np.ndarray  # the image's pixel statistics, for the out-of-domain guard (radcap.imaging.statistics)


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


def read_bytes(path: Path) -> bytes:
    """The whole file, or ImageRejected: missing, unreadable, not a regular file, empty or over the limit."""
    try:
        # O_NONBLOCK: opening a FIFO or a device must not hang the run (no effect on regular files).
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageRejected("not a regular file")
            if info.st_size > MAX_FILE_BYTES:
                raise ImageRejected(
                    f"file is {info.st_size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit"
                )
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ImageRejected("file not found") from None
    except OSError as exc:
        raise ImageRejected(f"cannot read file: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_FILE_BYTES:  # grew while being read
        raise ImageRejected(f"file is over the {MAX_FILE_BYTES // 2**20} MiB limit")
    if not data:
        raise ImageRejected("empty file (0 bytes)", hashlib.sha256(b"").hexdigest())
    return data


def decode(data: bytes) -> LoadedImage:
    """Decode a file's bytes to a [0, 1] grayscale array, or raise ImageRejected with the reason."""
    sha = hashlib.sha256(data).hexdigest()
    kind = sniff(data[:132])
    try:
        if kind == "dicom":
            pixels, chroma = _load_dicom(data)
        elif kind in ("png", "jpeg"):
            pixels, chroma = _load_raster(data)
        else:
            raise ImageRejected("not a PNG, JPEG or DICOM file (unrecognized content)")
        return LoadedImage(_check_shape(pixels), kind, sha, chroma)
    except ImageRejected as exc:
        raise ImageRejected(str(exc), sha) from None
    except Exception as exc:
        detail = "" if kind == "dicom" else f": {exc}"
        raise ImageRejected(f"cannot decode {kind} image ({type(exc).__name__}{detail})", sha) from None


def load_image(path: Path) -> LoadedImage:
    """Read and decode one file (see `decode`)."""
    return decode(read_bytes(path))


def _check_shape(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim != 2:
        raise ImageRejected(f"unsupported pixel array shape {pixels.shape}")
    h, w = pixels.shape
    if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE or max(h, w) / min(h, w) > MAX_ASPECT:
        raise ImageRejected(f"unsuitable dimensions {w}x{h} (sides {MIN_SIDE}..{MAX_SIDE}, aspect <= {MAX_ASPECT:g})")
    if not np.isfinite(pixels).all():
        raise ImageRejected("pixel values are not finite")
    return pixels


def _minmax(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def chroma_of(rgb: np.ndarray, full_scale: float) -> float:
    """Mean spread between the colour channels (max - min over R, G, B), as a share of `full_scale`."""
    rgb = rgb[..., :3].astype(np.float32)
    return float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean() / max(full_scale, 1e-6))


def _load_raster(data: bytes) -> tuple[np.ndarray, float]:
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if w * h > MAX_PIXELS or max(w, h) > MAX_SIDE or min(w, h) < 1:  # before decoding a bomb
            raise ImageRejected(f"unsuitable dimensions {w}x{h}")
        img.load()
        mode = img.mode
        if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return _minmax(np.asarray(img)), 0.0
        if mode in ("L", "1", "LA", "La"):
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0, 0.0
        if mode in ("RGBA", "RGB", "P", "CMYK", "YCbCr", "PA", "RGBa"):
            chroma = chroma_of(np.asarray(img.convert("RGB")), 255.0)
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0, chroma
        raise ImageRejected(f"unsupported image mode {mode}")


def _int_attribute(ds, name: str, default: int) -> int:
    """A header integer (Rows, NumberOfFrames...), or ImageRejected when it is not one."""
    value = ds.get(name, default)
    value = default if value in (None, "") else value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageRejected(f"DICOM {name} is not a number") from None


def check_dicom_header(data: bytes) -> None:
    """Refuse, from the raw bytes, a file with too many sequence items to parse safely (each parsed item
    becomes Python objects: a few MB of items would take GBs of memory). Counted over the whole file, since
    finding where the header ends would already be parsing; encapsulated pixel fragments count too, and a
    single frame has far fewer than the limit."""
    items = data.count(b"\xfe\xff\x00\xe0")  # the Item tag, little endian
    if items > MAX_SEQUENCE_ITEMS:
        raise ImageRejected(f"DICOM holds {items:,} sequence items, over the {MAX_SEQUENCE_ITEMS:,} limit")


def _load_dicom(data: bytes) -> tuple[np.ndarray, float]:
    pydicom = quiet_pydicom()
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    check_dicom_header(data)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), specific_tags=PIXEL_TAGS)
    except Exception as exc:
        raise ImageRejected(f"cannot read DICOM ({type(exc).__name__})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageRejected("DICOM has no pixel data")
    frames = _int_attribute(ds, "NumberOfFrames", 1)
    rows, cols = _int_attribute(ds, "Rows", 0), _int_attribute(ds, "Columns", 0)
    samples, bits = _int_attribute(ds, "SamplesPerPixel", 1), _int_attribute(ds, "BitsAllocated", 8)
    if frames > 1:
        raise ImageRejected(f"multi-frame DICOM ({frames} frames) is not supported; export single frames")
    if min(rows, cols, frames, samples, bits) < 1 or max(rows, cols) > MAX_SIDE:
        raise ImageRejected(f"unsuitable dimensions {cols}x{rows} ({frames} frames, {samples} samples, {bits} bits)")
    declared = rows * cols * frames * samples * ((bits + 7) // 8)
    if rows * cols > MAX_PIXELS or declared > MAX_PIXEL_BYTES:
        raise ImageRejected(
            f"declared pixel data of {declared / 2**20:.0f} MiB is over the {MAX_PIXEL_BYTES // 2**20} MiB limit"
        )
    try:
        arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = syntax if isinstance(syntax, str) and all(c in "0123456789." for c in syntax) else "unknown"
        raise ImageRejected(f"cannot decode DICOM pixels (transfer syntax {syntax}; {type(exc).__name__})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour
        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
        chroma = chroma_of(arr, float(arr[..., :3].max()) or 1.0)
        luminance = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return (luminance / 255.0 if bits == 8 else _minmax(luminance)), chroma  # 8-bit colour: as a colour PNG
    if arr.ndim != 2:
        raise ImageRejected(f"unsupported DICOM pixel array shape {arr.shape}")
    stored = arr
    arr = apply_modality_lut(arr, ds)
    pixels = _display_values(arr, ds, apply_voi_lut)
    if pixels is None:
        bits = _int_attribute(ds, "BitsStored", bits)
        identity = np.shares_memory(arr, stored) or np.array_equal(arr, stored)
        if bits <= 8 and _int_attribute(ds, "PixelRepresentation", 0) == 0 and identity:
            pixels = stored.astype(np.float32) / float(2**bits - 1)  # as an 8-bit PNG: already display values
        else:
            pixels = _minmax(arr)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels, 0.0


def _first_number(ds, name: str) -> float | None:
    value = ds.get(name)
    try:
        value = value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) else None


def _display_values(arr: np.ndarray, ds, apply_voi_lut) -> np.ndarray | None:
    """The first VOI transform of the header mapped onto [0, 1] by its own output range (PS3.3 C.11.2.1.2:
    window bottom -> 0, top -> 1), so a window wider than the image's values leaves them mid-grey, as a viewer
    shows them. None when the header has no usable VOI LUT or window."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        data, descriptor = sequence[0].get("LUTData"), sequence[0].get("LUTDescriptor") or [0, 0, 16]
        try:
            wide = int(descriptor[2]) > 8 if len(descriptor) == 3 else True
        except (TypeError, ValueError):
            wide = True
        lut = (
            np.frombuffer(data[: len(data) // 2 * 2] if wide else data, "<u2" if wide else "u1")
            if isinstance(data, bytes)
            else np.asarray(data if data is not None else [], dtype=np.float64)
        )
        if lut.size and lut.max() > 0:  # the LUT's own top: LUTDescriptor's bit depth is often wrong in the wild
            return np.clip(apply_voi_lut(arr, ds, index=0, prefer_lut=True).astype(np.float32) / lut.max(), 0, 1)
    center, width = _first_number(ds, "WindowCenter"), _first_number(ds, "WindowWidth")
    if center is None or width is None:
        return None
    x = arr.astype(np.float64)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if function == "SIGMOID" and width > 0:
        return (1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -60, 60)))).astype(np.float32)
    if function == "LINEAR_EXACT" and width > 0:
        return np.clip((x - center) / width + 0.5, 0, 1).astype(np.float32)
    if width > 1:
        return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1).astype(np.float32)
    if width == 1:
        return (x > center - 0.5).astype(np.float32)
    return None


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
    out[top : top + new_h, left : left + new_w] = np.clip(np.asarray(resized), 0.0, 1.0)
    return out


def to_square(image: LoadedImage, size: int) -> np.ndarray:
    """Letterboxed uint8 grayscale (compact; standardized later, on the accelerator side)."""
    return (letterbox(image.pixels, size) * 255.0 + 0.5).astype(np.uint8)


def read_image(source: Path | bytes, size: int) -> Decoded:
    """A file (or the bytes of one, e.g. an upload or a REST request) -> (letterboxed uint8 square, sha256 of
    the bytes decoded, chroma, pixel statistics), or ImageRejected (with the sha when the bytes could be read).
    What feature extraction, captioning, retrieval and serving decode with."""
    image = decode(check_bytes(source) if isinstance(source, (bytes, bytearray)) else read_bytes(source))
    try:
        return Decoded(to_square(image, size), image.sha256, image.chroma, image.statistics)
    except Exception as exc:
        raise ImageRejected(f"cannot resize image ({type(exc).__name__})", image.sha256) from None


def check_bytes(data: bytes) -> bytes:
    """In-memory input under the same limits as a file: not empty, not over MAX_FILE_BYTES."""
    if len(data) > MAX_FILE_BYTES:
        raise ImageRejected(f"file is {len(data) / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit")
    if not data:
        raise ImageRejected("empty file (0 bytes)", hashlib.sha256(b"").hexdigest())
    return bytes(data)


def prepare(path: Path, size: int) -> np.ndarray:
    """File -> letterboxed uint8 grayscale square."""
    return read_image(path, size)[0]
