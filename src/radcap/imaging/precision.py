"""Inference precisions of the encoder: fp32 (TensorFlow, the default), bf16 and int8 (OpenVINO).

Why OpenVINO: measured on this project's DenseNet-121 (`benchmarks/encoder_precision.py`, 2 CPU cores with
AVX-512 VNNI and BF16, 1,000 real images), `radcap caption`'s path ran 32 images/s at fp32 (TensorFlow), 73 at
bf16 (2.27x; pooled cosine to fp32 0.99999) and 104 at int8 (3.25x; NNCF post-training quantization on 300 real
images, cosine 0.998). OpenVINO converts the Keras graph itself and NNCF calibrates it, offline, from PyPI.

An optimized encoder is built once from a source encoder (`radcap optimize-encoder`), saved as OpenVINO IR
(`encoder.xml` + `encoder.bin`: no pickle) with `optimized.json`, and registered beside its source; runs load
it, never rebuild it. Its features are keyed `VERSION@PRECISION` in the feature store, so they never mix with
the fp32 features a captioner was trained on.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radcap.core.errors import RadcapError
from radcap.registry import store

PRECISIONS = ("fp32", "bf16", "int8")
IR_FILE = "encoder.xml"
META_FILE = "optimized.json"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise RadcapError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def store_version(version: str, precision: str) -> str:
    """The feature store's key for features made by encoder `version` at `precision` (fp32: the version)."""
    return version if precision == "fp32" else f"{version}@{precision}"


def silence_telemetry() -> None:
    """OpenVINO and NNCF send usage telemetry unless a consent file in the home folder says no; radcap sends
    nothing anywhere, so their single transport is replaced by a no-op (nothing is written to the home folder)."""
    try:
        from openvino_telemetry.utils.sender import TelemetrySender
    except ImportError:
        return
    TelemetrySender.send = lambda self, *args, **kwargs: None


def _openvino():
    silence_telemetry()
    try:
        import openvino
    except ImportError:
        raise RadcapError("bf16/int8 need OpenVINO: pip install -c constraints.txt -e '.[fast]'") from None
    return openvino


def convert(keras_extractor, input_size: int):
    """The Keras feature extractor (uint8 (B,S,S) -> pooled, grid) as an OpenVINO model, through a SavedModel."""
    ov = _openvino()
    with tempfile.TemporaryDirectory(prefix="radcap-ov-") as folder:
        keras_extractor.export(folder, format="tf_saved_model", verbose=False)
        model = ov.convert_model(folder)
    model.reshape([-1, input_size, input_size])
    return model


def quantize_int8(model, calibration: np.ndarray):
    """Post-training int8 quantization (NNCF, performance preset, fast bias correction) on `calibration`, uint8
    squares (N,S,S) of real images."""
    _openvino()
    import nncf

    if len(calibration) < 16:
        raise RadcapError(f"int8 calibration needs at least 16 readable images, got {len(calibration)}")
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    return nncf.quantize(model, dataset, subset_size=len(calibration), preset=nncf.QuantizationPreset.PERFORMANCE)


@dataclass(frozen=True)
class OptimizedMeta:
    precision: str
    source_version: str  # the encoder version whose weights these are
    source_spec: str
    input_size: int
    calibration_images: int  # 0 unless int8

    def save(self, folder: Path) -> None:
        (folder / META_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> OptimizedMeta:
        try:
            return cls(**json.loads((folder / META_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise RadcapError(f"{folder}: not an optimized encoder ({META_FILE}: {exc})") from None


def save_optimized(model, meta: OptimizedMeta, folder: Path) -> Path:
    ov = _openvino()
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / IR_FILE), compress_to_fp16=False)
    meta.save(folder)
    return folder


def openvino_forward(folder: Path, precision: str):
    """uint8 (B,S,S) numpy -> (pooled (B,1024), grid (B,7,7,1024), early (B,1536) or None) numpy, as
    `Encoder.forward_fn` gives. A build made before radcap 0.4 has no early-layer output: None, and a guard that
    needs it refuses the run (`radcap.domain.guard.DomainGuard.signal_scores`)."""
    ov = _openvino()
    core = ov.Core()
    hint = "bf16" if precision == "bf16" else "f32"  # int8 layers run int8 either way; the rest stays f32
    config = {"INFERENCE_PRECISION_HINT": hint}
    if os.environ.get("RADCAP_WORKER_THREADS"):  # a cluster worker's share of the cores (radcap.operations.cluster)
        config["INFERENCE_NUM_THREADS"] = os.environ["RADCAP_WORKER_THREADS"]
    compiled = core.compile_model(str(folder / IR_FILE), "CPU", config)
    request = compiled.create_infer_request()
    # By rank: the grid is the only 4-d output; of the 2-d ones, the pooled vector has 1,024 values, early 1,536.
    ranked = sorted(compiled.outputs, key=lambda o: (o.get_partial_shape().rank.get_length(), _width(o)))
    grid_out = ranked[-1]
    flat = ranked[:-1]
    pooled_out, early_out = flat[0], flat[1] if len(flat) > 1 else None

    def forward(batch: np.ndarray):
        out = request.infer([np.ascontiguousarray(batch, np.uint8)])
        early = None if early_out is None else np.asarray(out[early_out], np.float32)
        return np.asarray(out[pooled_out], np.float32), np.asarray(out[grid_out], np.float32), early

    return forward


def _width(output) -> int:
    last = output.get_partial_shape()[-1]
    return last.get_length() if last.is_static else 0


# --- Which precisions a captioner accepts -----------------------------------------------------------------
PRECISIONS_TAG = "precisions"  # registry tag of a captioner version: JSON list of the precisions it passed


def accepted_precisions(loaded) -> list[str]:
    """fp32 (what it was trained on) and every precision its registered version passed the check at. A
    captioner folder (not registered) accepts fp32 only."""
    if loaded.version == "local":
        return ["fp32"]
    try:
        passed = json.loads(store.version_tags(loaded.name, loaded.version).get(PRECISIONS_TAG, "[]"))
    except ValueError:
        passed = []
    return sorted({"fp32", *passed}, key=PRECISIONS.index)


def require_precision(loaded, precision: str) -> None:
    accepted = accepted_precisions(loaded)
    if check_precision(precision) not in accepted:
        raise RadcapError(
            f"{loaded.uri} has not passed the precision check at {precision} (accepts {', '.join(accepted)}): run "
            f"`radcap check-precision --model {loaded.uri} --precision {precision} --data DIR` on held-out data "
            f"first (features of DIR at {precision}: `radcap features --precision {precision}`)"
        )


OPTIMIZED_ENCODER = "radcap-encoder-optimized"


def register_optimized_encoder(folder: Path, tags: dict) -> str:
    """An optimized encoder's IR folder as a new version of `radcap-encoder-optimized` (in the active MLflow
    run), tagged with its source encoder version and precision (`find_optimized_encoder` looks it up by them)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image_path")]), outputs=Schema([ColSpec(Array("double"), "pooled")])
    )
    return store.register_pyfunc("pyfunc_encoder", {"encoder": folder}, OPTIMIZED_ENCODER, tags, signature)


def find_optimized_encoder(source_version: str, precision: str) -> tuple[str, Path] | None:
    """(models:/ URI, local IR folder) of the newest optimized build of `source_version` at `precision`."""
    from mlflow.exceptions import MlflowException

    try:
        versions = store.client().search_model_versions(f"name='{OPTIMIZED_ENCODER}'")
    except MlflowException:
        return None
    found = [
        v for v in versions if v.tags.get("source_version") == source_version and v.tags.get("precision") == precision
    ]
    if not found:
        return None
    newest = max(found, key=lambda v: int(v.version))
    metas = sorted(store.download(OPTIMIZED_ENCODER, newest.version).rglob(META_FILE))
    if not metas:
        raise RadcapError(f"models:/{OPTIMIZED_ENCODER}/{newest.version}: holds no {META_FILE}")
    return f"models:/{OPTIMIZED_ENCODER}/{newest.version}", metas[0].parent
