"""Scale-out on Dask (`dask.distributed`): the fan-out stages (features, captioning, retrieval) split their work
into tasks of whole image batches or whole studies, each of which writes one atomic part, so Dask may run a
task again (a worker died) without ever making a second copy.

`--cluster local:N` starts a `LocalCluster` of N worker processes (one thread each) on this machine;
`--cluster tcp://HOST:8786` (or `RADCAP_CLUSTER`) uses a running scheduler. Workers need the same radcap
installed, the inputs and the output folder on a filesystem they all see, and the MLflow tracking URI of the
models (README "Scaling out"). Each worker process loads a model once, on its first task (`worker_cached`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from radcap.core.errors import RadcapError

T = TypeVar("T")
log = logging.getLogger("radcap.operations.cluster")

# Per worker process: models loaded by earlier tasks (a captioner and its encoder load in seconds; a task
# encodes a few hundred images, so loading per task would cost as much as the work).
_LOADED: dict[tuple, object] = {}
_LOADING = threading.Lock()


def worker_cached(key: tuple, load: Callable[[], T]) -> T:
    """`load()` once per process and `key` (a worker runs tasks of one run on one thread, but be safe)."""
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = load()
        return _LOADED[key]  # type: ignore[return-value]


def parse_cluster(spec: str | None) -> tuple[str, int | str] | None:
    """None (in-process), ("local", N) or ("address", "tcp://host:port"); anything else is a user error."""
    if spec in (None, "", "none", "in-process"):
        return None
    if spec.startswith("local:"):
        try:
            workers = int(spec.removeprefix("local:"))
        except ValueError:
            workers = 0
        if not 1 <= workers <= 512:
            raise RadcapError(f"--cluster {spec}: expected local:N with N from 1 to 512 worker processes")
        return "local", workers
    if spec.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        return "address", spec
    raise RadcapError(f"--cluster {spec}: expected local:N or a scheduler address (tcp://HOST:8786)")


def worker_environment() -> dict[str, str]:
    """What worker processes inherit: radcap's offline defaults and one compute thread each (N workers on N
    cores; TensorFlow and OpenVINO would otherwise each start a thread per core)."""
    keep = {k: v for k, v in os.environ.items() if k.startswith(("RADCAP_", "PREFECT_", "MLFLOW_", "KERAS_"))}
    return {
        **keep,
        "OMP_NUM_THREADS": "1",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "RADCAP_WORKER_THREADS": "1",
        "DO_NOT_TRACK": "true",
    }


def announce(message: str) -> None:
    """Where the cluster is and its dashboard: on the terminal whatever the log level (the user opens it)."""
    import sys

    log.info(message)
    print(message, file=sys.stderr, flush=True)


@contextmanager
def dask_client(spec: str | None, announce: Callable[[str], None] = announce) -> Iterator[object | None]:
    """A `distributed.Client` for `spec` (see `parse_cluster`), or None for the in-process path. A local
    cluster is started here and stopped on exit; a remote one is only connected to."""
    if spec is not None and not isinstance(spec, str):  # already a Client (a flow holding one for many tasks)
        yield spec
        return
    parsed = parse_cluster(spec)
    if parsed is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RadcapError("--cluster needs Dask: pip install -c constraints.txt -e '.[cluster]'") from None
    kind, value = parsed
    if kind == "local":
        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 (memory back to the OS sooner); for workers
        # that allocate a few large batch arrays per second that costs ~7% of throughput (measured,
        # benchmarks/cluster_throughput.py), and radcap's memory per worker is bounded by its batches anyway.
        # Its profiler samples every worker thread's stack every 10 ms (the profile page), with the GIL held.
        with dask.config.set({"distributed.nanny.pre-spawn-environ": {}, "distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(
                n_workers=int(value),
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                env=worker_environment(),
                silence_logs=logging.ERROR,
            )
        try:
            with Client(cluster) as client:
                announce(f"Dask: local cluster of {value} worker processes; dashboard {client.dashboard_link}")
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(str(value), timeout="10s")
    except OSError as exc:
        raise RadcapError(f"--cluster {value}: no Dask scheduler answers there ({exc})") from None
    try:
        workers = len(client.scheduler_info().get("workers", {}))
        announce(f"Dask: scheduler {value} with {workers} workers; dashboard {client.dashboard_link}")
        yield client
    finally:
        client.close()


def task_size(client, items: int, cap: int, batch_size: int, per_worker: int = 2) -> int:
    """Images per task: at most `cap`, but small enough that every worker gets `per_worker` tasks (a short run
    on many workers still spreads), in whole batches."""
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    size = min(cap, -(-items // (workers * per_worker)))
    return max(batch_size, -(-size // batch_size) * batch_size)


def chunked(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def run_tasks(
    client,
    function: Callable,
    chunks: list,
    common: tuple,
    run_id: str,
    weights: list[int],
    progress: str | None = None,
) -> Iterator[tuple[int, Any]]:
    """Submit `function(chunk, number, run_id, *common)` per chunk under a stable key (a resubmission is the
    same task), and yield (number, result) as they finish, advancing a progress bar by each chunk's `weights`."""
    from distributed import as_completed
    from tqdm import tqdm

    futures = {
        client.submit(
            function, chunk, number, run_id, *common, key=f"{function.__name__}-{run_id}-{number:06d}", pure=False
        ): number
        for number, chunk in enumerate(chunks)
    }
    with tqdm(total=sum(weights), desc=progress or "", unit="img", disable=progress is None) as bar:
        for future in as_completed(futures):
            result = future.result()  # a task that failed on every try raises here, with its worker's traceback
            bar.update(weights[futures[future]])
            yield futures[future], result
