"""`radcap optimize-encoder` tasks: real calibration images, the optimized build, its registration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect.logging import get_run_logger

from radcap.imaging.decode import ImageRejected, prepare
from radcap.imaging.encoders import Encoder
from radcap.imaging.precision import (
    OPTIMIZED_ENCODER,
    OptimizedMeta,
    convert,
    quantize_int8,
    register_optimized_encoder,
    save_optimized,
)
from radcap.tasks import registry_task, uncached


@uncached
def calibration_squares(folder: Path, count: int, size: int) -> np.ndarray:
    """The first `count` readable images under `folder` (sorted paths: the same set every run), as the uint8
    squares the encoder reads. Unreadable files are skipped (they are not outputs of this command)."""
    squares: list[np.ndarray] = []
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if len(squares) == count:
            break
        try:
            squares.append(prepare(path, size))
        except ImageRejected:
            skipped += 1
    get_run_logger().info("calibration: %d images from %s (%d unreadable skipped)", len(squares), folder, skipped)
    return np.stack(squares) if squares else np.zeros((0, size, size), np.uint8)


@uncached
def build_optimized(encoder: Encoder, precision: str, calibration: np.ndarray, out: Path) -> Path:
    """OpenVINO IR of the encoder's inference graph; int8 quantized on `calibration`."""
    from radcap.models.encoder import uint8_feature_model

    model = convert(uint8_feature_model(encoder.model, encoder.input_size), encoder.input_size)
    if precision == "int8":
        model = quantize_int8(model, calibration)
    meta = OptimizedMeta(
        precision, encoder.version, encoder.spec, encoder.input_size, len(calibration) if precision == "int8" else 0
    )
    return save_optimized(model, meta, out)


@registry_task
def register_optimized(folder: Path) -> str:
    meta = OptimizedMeta.load(folder)
    version = register_optimized_encoder(folder, {**meta.__dict__})
    uri = f"models:/{OPTIMIZED_ENCODER}/{version}"
    get_run_logger().info("registered %s: encoder %s at %s", uri, meta.source_version, meta.precision)
    return uri
