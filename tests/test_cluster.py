"""Scale-out on a real Dask `LocalCluster` (2 worker processes): features and captions come out the same as the
in-process path; a worker killed mid-run loses only its task in flight and every image ends up in exactly one
row; a re-run adds nothing; a bad cluster address is one line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radcap import read_captions
from tests.conftest import run_cli_here

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SMALL_TASKS = {
    "RADCAP_CLUSTER_TASK_IMAGES": "8",
    "RADCAP_ENCODER__CLUSTER_TASK_IMAGES": "8",
    "RADCAP_CAPTION__BATCH_SIZE": "4",
    "RADCAP_ENCODER__BATCH_SIZE": "4",
}


def summary_of(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def xray_folder(shared_data: Path, tmp_path_factory) -> Path:
    """40 real chest X-rays (PNG: one study each)."""
    folder = tmp_path_factory.mktemp("xrays")
    for path in sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[:40]:
        shutil.copyfile(path, folder / path.name)
    return folder


def test_a_bad_cluster_is_one_line(xray_folder, tmp_path, parrot_captioner, prefect_api):
    done = run_cli_here(
        "caption",
        "--input",
        str(xray_folder),
        "--out",
        str(tmp_path / "c"),
        "--model",
        str(parrot_captioner),
        "--cluster",
        "lcoal:2",
    )
    assert done.returncode == 2 and "expected local:N" in done.stderr and "Traceback" not in done.stderr
    done = run_cli_here(
        "caption",
        "--input",
        str(xray_folder),
        "--out",
        str(tmp_path / "c"),
        "--model",
        str(parrot_captioner),
        env={"RADCAP_CLUSTER": "tcp://127.0.0.1:1"},
    )
    assert done.returncode == 2 and "no Dask scheduler" in done.stderr and "Traceback" not in done.stderr


def test_features_on_a_cluster_match_in_process(tmp_path_factory, prefect_api):
    root = tmp_path_factory.mktemp("cluster-features")
    assert run_cli_here("sample", "--out", str(root / "sample"), "--studies", "10").returncode == 0
    sample, data = root / "sample", {}
    for name in ("local", "cluster"):
        data[name] = root / name
        done = run_cli_here(
            "ingest",
            "--format",
            "iu-xml",
            "--source",
            str(sample / "ecgen-radiology"),
            "--images",
            str(sample / "images"),
            "--views",
            str(sample / "indiana_projections.csv"),
            "--out",
            str(data[name]),
        )
        assert done.returncode == 0, done.stderr[-2000:]
    local = run_cli_here("--json", "features", "--data", str(data["local"]), "--encoder", "random:0", env=SMALL_TASKS)
    assert local.returncode == 0, local.stderr[-3000:]
    cluster = run_cli_here(
        "--json",
        "features",
        "--data",
        str(data["cluster"]),
        "--encoder",
        "random:0",
        "--cluster",
        "local:2",
        env=SMALL_TASKS,
    )
    assert cluster.returncode == 0, cluster.stderr[-3000:]
    assert "dashboard" in cluster.stderr + cluster.stdout
    assert summary_of(cluster)["encoded"] == summary_of(local)["encoded"] > 8  # more than one task

    from radcap.imaging.features import FeatureStore

    a, b = (FeatureStore(data[n] / "features").load("random-seed0", grid=True) for n in ("local", "cluster"))
    assert sorted(a["image_id"]) == sorted(b["image_id"])
    order = [b["image_id"].index(i) for i in a["image_id"]]
    # Same encoder, same batches; one compute thread per worker instead of two: equal up to float rounding.
    np.testing.assert_allclose(b["pooled"][order], a["pooled"], rtol=1e-4, atol=1e-5)
    # One part file per task (20 images over 2 workers: tasks of 8, at least 2 per worker), one in-process.
    import pyarrow.parquet as pq

    sizes = [pq.ParquetFile(p).metadata.num_rows for p in FeatureStore(data["cluster"] / "features").parts()]
    assert sizes == [8, 8, 4]
    assert len(FeatureStore(data["local"] / "features").parts()) == 1

    again = run_cli_here(
        "--json", "features", "--data", str(data["cluster"]), "--encoder", "random:0", "--cluster", "local:2"
    )
    assert again.returncode == 0 and summary_of(again)["encoded"] == 0  # a re-run encodes nothing


@pytest.fixture(scope="module")
def teller(xray_folder: Path, tmp_path_factory) -> Path:
    """A captioner whose report tells the 40 X-rays apart (tests.conftest.make_teller_captioner)."""
    from radcap.captioning.data import CaptionSet
    from tests.conftest import make_teller_captioner, random_encoder_features

    paths = sorted(xray_folder.glob("*.png"))
    pooled = np.zeros((len(paths), 2, 1024), np.float32)
    pooled[:, 0] = random_encoder_features(paths)
    view_mask = np.repeat([[1.0, 0.0]], len(paths), axis=0).astype(np.float32)
    data = CaptionSet([p.stem for p in paths], [""] * len(paths), pooled, view_mask)
    folder = tmp_path_factory.mktemp("teller") / "captioner"
    make_teller_captioner(folder, data)
    return folder


def test_captions_on_a_cluster_match_in_process(xray_folder, tmp_path, teller, prefect_api, dask_scheduler):
    outputs = {}
    for name, extra in (("local", []), ("cluster", ["--cluster", dask_scheduler])):
        done = run_cli_here(
            "--json",
            "caption",
            "--input",
            str(xray_folder),
            "--out",
            str(tmp_path / name),
            "--model",
            str(teller),
            *extra,
            env=SMALL_TASKS,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[name] = read_captions(tmp_path / name).sort_values("source_path")
    assert outputs["local"]["caption"].nunique() >= 3  # reports that depend on each image: a mix-up would show
    keys = ["study_id", "image_id", "view", "source_path", "sha256", "caption", "model", "encoder_version"]
    pd.testing.assert_frame_equal(
        outputs["local"][keys].reset_index(drop=True), outputs["cluster"][keys].reset_index(drop=True)
    )
    assert len(outputs["cluster"]) == 40


def test_a_runs_decoding_choice_reaches_the_decoder_in_process_and_on_a_cluster(
    xray_folder, tmp_path, prefect_api, dask_scheduler
):
    """A model saved to decode by consensus, but without the document frequencies that needs, cannot caption as
    saved (one line naming the fix); `--consensus-samples 0` captions with its beam, in both paths."""
    from tests.conftest import make_parrot_captioner

    model = make_parrot_captioner(
        tmp_path / "model",
        decoding={"beam_width": 3, "length_penalty": 0.7, "no_repeat_ngram": 3, "consensus_samples": 5},
    )
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(xray_folder.glob("*.png"))[:12]:
        shutil.copyfile(path, images / path.name)
    as_saved = run_cli_here(
        "caption", "--input", str(images), "--out", str(tmp_path / "as-saved"), "--model", str(model)
    )
    assert as_saved.returncode == 2 and "consensus_samples=0" in as_saved.stderr, as_saved.stderr[-2000:]
    assert "Traceback" not in as_saved.stderr
    for name, extra in (("local", []), ("cluster", ["--cluster", dask_scheduler])):
        done = run_cli_here(
            "--json",
            "caption",
            "--input",
            str(images),
            "--out",
            str(tmp_path / name),
            "--model",
            str(model),
            "--consensus-samples",
            "0",
            *extra,
            env=SMALL_TASKS,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        captions = read_captions(tmp_path / name)
        assert len(captions) == 12 and (captions["caption"] == "left pleural effusion.").all()


def _worker_pids(parent: int) -> list[int]:
    """The Dask worker processes of a `radcap ... --cluster local:N` process (multiprocessing children)."""
    import psutil

    try:
        children = psutil.Process(parent).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    workers = []
    for child in children:
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in command or ("forkserver" in command and "resource_tracker" not in command):
            workers.append(child.pid)
    return workers


def test_a_worker_killed_mid_run_loses_nothing_and_doubles_nothing(
    xray_folder, tmp_path, parrot_captioner, prefect_api
):
    import os

    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "out"
    # 20 tasks of 2 images: both workers stay busy, so the one killed has a task in flight.
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value() or "",
        **SMALL_TASKS,
        "RADCAP_CLUSTER_TASK_IMAGES": "2",
        "RADCAP_CAPTION__BATCH_SIZE": "2",
    }
    command = [
        sys.executable,
        "-m",
        "radcap.cli",
        "--json",
        "caption",
        "--input",
        str(xray_folder),
        "--out",
        str(out),
        "--model",
        str(parrot_captioner),
        "--cluster",
        "local:2",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        parts = list((out / ".parts").glob("captions-*.parquet")) if (out / ".parts").exists() else []
        workers = _worker_pids(process.pid)
        if parts and len(workers) == 2:  # work is under way on both: kill one worker in the middle of it
            killed, done_at_kill = workers[0], len(parts)
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=600)
    assert killed is not None, f"the run ended before a worker could be killed: {stderr[-2000:]}"
    assert done_at_kill < 20  # tasks were left when the worker died
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr

    table = read_captions(out)  # the dataset as any reader sees it
    assert len(table) == 40 and table["source_path"].is_unique  # every image exactly once
    assert sorted(table["source_path"]) == sorted(p.name for p in xray_folder.iterdir())
    assert not list((out / ".parts").glob("*.parquet"))
    assert json.loads(stdout.strip().splitlines()[-1])["captioned"] == 40

    again = run_cli_here(
        "--json",
        "caption",
        "--input",
        str(xray_folder),
        "--out",
        str(out),
        "--model",
        str(parrot_captioner),
        "--cluster",
        "local:2",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary_of(again)["new_images"] == 0 and summary_of(again)["captioned"] == 0
    assert len(read_captions(out)) == 40
