"""Latency of one study's report, model warm (issue 18 target: p95 <= 1.0 s on CPU).

One two-view study per request (two real chest X-rays of ../shared/data/covid_cxr, PNG, as frontal and
lateral), `--requests` requests after `--warmup` ones:
(a) the page's call, `StudyReader.generate` (decode the uploaded bytes, encoder, decoder with the model's tuned
    decoding, retrieval when a retriever is given), with its own split of the time;
(b) the REST endpoint: `mlflow models serve -m MODEL --env-manager local` on a free port, the study posted as
    base64 JSON (`dataframe_split` with `image_base64`), timed at the client (HTTP + JSON + base64 included).
The default model is the demo champion (`make demo` registers it: Show-Attend-Tell 256/512, beam 5, on the
demo's DenseNet-121 encoder, which reads 96 px images), so run `make demo` first or give --model.
`--untrained` instead registers the worst case a user can meet: the default Show-Attend-Tell (256/512, the
default decoding: consensus among 20 samples of 10 beams, no-repeat 3) with the IU X-Ray vocabulary, untrained (so it
writes the 59 words of the length limit), on a
224 px DenseNet-121. `--dicom` sends the study as two 2,048 x 2,048 16-bit DICOM files (the real pixels
enlarged), as a PACS would, instead of the PNG files.

    .venv/bin/python benchmarks/serving_latency.py
    .venv/bin/python benchmarks/serving_latency.py --untrained --dicom
    .venv/bin/python benchmarks/serving_latency.py --model models:/radcap-captioner@champion --requests 200
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def percentiles(values: list[float]) -> dict:
    ms = np.asarray(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "max_ms": round(float(ms.max()), 1),
        "n": len(values),
    }


def page_latency(model: str, retriever: str | None, files: list[tuple[str, bytes]], warmup: int, n: int) -> dict:
    from radcap.captioning.bundle import load_captioner
    from radcap.retrieval.retriever import load_retriever
    from radcap.serving.study import StudyReader

    reader = StudyReader(load_captioner(model), load_retriever(retriever) if retriever else None, 5)
    for _ in range(warmup):
        reader.generate(files)
    totals, parts = [], {}
    for _ in range(n):
        start = time.perf_counter()
        report = reader.generate(files)
        totals.append(time.perf_counter() - start)
        for key, value in report.seconds.items():
            parts.setdefault(key, []).append(value)
    return {
        "total": percentiles(totals),
        **{k: percentiles(v) for k, v in parts.items()},
        "report_words": len(report.words),
        "description": reader.description,
    }


def rest_latency(model: str, files: list[tuple[str, bytes]], warmup: int, n: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            model,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"},
    )
    try:
        started = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 300:
                    sys.exit("mlflow models serve did not start")
                time.sleep(0.5)
        body = json.dumps(
            {
                "dataframe_split": {
                    "columns": ["study_id", "view", "image_base64"],
                    "data": [
                        ["s1", view, base64.b64encode(data).decode()]
                        for view, (_, data) in zip(("frontal", "lateral"), files)
                    ],
                }
            }
        ).encode()

        def call() -> dict:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as answer:
                return json.loads(answer.read())

        for _ in range(warmup):
            call()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            answer = call()
            times.append(time.perf_counter() - start)
        return {
            "total": percentiles(times),
            "startup_s": round(time.perf_counter() - started - sum(times), 1),
            "request_kib": round(len(body) / 1024),
            "caption": answer["predictions"][0]["caption"],
        }
    finally:
        server.terminate()
        server.wait(30)


def untrained_model() -> str:
    """Register the default-size Show-Attend-Tell, untrained, with the IU vocabulary; its models:/ URI."""
    import mlflow
    import pandas as pd

    from radcap.captioning.bundle import CaptionerBundle, build_model
    from radcap.core.model_config import CaptionerConfig
    from radcap.core.settings import DecoderSettings
    from radcap.metrics.scores import CiderD
    from radcap.registry.store import register_captioner
    from radcap.text.vocab import Vocabulary

    cfg = DecoderSettings()
    reports = pd.read_csv(DATA / "iu_xray" / "indiana_reports.csv")
    texts = (reports["findings"].fillna("") + " " + reports["impression"].fillna("")).tolist()
    vocab = Vocabulary.build(texts, cfg.min_count, cfg.max_length)
    config = CaptionerConfig(
        architecture=cfg.architecture,
        embed_dim=cfg.embed_dim,
        units=cfg.units,
        attention_units=cfg.attention_units,
        dropout=cfg.dropout,
        max_views=cfg.max_views,
        encoder_version="random-seed0",
        encoder_spec="random:0",
        data_version="latency-bench",
        decoding={
            "beam_width": cfg.beam_width,
            "length_penalty": cfg.length_penalty,
            "no_repeat_ngram": 3,
            "consensus_samples": cfg.consensus_samples,
        },
    )
    folder = Path(tempfile.mkdtemp(prefix="radcap-latency-")) / "captioner"
    cider = CiderD.of_reports(texts)  # what training on these reports attaches
    CaptionerBundle(build_model(config, len(vocab)), vocab, config, cider=cider).save(folder)
    mlflow.set_experiment("radcap-benchmarks")
    with mlflow.start_run(run_name="serving-latency-untrained"):
        version = register_captioner(folder, "radcap-captioner-latency-bench", {})
    print(f"untrained default model: vocabulary {len(vocab)}, models:/radcap-captioner-latency-bench/{version}")
    return f"models:/radcap-captioner-latency-bench/{version}"


def dicom_study(pngs: list[Path]) -> list[tuple[str, bytes]]:
    """The real pixels enlarged to 2,048 x 2,048, 16-bit, as extension-less DICOM files (frontal PA, lateral LL)."""
    import io

    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    out, study = [], generate_uid()
    for k, (png, view) in enumerate(zip(pngs, ("PA", "LL"))):
        pixels = np.asarray(Image.open(png).convert("L").resize((2048, 2048)), np.uint16) * 16
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(f"IM{k}", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.ViewPosition = study, generate_uid(), "CR", view
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2048, 2048, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append((f"IM{k}", buffer.getvalue()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models:/radcap-captioner-demo@champion")
    parser.add_argument("--retriever", default=None, help="a registered retriever for the page's closest reports")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip-rest", action="store_true")
    parser.add_argument("--skip-page", action="store_true")
    parser.add_argument("--untrained", action="store_true", help="the default-size model, untrained (worst case)")
    parser.add_argument("--dicom", action="store_true", help="2,048 px 16-bit DICOM files instead of the PNGs")
    args = parser.parse_args()

    from radcap.core.runtime import apply_offline_defaults, import_tensorflow_quietly

    apply_offline_defaults()
    import_tensorflow_quietly()
    xrays = sorted((DATA / "covid_cxr" / "images").glob("*.png"))[:2]
    files = dicom_study(xrays) if args.dicom else [(p.name, p.read_bytes()) for p in xrays]
    if args.untrained:
        args.model = untrained_model()
    result = {
        "model": args.model,
        "study": [f"{name} ({len(data) // 1024} KiB)" for name, data in files],
        "cpu_cores": os.cpu_count(),
    }
    if not args.skip_page:
        result["page"] = page_latency(args.model, args.retriever, files, args.warmup, args.requests)
        print(json.dumps(result, indent=2), flush=True)
    if not args.skip_rest:
        result["rest"] = rest_latency(args.model, files, args.warmup, args.requests)
        print(json.dumps({"rest": result["rest"]}, indent=2))


if __name__ == "__main__":
    main()
