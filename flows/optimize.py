"""`radcap optimize-encoder`: build an encoder's bf16 or int8 inference graph once and register it beside
its source (runs at that precision load it, never rebuild it)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.core.errors import RadcapError
from radcap.core.settings import get_settings
from radcap.registry.tracking import tracked_run
from radcap.tasks.features import load_encoder
from radcap.tasks.optimize import build_optimized, calibration_squares, register_optimized


@flow(name="optimize-encoder")
def optimize_encoder_flow(
    encoder: str | None, precision: str, calibration: Path | None, out: Path, calibration_images: int
) -> dict:
    model = load_encoder(encoder)
    squares = None
    if precision == "int8":
        if calibration is None:
            raise RadcapError("int8 is calibrated on real images: give --calibration FOLDER")
        squares = calibration_squares(calibration, calibration_images, model.input_size)
    with tracked_run(
        get_settings().tracking.encoder,
        f"optimize-encoder-{precision}",
        {
            "source_version": model.version,
            "source_spec": model.spec,
            "precision": precision,
            "calibration": str(calibration),
            "calibration_images": calibration_images,
        },
    ):
        folder = build_optimized(quote(model), precision, quote(squares), out)
        uri = register_optimized(folder)
    return {
        "registered": uri,
        "source_version": model.version,
        "precision": precision,
        "folder": str(folder),
        "calibration_images": 0 if squares is None else len(squares),
    }
