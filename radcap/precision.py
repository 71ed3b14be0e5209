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

from radcap.errors import RadcapError

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
    dataset = nncf.Dataset([calibration[i: i + 1] for i in range(len(calibration))])
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
    def load(cls, folder: Path) -> "OptimizedMeta":
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
    """uint8 (B,S,S) numpy -> (pooled (B,1024), grid (B,7,7,1024)) numpy, as `Encoder.forward_fn` gives."""
    ov = _openvino()
    core = ov.Core()
    hint = "bf16" if precision == "bf16" else "f32"  # int8 layers run int8 either way; the rest stays f32
    config = {"INFERENCE_PRECISION_HINT": hint}
    if os.environ.get("RADCAP_WORKER_THREADS"):  # a cluster worker's share of the cores (radcap.cluster)
        config["INFERENCE_NUM_THREADS"] = int(os.environ["RADCAP_WORKER_THREADS"])
    compiled = core.compile_model(str(folder / IR_FILE), "CPU", config)
    request = compiled.create_infer_request()
    pooled_out, grid_out = sorted(compiled.outputs, key=lambda o: o.get_partial_shape().rank.get_length())

    def forward(batch: np.ndarray):
        out = request.infer([np.ascontiguousarray(batch, np.uint8)])
        return np.asarray(out[pooled_out], np.float32), np.asarray(out[grid_out], np.float32)

    return forward


# --- Which precisions a captioner accepts -----------------------------------------------------------------
PRECISIONS_TAG = "precisions"  # registry tag of a captioner version: JSON list of the precisions it passed
FIDELITY = {"cosine": 0.99, "relative_metric_change": 0.02}
CHECKED_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def accepted_precisions(loaded) -> list[str]:
    """fp32 (what it was trained on) and every precision its registered version passed the check at. A
    captioner folder (not registered) accepts fp32 only."""
    if loaded.version == "local":
        return ["fp32"]
    from radcap.registry import version_tags

    try:
        passed = json.loads(version_tags(loaded.name, loaded.version).get(PRECISIONS_TAG, "[]"))
    except ValueError:
        passed = []
    return sorted({"fp32", *passed}, key=PRECISIONS.index)


def require_precision(loaded, precision: str) -> None:
    accepted = accepted_precisions(loaded)
    if check_precision(precision) not in accepted:
        raise RadcapError(
            f"{loaded.uri} has not passed the precision check at {precision} (accepts {', '.join(accepted)}): run "
            f"`radcap check-precision --model {loaded.uri} --precision {precision} --data DIR` on held-out data "
            f"first (features of DIR at {precision}: `radcap features --precision {precision}`)")


def _aligned(reference, candidate, precision: str):
    """The studies both CaptionSets hold, in the reference's order, and the pooled cosine of their views."""
    available = set(candidate.report_ids)
    common = [r for r in reference.report_ids if r in available]
    if not common:
        raise RadcapError(f"no study has both fp32 and {precision} features: run `radcap features --precision "
                          f"{precision}` on the same data")
    reference, candidate = reference.subset(common), candidate.subset(common)
    mask = reference.view_mask > 0
    a, b = reference.pooled[mask], candidate.pooled[mask]
    cosines = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return reference, candidate, cosines


def _verdict(precision: str, studies: int, cosines: np.ndarray, before: dict, after: dict, names, identical: float,
             identical_name: str) -> dict:
    """Each metric's relative change, and the failures against FIDELITY."""
    metrics, failures = {}, []
    for name in names:
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            continue  # METEOR without Java
        change = (new - old) / old if old else (0.0 if new == old else float("inf"))
        metrics[name] = {"fp32": round(old, 4), precision: round(new, 4), "relative_change": round(change, 4)}
        if abs(change) > FIDELITY["relative_metric_change"]:
            failures.append(f"{name} {change:+.1%}")
    if cosines.mean() < FIDELITY["cosine"]:
        failures.append(f"feature cosine {cosines.mean():.4f} < {FIDELITY['cosine']}")
    return {"precision": precision, "studies": studies, "cosine_mean": round(float(cosines.mean()), 5),
            "cosine_min": round(float(cosines.min()), 5), identical_name: round(identical, 4),
            "metrics": metrics, "bounds": FIDELITY, "passed": not failures, "failures": failures}


def fidelity_check(bundle, reference, candidate, precision: str, meteor: bool = True) -> dict:
    """The captioner's reports on the same studies from fp32 (`reference`) and `precision` (`candidate`)
    features (CaptionSets): pooled cosine, metrics of each against the references, the share of identical
    reports; passed when the cosine and every metric's relative change are within FIDELITY."""
    from radcap.metrics import caption_metrics

    reference, candidate, cosines = _aligned(reference, candidate, precision)
    fp32_reports = bundle.report(reference.features(slice(None)))
    reports = bundle.report(candidate.features(slice(None)))
    ids = reference.report_ids
    texts = {r: [text] for r, text in zip(ids, reference.texts)}
    before = caption_metrics(texts, dict(zip(ids, fp32_reports)), meteor)
    after = caption_metrics(texts, dict(zip(ids, reports)), meteor)
    identical = float(np.mean([x == y for x, y in zip(fp32_reports, reports)]))
    return _verdict(precision, len(ids), cosines, before, after, CHECKED_METRICS, identical, "identical_reports")


RETRIEVAL_METRICS = ("image_to_report_R@1", "image_to_report_R@5", "image_to_report_R@10", "mean_recall")


def retrieval_fidelity_check(bundle, index, reference, candidate, precision: str) -> dict:
    """The retriever on the same studies from fp32 and `precision` features: pooled cosine, recall of each (the
    gallery: those studies' reports), and the share of studies whose top-1 known report (what `radcap retrieve`
    answers first) is the same; passed when the cosine and every recall's relative change are within FIDELITY."""
    from radcap.retrieval import both_directions

    reference, candidate, cosines = _aligned(reference, candidate, precision)
    texts = bundle.text_embeddings(reference.texts)
    images = {name: bundle.image_embeddings(s.pooled, s.view_mask) for name, s in (("fp32", reference),
                                                                                   (precision, candidate))}
    before, after = (both_directions(images[name], texts, reference.texts) for name in ("fp32", precision))
    top1 = {name: [hit["item_id"].iloc[0] for hit in index.search(emb, "report", 1)] for name, emb in images.items()}
    identical = float(np.mean([x == y for x, y in zip(top1["fp32"], top1[precision])]))
    return _verdict(precision, len(reference), cosines, before, after, RETRIEVAL_METRICS, identical, "identical_top1")
