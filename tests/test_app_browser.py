"""`radcap app` end to end, as a user meets it: the command starts the server, a real headless browser
(Debian's Chromium driven by Playwright) uploads a real chest X-ray and a broken file, and reads the page."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import missing

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
REPORT = "left pleural effusion."


def chromium() -> str:
    """The browser's executable; CI must have one (`.ci/run` installs Debian's `chromium`)."""
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None:
        missing("no Chromium on PATH (apt install chromium; .ci/run installs it)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s")


@contextmanager
def running_server(argv: list[str], health_url: str, log: Path, seconds: float = 180, env: dict | None = None):
    """A server process started as a user would, its output in `log`; yields once `health_url` answers 200 and
    stops the process afterwards."""
    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        with open(log) as reader:
            server.stdout = reader  # wait_for quotes it when the server exits early
            wait_for(health_url, server, seconds)
            yield server
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def served(parrot_captioner: Path, tmp_path_factory):
    """`radcap app` as a user starts it, on a free port; its log is read after the test."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "server.log"
    argv = [
        sys.executable,
        "-m",
        "radcap.cli",
        "app",
        "--model",
        str(parrot_captioner),
        "--retriever",
        "",
        "--port",
        str(port),
    ]
    with running_server(argv, f"http://127.0.0.1:{port}/_stcore/health", log):
        yield f"http://127.0.0.1:{port}", log


def test_a_browser_uploads_a_study_and_reads_the_report(served, shared_data: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    url, log = served
    xray = sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(xray.read_bytes()[:300])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.get_by_text("Upload a study's images")).to_be_visible(timeout=120_000)
            page.locator('input[type="file"]').set_input_files(str(xray))
            expect(page.get_by_text(REPORT, exact=True)).to_be_visible(timeout=120_000)
            expect(page.get_by_text("Findings the report states")).to_be_visible()
            expect(page.get_by_text("Effusion").first).to_be_visible()
            expect(page.get_by_text("Where the model looked")).to_be_visible()
            expect(page.get_by_text(f"frontal: {xray.name}")).to_be_visible()

            page.reload()
            page.locator('input[type="file"]').set_input_files(str(broken))
            expect(page.get_by_text("broken.png", exact=False).last).to_be_visible(timeout=60_000)
            expect(page.locator('[data-testid="stAlert"]').filter(has_text="broken.png")).to_be_visible(timeout=60_000)
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    assert "Traceback" not in Path(log).read_text()
