"""Shared fixtures. The workspace is a temporary folder so tests never touch a user's `.radcap/`."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# Before radcap (and so Prefect/MLflow) is imported anywhere. Each pytest-xdist worker gets a workspace of its
# own (its own MLflow store and Prefect home): the controller's, which the workers inherit, would be shared.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["RADCAP_WORKSPACE"] = tempfile.mkdtemp(prefix=f"radcap-tests-{os.environ['PYTEST_XDIST_WORKER']}-")
else:
    os.environ.setdefault("RADCAP_WORKSPACE", tempfile.mkdtemp(prefix="radcap-tests-"))

import numpy as np
import pytest

from radcap.core.runtime import apply_offline_defaults, offline_defaults, workspace_dir

if "PYTEST_XDIST_WORKER" in os.environ:  # the controller's MLflow store and Prefect home are not this worker's
    os.environ.update(offline_defaults(workspace_dir()))
apply_offline_defaults()

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RADCAP_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def missing(what: str) -> None:
    """Something a test needs is not on this machine: a skip that says why on a developer's machine, a failure
    in CI (CI=true), where a skipped test would pass unseen."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} (CI=true: required in CI)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data in ../shared/data (RADCAP_SHARED_DATA elsewhere)."""
    if not (SHARED_DATA / "README.md").exists():
        missing(f"real data not found at {SHARED_DATA} (set RADCAP_SHARED_DATA)")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Modules with the most slow tests first: pytest-xdist hands whole modules to workers in this order
    (`--dist loadfile`), and the longest jobs started first leave the shortest tail."""
    slow = Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.module.__name__])  # stable: a module's tests keep their order


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The skip count, always, so that a run that silently skipped real-data tests is seen as such."""
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"radcap: {skipped} test(s) skipped (CI={os.environ.get('CI', 'unset')})")


@pytest.fixture(scope="session")
def prefect_api():
    """One throwaway Prefect API (SQLite) for the whole session, instead of one ephemeral server per flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `radcap ...` as a user would, in a child process, against the session's Prefect API. With
    RADCAP_TEST_TIMING=FILE, each command's seconds are appended to FILE (where a slow suite spends its time)."""
    from prefect.settings import PREFECT_API_URL

    child_env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or "", **(env or {})}
    import time

    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "radcap.cli", *args], capture_output=True, text=True, env=child_env, timeout=600
    )
    _log_timing(time.perf_counter() - start, args)
    return done


def _log_timing(seconds: float, args: tuple[str, ...], how: str = "") -> None:
    """With RADCAP_TEST_TIMING=FILE, a command's seconds go to FILE (where a slow suite spends its time)."""
    if os.environ.get("RADCAP_TEST_TIMING"):
        with open(os.environ["RADCAP_TEST_TIMING"], "a") as log:
            test = os.environ.get("PYTEST_CURRENT_TEST", "")
            log.write(f"{seconds:7.1f} {test} {' '.join(args[:3])}{how}\n")


_CAPTURED: list = []


def run_cli_here(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`radcap ...` in this process (the same `main`, exit code and console text), for tests where the child
    process itself is not under test: it spares each call a TensorFlow import and an encoder build. The
    environment is `env` over this process's for the call only, and the settings are re-read before and after.
    Tests of what a user's shell sees (exit by signal, a quiet console from the first import, no traceback
    from a fresh interpreter) keep `run_cli`."""
    import contextlib
    import io
    import time

    import prefect.main  # noqa: F401  (its logging set-up closes other handlers' streams: done before the redirect)
    from prefect.settings import PREFECT_API_URL

    from radcap.cli import main
    from radcap.core.settings import get_settings

    saved = dict(os.environ)
    os.environ.update({"PREFECT_API_URL": PREFECT_API_URL.value() or "", **(env or {})})
    get_settings.cache_clear()
    out, err, code = io.StringIO(), io.StringIO(), 0
    _CAPTURED.extend((out, err))  # a handler made during the call may keep writing to them: never closed
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
    _log_timing(time.perf_counter() - start, args, " (in process)")
    return subprocess.CompletedProcess(["radcap", *args], code, out.getvalue(), err.getvalue())


def ingested_sample(root: Path, studies: int = 16, image_size: int | None = None, data: str = "data") -> Path:
    """The embedded phantom sample (`studies` studies of `image_size` px) written to `root/sample` and ingested
    into `root/<data>` in this process: a fixture's setup, where the `sample` and `ingest` commands are not what
    is tested (tests/test_cli.py and tests/test_cluster.py run them as a user does)."""
    from radcap.core.settings import get_settings
    from radcap.flows.ingest import ingest_reports
    from radcap.ingestion.phantoms import write_sample

    settings = get_settings()
    shape = {"studies": studies} | ({"image_size": image_size} if image_size else {})
    sample = Path(write_sample(root / "sample", settings.sample.model_copy(update=shape))["path"])
    ingest_reports(
        "iu-xml",
        sample / "ecgen-radiology",
        root / data,
        images=sample / "images",
        views=sample / "indiana_projections.csv",
        settings=settings,
    )
    return root / data


def make_tiny_captioner(
    folder: Path,
    texts: tuple[str, ...] = ("no acute disease.", "left pleural effusion."),
    seed: int = 0,
    decoding: dict | None = None,
    domain=None,
) -> Path:
    """An untrained, tiny Show-and-Tell bundle on the random:0 encoder: the real captioning code path at
    negligible cost (its reports are word salad; tests check where they go, not what they say)."""
    import keras

    from radcap.captioning.bundle import CaptionerBundle, build_model
    from radcap.core.model_config import CaptionerConfig
    from radcap.metrics.scores import CiderD
    from radcap.text.vocab import Vocabulary

    keras.utils.set_random_seed(seed)
    config = CaptionerConfig(
        architecture="show-tell",
        embed_dim=8,
        units=16,
        attention_units=8,
        dropout=0.0,
        max_views=2,
        encoder_version="random-seed0",
        encoder_spec="random:0",
        data_version="test",
        decoding=decoding or {"beam_width": 1, "no_repeat_ngram": 3},
    )
    vocab = Vocabulary.build(texts, 1, 12)
    cider = CiderD.of_reports(texts)  # as training attaches it
    CaptionerBundle(build_model(config, len(vocab)), vocab, config, domain, cider).save(folder)
    return folder


def make_parrot_captioner(
    folder: Path, report: str = "left pleural effusion.", steps: int = 80, decoding: dict | None = None
) -> Path:
    """A tiny Show-Attend-Tell bundle on the random:0 encoder, trained for a few steps to write `report` whatever
    it sees: the real attention, beam search and serving code paths, with a report a test can assert."""
    import keras
    import numpy as np

    from radcap.captioning.bundle import CaptionerBundle, build_model
    from radcap.core.model_config import CaptionerConfig
    from radcap.models.captioner import make_train_step
    from radcap.text.vocab import Vocabulary

    keras.utils.set_random_seed(0)
    config = CaptionerConfig(
        architecture="show-attend-tell",
        embed_dim=16,
        units=32,
        attention_units=16,
        dropout=0.0,
        max_views=2,
        encoder_version="random-seed0",
        encoder_spec="random:0",
        data_version="test",
        decoding=decoding or {"beam_width": 3, "length_penalty": 0.7, "no_repeat_ngram": 3},
    )
    vocab = Vocabulary.build((report, "no acute disease."), 1, 12)
    model = build_model(config, len(vocab))
    # Features at the scales real encoders give (the random:0 DenseNet's are ~0.2 at most), one view or two,
    # so that greedy and beam search both say `report` for any image.
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 0.5, 0.2, 0.05] * 2, np.float32)
    mask = np.array([[1, 1]] * 4 + [[1, 0]] * 4, np.float32)
    features = {
        "pooled": rng.random((8, 2, config.feature_dim), np.float32) * scale[:, None, None] * mask[..., None],
        "view_mask": mask,
        "grid": rng.random((8, 2, config.grid_cells, config.feature_dim), np.float32)
        * scale[:, None, None, None]
        * mask[..., None, None],
    }
    tokens = np.array(vocab.encode_padded([report] * 8), np.int32)
    step = make_train_step(model, keras.optimizers.Adam(1e-2))
    for _ in range(steps):
        step(features, tokens)
    CaptionerBundle(model, vocab, config).save(folder)
    return folder


TELLS = ("left pleural effusion.", "no acute disease.", "right upper lobe nodule.", "mild cardiomegaly.")


def random_encoder_features(paths: list[Path]) -> np.ndarray:
    """(N, 1024) pooled features of image files from the `random:0` encoder, through the streaming path every
    stage uses (so exactly what `radcap caption` computes for them)."""
    from radcap.imaging.encoders import resolve_encoder
    from radcap.imaging.features import stream_features

    encoder = resolve_encoder("random:0")
    batches = stream_features(paths, Path, encoder.forward_fn(), 16, encoder.input_size, grid=False)
    return np.concatenate([batch.features.pooled for batch in batches])


def make_teller_captioner(folder: Path, data, epochs: int = 40) -> list[str]:
    """A tiny Show-and-Tell trained through the real training loop to tell `data`'s studies apart: study k is
    given TELLS[k % 4], so a report depends on the study's features, with a margin no float noise crosses (its
    reports stay the same under 10% relative noise on the features). A path that mixes up, drops or corrupts
    features writes other reports. Saves the bundle to `folder`; returns its reports for `data`."""
    from radcap.captioning.data import CaptionSet
    from radcap.captioning.training import train_captioner
    from radcap.core.settings import DecoderSettings
    from radcap.text.vocab import Vocabulary

    texts = [TELLS[k % len(TELLS)] for k in range(len(data))]
    told = CaptionSet(data.report_ids, texts, data.pooled, data.view_mask)
    cfg = DecoderSettings(
        architecture="show-tell",
        embed_dim=32,
        units=64,
        dropout=0.0,
        epochs=epochs,
        min_epochs=epochs,
        min_count=1,
        batch_size=8,
        learning_rate=1e-2,
        beam_width=1,
        consensus_samples=0,
        length_penalty_grid=(),
    )
    extra = {"encoder_version": "random-seed0", "encoder_spec": "random:0", "data_version": "teller"}
    bundle = train_captioner(told, told, Vocabulary.build(texts, 1, 12), cfg, extra).bundle
    bundle.save(folder)
    reports = bundle.caption(told.features(slice(None)))
    assert len(set(reports)) >= 3, reports  # the fixture is only useful if its words depend on its input
    return reports


@pytest.fixture(scope="session")
def parrot_captioner(tmp_path_factory) -> Path:
    return make_parrot_captioner(tmp_path_factory.mktemp("parrot") / "captioner")


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory) -> Path:
    return make_tiny_captioner(tmp_path_factory.mktemp("tiny") / "captioner")


@pytest.fixture(scope="session")
def registered_parrot(parrot_captioner: Path) -> str:
    """The parrot captioner registered (as `radcap train` registers: a pyfunc logged as code), with the `champion`
    alias; its models:/ URI by alias."""
    import mlflow
    from mlflow import MlflowClient

    from radcap.registry.store import register_captioner

    name = "radcap-captioner-serving-test"
    mlflow.set_experiment("radcap-serving-test")
    with mlflow.start_run():
        version = register_captioner(parrot_captioner, name, {})
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return f"models:/{name}@champion"


@pytest.fixture(scope="session")
def dask_scheduler():
    """A Dask cluster of 2 worker processes for the session, given to commands as `--cluster tcp://...`, as a user
    names a cluster that runs on its own. Its workers import radcap once for every command that uses them, where
    `--cluster local:2` starts and stops a cluster inside each command (tested on its own in tests/test_cluster.py)."""
    import dask
    from distributed import LocalCluster

    from radcap.operations.cluster import worker_environment

    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env=worker_environment()
        )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
