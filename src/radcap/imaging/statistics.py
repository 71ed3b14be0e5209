"""What an image looks like before any encoder sees it: a short vector of pixel statistics.

The out-of-domain guard's second signal (`radcap.domain.guard`). An encoder that never saw a chest X-ray can map
one close to a CT slice, and an untrained one maps most grayscale pictures close together; the pixels still differ
in ways no network is needed to see: a CT or MR slice is a bright body on a black field, round or square; a chest
radiograph fills its frame with mid-gray; a scanned form is white with dark strokes; noise has no structure. The
statistics are computed on the decoded grayscale image at its own aspect ratio (before letterboxing, which would
add black bars of its own), subsampled to at most `SIDE` pixels a side so that a 4,000-pixel radiograph costs what
a 512-pixel slice does.
"""

from __future__ import annotations

import numpy as np

SIDE = 256  # statistics are taken on at most this many rows and columns
HISTOGRAM_BINS = 16
DARK, BRIGHT = 0.04, 0.96  # "black" and "white" on the [0, 1] scale
STATISTICS = (
    *(f"histogram_{k}" for k in range(HISTOGRAM_BINS)),  # share of pixels in each 1/16 of the range
    "mean",
    "std",
    "dark_share",  # pixels under DARK: the black field around a CT/MR slice
    "bright_share",  # pixels over BRIGHT: paper, burnt-in overlays
    "histogram_entropy",  # bits, of the 16-bin histogram
    "log_aspect",  # log(height / width) of the file's pixels
    "border_mean",  # the outer eighth of each side
    "centre_mean",  # the middle half
    "corner_dark_share",  # dark pixels in the four corner squares: a round field of view
    "dark_rows",  # rows that are almost all dark: a slice surrounded by black
    "dark_columns",
    "edge_strength",  # mean absolute difference between neighbouring pixels
    "mirror_difference",  # mean |image - its left-right mirror|
    "chroma",  # colour (0: grayscale)
)
STATISTICS_DIM = len(STATISTICS)


def image_statistics(pixels: np.ndarray, chroma: float = 0.0) -> np.ndarray:
    """A decoded [0, 1] grayscale image (H, W) and its chroma -> (STATISTICS_DIM,) float32, in `STATISTICS` order."""
    pixels = np.asarray(pixels, np.float32)
    height, width = pixels.shape
    step = max(1, int(np.ceil(max(height, width) / SIDE)))
    small = pixels[::step, ::step]
    h, w = small.shape
    histogram = np.histogram(small, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0].astype(np.float64) / small.size
    nonzero = histogram[histogram > 0]
    dark = small < DARK
    edge_h, edge_w = max(1, h // 8), max(1, w // 8)
    border = np.concatenate(
        [small[:edge_h].ravel(), small[-edge_h:].ravel(), small[:, :edge_w].ravel(), small[:, -edge_w:].ravel()]
    )
    corners = np.concatenate(
        [
            dark[:edge_h, :edge_w].ravel(),
            dark[:edge_h, -edge_w:].ravel(),
            dark[-edge_h:, :edge_w].ravel(),
            dark[-edge_h:, -edge_w:].ravel(),
        ]
    )
    edges = (np.abs(np.diff(small, axis=0)).mean() if h > 1 else 0.0) + (
        np.abs(np.diff(small, axis=1)).mean() if w > 1 else 0.0
    )
    values = [
        *histogram,
        small.mean(),
        small.std(),
        dark.mean(),
        (small > BRIGHT).mean(),
        float(-(nonzero * np.log2(nonzero)).sum()),
        np.log(height / width),
        border.mean(),
        small[h // 4 : h - h // 4 or None, w // 4 : w - w // 4 or None].mean(),
        corners.mean(),
        (dark.mean(axis=1) > 0.9).mean(),
        (dark.mean(axis=0) > 0.9).mean(),
        edges,
        np.abs(small - small[:, ::-1]).mean(),
        chroma,
    ]
    return np.asarray(values, np.float32)
