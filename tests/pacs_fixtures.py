"""A real PACS for tests: Orthanc (Debian packages `orthanc`, `orthanc-dicomweb`) on a free localhost port with
its own storage and authentication on, and a fault-injecting HTTP proxy in front of it."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.conftest import missing

USER, PASSWORD = "radcap", "not-a-real-secret"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"dicomweb:{self.url}/dicom-web"

    def start(self) -> Orthanc:
        binary = shutil.which("Orthanc")
        if binary is None or not PLUGIN.exists():
            missing("Orthanc with its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb)")
        config = {
            "Name": "radcap-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
            "OverwriteInstances": True,
        }
        (self.root / "storage").mkdir(parents=True, exist_ok=True)
        (self.root / "orthanc.json").write_text(json.dumps(config))
        log = (self.root / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [binary, str(self.root / "orthanc.json")], stdout=log, stderr=log, cwd=self.root, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not start: {(self.root / 'orthanc.log').read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def upload(self, paths: list[Path]) -> None:
        for path in paths:
            reply = requests.post(f"{self.url}/instances", data=path.read_bytes(), auth=(USER, PASSWORD), timeout=30)
            reply.raise_for_status()

    def instances(self, study_uid: str | None = None, modality: str | None = None) -> list[dict]:
        """QIDO-RS instances (DICOM JSON), of one study and modality when given."""
        filters = {}
        if study_uid:
            filters["StudyInstanceUID"] = study_uid
        if modality:
            filters["Modality"] = modality
        reply = requests.get(f"{self.url}/dicom-web/instances", params=filters, auth=(USER, PASSWORD), timeout=30)
        reply.raise_for_status()
        return reply.json()


def pacs_env() -> dict:
    return {"RADCAP_PACS__USERNAME": USER, "RADCAP_PACS__PASSWORD": PASSWORD}


class FaultyProxy(http.server.ThreadingHTTPServer):
    """Forwards to `upstream`; `fault(request_number, method, path)` may return a fault for that request:
    "503", "timeout" (no answer for a while), "truncate" (half the body, the full Content-Length), "close"
    (half the body, no length, then the connection closed), "content-type" (the body labelled text/html),
    "endless" (a body that never ends), "endless-local" (the same without asking upstream), "refuse" (the
    connection closed at once), ("mangle", body -> body, content type or None), or a callable run first."""

    daemon_threads = True

    def __init__(self, upstream: str, fault: Callable[[int, str, str], object] = lambda n, m, p: None):
        self.upstream, self.fault, self.count, self.lock = upstream, fault, 0, threading.Lock()
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def dicomweb(self) -> str:
        return f"dicomweb:http://127.0.0.1:{self.server_address[1]}/dicom-web"

    def close(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _handle(self) -> None:
        server: FaultyProxy = self.server  # type: ignore[assignment]
        with server.lock:
            server.count += 1
            number = server.count
        fault = server.fault(number, self.command, self.path)
        if callable(fault):
            fault = fault()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if fault == "refuse":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "503":
            self._reply(503, b"busy", "text/plain")
            return
        if fault == "timeout":
            server.stopping.wait(5)
            self.close_connection = True
            return
        if fault == "endless-local":  # no upstream: a multipart answer that never ends
            self._endless(200, 'multipart/related; type="application/dicom"; boundary=b')
            return
        host = server.upstream.removeprefix("http://")
        upstream = http.client.HTTPConnection(host, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "accept-encoding")}
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            reply = upstream.getresponse()
            data = reply.read()
        except OSError:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        finally:
            upstream.close()
        content_type = reply.getheader("Content-Type", "application/octet-stream")
        if fault == "content-type":
            content_type = "text/html"
        if isinstance(fault, tuple) and fault[0] == "mangle":  # ("mangle", body -> body, content type or None)
            data, content_type = fault[1](data), fault[2] or content_type
        if fault in ("truncate", "close"):  # half the body: with the full length announced, or none
            length = {"Content-Length": str(len(data))} if fault == "truncate" else {"Connection": "close"}
            self._head(reply.status, content_type, length)
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        if fault == "endless":
            self._endless(reply.status, content_type)
            return
        self._reply(reply.status, data, content_type)

    def _head(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _endless(self, status: int, content_type: str) -> None:
        """A body that never ends (until the proxy closes)."""
        server: FaultyProxy = self.server  # type: ignore[assignment]
        self._head(status, content_type, {"Connection": "close"})
        try:
            while not server.stopping.is_set():
                self.wfile.write(b"\0" * 65536)
        except OSError:
            pass
        self.close_connection = True

    def _reply(self, status: int, data: bytes, content_type: str) -> None:
        self._head(status, content_type, {"Content-Length": str(len(data))})
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _handle
