"""Servers radcap starts for a user in the foreground (`radcap app`: Streamlit; `radcap serve`: MLflow's scoring
server): the child stops when radcap is told to stop, and radcap exits when the child does.

Why: a service manager, `docker stop` or `kill` sends SIGTERM to the process it started, radcap, not to the
server radcap started; without forwarding, the server keeps running with ppid 1 and holds its port (and memory).
And should radcap itself be killed outright (SIGKILL, the OOM killer), the child is told by the kernel
(`PR_SET_PDEATHSIG`), since no handler of radcap's runs then.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Callable

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # prctl.h


def die_with_parent() -> None:
    """`preexec_fn` for a child server: SIGTERM to it when its parent dies, however it dies (Linux; elsewhere a
    no-op, and the forwarding in `supervise` is what stops the child)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(start: Callable[[], subprocess.Popen], grace_seconds: float = 15.0) -> int:
    """Start a child with `start()` and wait for it, passing it SIGTERM, SIGINT and SIGHUP as this process receives
    them (also one received while it was starting); a child still running `grace_seconds` after the first is
    killed. Returns the child's exit code (128 + N when signal N ended it)."""
    asked: list[tuple[int, float]] = []  # (signal, when)
    child: subprocess.Popen | None = None

    def forward(signum, _frame) -> None:
        asked.append((signum, time.monotonic()))
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        child = start()
        for signum, _ in list(asked):  # asked before the child existed
            child.send_signal(signum)
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0][1] > grace_seconds:
                    child.kill()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code
