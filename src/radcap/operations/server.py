"""A local Prefect server kept alive between commands (`radcap server start|stop|status`).

Without it, every command that runs a flow starts Prefect's temporary server (SQLite in the workspace) and
stops it at the end: zero setup, ~8-12 s per command. With it, commands find the running server through
`WORKSPACE/server.json` and connect at once. A user's own `PREFECT_API_URL` always wins over both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from radcap.core.errors import RadcapError
from radcap.core.runtime import workspace_dir


def state_file() -> Path:
    return workspace_dir() / "server.json"


def _healthy(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def running() -> dict | None:
    """The recorded server when its process lives and its API answers, else None."""
    path = state_file()
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if _alive(int(state["pid"])) and _healthy(state["api_url"]) else None


def use_running_server() -> str | None:
    """Point this process at the kept-alive server (unless the user set PREFECT_API_URL); its URL or None."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    state = running()
    if state:
        os.environ["PREFECT_API_URL"] = state["api_url"]
        return state["api_url"]
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(port: int | None = None, wait_seconds: float = 120.0) -> dict:
    """Start `prefect server start` in the background (its own session, log in the workspace) and wait
    until its API answers."""
    if (state := running()) is not None:
        return {**state, "started": False}
    port = port or _free_port()
    log = workspace_dir() / "prefect-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PREFECT_API_URL": ""},
        )
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RadcapError(f"the Prefect server stopped at start (exit {process.returncode}); see {log}")
        if _healthy(api_url, timeout=1.0):
            state = {"pid": process.pid, "api_url": api_url, "port": port, "log": str(log)}
            state_file().write_text(json.dumps(state), encoding="utf-8")
            return {**state, "started": True}
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise RadcapError(f"the Prefect server did not answer within {wait_seconds:.0f} s; see {log}")


def stop() -> dict:
    """Stop the kept-alive server (its whole process group) and forget it."""
    path = state_file()
    if not path.exists():
        return {"stopped": False, "reason": "no server was started with `radcap server start`"}
    state = json.loads(path.read_text(encoding="utf-8"))
    pid = int(state["pid"])
    if _alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return {"stopped": True, "pid": pid, "api_url": state["api_url"]}
