"""`radcap app` and `radcap serve` start a server as a child: stopping radcap (SIGTERM as a service manager sends
it, SIGINT as Ctrl-C, or SIGKILL) leaves no child behind holding the port, and radcap exits when its server does."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.test_app_browser import free_port, wait_for

# A parent that supervises one child server; the child ignores nothing, says when it is running (a signal that
# lands while Python is still starting kills it with exit code 1, not by the signal) and sleeps until stopped.
PARENT = textwrap.dedent(
    """
    import subprocess, sys
    from radcap.operations.processes import die_with_parent, supervise

    def start():
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(600)"],
            preexec_fn=die_with_parent,
        )
        print(child.pid, flush=True)
        return child

    sys.exit(supervise(start))
    """
)


def start_parent() -> tuple[subprocess.Popen, int]:
    """The parent, and its child's pid once the child is running (both print to the one pipe, in either order)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    lines = [parent.stdout.readline().strip() for _ in range(2)]
    assert "ready" in lines, lines
    return parent, int(next(line for line in lines if line.isdigit()))


def gone(pid: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_the_parent_stops_its_server(stop):
    parent, child = start_parent()
    assert psutil.pid_exists(child)
    parent.send_signal(stop)
    parent.wait(30)
    assert gone(child), f"the child {child} outlived its parent stopped by {stop.name}"
    if stop != signal.SIGKILL:  # the child was stopped by the forwarded signal, and the parent says so
        assert parent.returncode == 128 + stop


def test_the_parent_exits_when_its_server_exits():
    parent, child = start_parent()
    psutil.Process(child).kill()
    assert parent.wait(30) == 128 + signal.SIGKILL


def _stop_and_check(argv: list[str], health: str, log: Path, stop: signal.Signals) -> int:
    with open(log, "w") as out:
        radcap = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(health, radcap, 240)
        servers = descendants(radcap.pid)
        assert servers, "no server process was started"
        radcap.send_signal(stop)
        code = radcap.wait(60)
        left = [p.pid for p in servers if not gone(p.pid)]
        assert not left, f"server processes left after {stop.name}: {left}\n{log.read_text()[-2000:]}"
        return code
    finally:
        if radcap.poll() is None:
            radcap.kill()


@pytest.mark.slow
@pytest.mark.realdata
def test_radcap_app_stopped_leaves_no_streamlit_behind(parrot_captioner: Path, tmp_path: Path):
    port = free_port()
    argv = [sys.executable, "-m", "radcap.cli", "app", "--model", str(parrot_captioner), "--retriever", ""]
    code = _stop_and_check(
        [*argv, "--port", str(port)], f"http://127.0.0.1:{port}/_stcore/health", tmp_path / "app.log", signal.SIGTERM
    )
    assert code == 0  # stopped as asked


@pytest.mark.slow
@pytest.mark.realdata
def test_radcap_serve_stopped_leaves_no_server_behind(registered_parrot: str, tmp_path: Path):
    port = free_port()
    argv = [sys.executable, "-m", "radcap.cli", "serve", "--model", registered_parrot, "--port", str(port)]
    code = _stop_and_check(argv, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", signal.SIGINT)
    assert code == 0
