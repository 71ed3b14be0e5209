"""Captioning from a PACS over DICOMweb vs the same files from a folder (issue 29): studies per second through a
local Orthanc (QIDO-RS, WADO-RS, spool, caption, commit) beside `radcap caption --input FOLDER`, same model, same
studies, one process each, both compiled first on other images; then the peak RSS of a PACS run of N vs M
studies, each in a fresh process (flat: the spool and memory hold one chunk).

Studies: one-view studies of real chest X-rays (../shared/data/covid_cxr, resized to --size px) as DICOM with
fake patient attributes, uploaded to an Orthanc started here (Debian packages orthanc, orthanc-dicomweb).

    .venv/bin/python benchmarks/dicomweb_throughput.py --model out/bench/captioner --studies 200 --memory 100 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.dicom_factory import make_dicom  # noqa: E402
from tests.pacs_fixtures import Orthanc, pacs_env  # noqa: E402


def make_studies(n: int, size: int, into: Path, offset: int = 0) -> list[Path]:
    files = sorted((DATA / "covid_cxr" / "images").glob("*.png"))
    into.mkdir(parents=True, exist_ok=True)
    made = []
    for k in range(n):
        pixels = np.asarray(Image.open(files[(k + offset) % len(files)]).convert("L").resize((size, size)))
        made.append(make_dicom(into / f"s{k + offset:05d}.dcm", pixels, view_position="PA"))
    return made


def caption(source: str, out: Path, model: str, env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "radcap.cli",
            "--json",
            "caption",
            "--input",
            source,
            "--out",
            str(out),
            "--model",
            model,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(done.stderr[-3000:])
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss(source: str, out: Path, model: str, env: dict) -> float:
    code = (
        "import resource, sys; from radcap.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--json", "caption", "--input", source, "--out", str(out), "--model", model],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    return float(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="captioner bundle folder or models:/ URI")
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="image side in px")
    parser.add_argument("--memory", type=int, nargs=2, default=None, metavar=("N", "M"))
    args = parser.parse_args()
    env = {**pacs_env(), "PREFECT_LOGGING_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = Orthanc(tmp / "orthanc").start()
        try:
            warm = make_studies(8, args.size, tmp / "warm", offset=10_000)
            caption(str(tmp / "warm"), tmp / "warm-out", args.model, env)  # compiled models, warm caches
            files = make_studies(args.studies, args.size, tmp / "folder")
            server.upload(files)
            folder_s, folder = caption(str(tmp / "folder"), tmp / "out-folder", args.model, env)
            pacs_s, pacs = caption(server.dicomweb, tmp / "out-pacs", args.model, env)
            result = {
                "studies": args.studies,
                "folder_studies_per_s": round(folder["captioned"] / folder_s, 2),
                "dicomweb_studies_per_s": round(pacs["captioned"] / pacs_s, 2),
                "folder_s": round(folder_s, 1),
                "dicomweb_s": round(pacs_s, 1),
            }
            result["dicomweb_over_folder"] = round(result["dicomweb_studies_per_s"] / result["folder_studies_per_s"], 2)
            print(json.dumps(result), flush=True)
            if args.memory:
                for n in args.memory:
                    server.stop()
                    server = Orthanc(tmp / f"orthanc-{n}").start()
                    server.upload(make_studies(n, args.size, tmp / f"mem-{n}"))
                    rss = peak_rss(server.dicomweb, tmp / f"out-mem-{n}", args.model, env)
                    print(json.dumps({"studies": n, "peak_rss_mib": round(rss, 1)}), flush=True)
            del warm
        finally:
            server.stop()


if __name__ == "__main__":
    main()
