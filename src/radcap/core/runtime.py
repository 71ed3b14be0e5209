"""Process-wide defaults that make radcap run offline with no server started by hand."""

from __future__ import annotations

import os
from pathlib import Path


def workspace_dir() -> Path:
    """Where radcap keeps its state (Prefect home, MLflow store, Keras home).

    `RADCAP_WORKSPACE` wins; otherwise `.radcap/` in the current directory, like `mlruns/` or `.git/`.
    """
    return Path(os.environ.get("RADCAP_WORKSPACE", ".radcap")).resolve()


def workspace_salt() -> str:
    """A random salt made once per workspace (`WORKSPACE/id_salt`, readable by its owner only) and reused,
    so that hashed identifiers are stable across runs but cannot be recomputed from the UIDs elsewhere."""
    import secrets

    path = workspace_dir() / "id_salt"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        salt = path.read_text(encoding="utf-8").strip()
        if salt:
            return salt
        raise RuntimeError(f"{path} is empty: delete it to make a new salt (hashed ids will change)") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_hex(16))
    return path.read_text(encoding="utf-8").strip()


def offline_defaults(workspace: Path) -> dict[str, str]:
    return {
        # Prefect: ephemeral API server backed by SQLite in the workspace; no analytics.
        "PREFECT_HOME": str(workspace / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DO_NOT_TRACK": "true",
        # MLflow: local SQLite tracking store and registry, artifacts beside it; no telemetry.
        "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per model load, in the middle of the output
        # Keras would otherwise write to ~/.keras; nothing is ever downloaded (weights=None everywhere).
        "KERAS_HOME": str(workspace / "keras"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def apply_offline_defaults() -> Path:
    """Set each default only where the user has not set the variable; return the workspace."""
    workspace = workspace_dir()
    for key, value in offline_defaults(workspace).items():
        os.environ.setdefault(key, value)
    # Prefect creates its home without parents and fails when the workspace does not exist yet.
    for key in ("PREFECT_HOME", "KERAS_HOME"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    return workspace


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with the C++ side's stderr muted: its oneDNN and absl notices ("All log messages before
    absl::InitializeLog()...") ignore TF_CPP_MIN_LOG_LEVEL and would precede every command's output. A
    Python-level failure still raises as usual."""
    import sys

    if "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
