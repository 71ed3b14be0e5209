"""The REST endpoint of a registered captioner (or retriever): MLflow's own scoring server, started the way
`mlflow models serve --env-manager local` starts it (the same backend), from this environment: no `uvicorn` on
PATH needed, no other environment built. POST /invocations, GET /ping; a bad image is an HTTP 400 naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from radcap.core.errors import RadcapError
from radcap.registry.store import parse_model_uri


def start_rest_server(uri: str, host: str, port: int, workers: int = 1) -> subprocess.Popen:
    """The scoring server of `uri` (a models:/ URI, resolved once: the version served is the one printed) as a
    child process that dies with its parent. Returns it running; it answers once the model has loaded."""
    from mlflow.pyfunc.backend import PyFuncBackend

    name, version = parse_model_uri(uri)
    # MLflow starts `uvicorn` by name: this environment's own first.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    backend = PyFuncBackend(config={}, env_manager="local", workers=workers)
    try:
        return backend.serve(f"models:/{name}/{version}", port, host, timeout=None, synchronous=False)
    except Exception as exc:  # MLflow raises its own types for a model it cannot read
        raise RadcapError(f"models:/{name}/{version}: cannot be served ({type(exc).__name__}: {exc})") from exc
