"""The inbox of the scheduled captioning flow: which batch folders are complete, and who takes each one.

A batch is a sub-folder of the inbox. It is complete when it holds the marker file (`.complete` by
default) or when nothing in it changed for `settle_seconds`. A run takes a batch by writing a claim
`OUT/.ledger/BATCH.claim` holding a random token; `BATCH.done.json` records the result and the batch is
never taken again. Every claim operation (take, take over, finish, release) runs under one ledger lock
(`OUT/.ledger/.lock`, fcntl.flock), so checking a claim and acting on it is atomic across processes:
two runs can never both take over the same stale claim, and a run removes only a claim holding its token.
A claim is kept alive by a heartbeat (its modification time is refreshed every `timeout / 4`) while its
batch is captioned; a claim whose heartbeat stopped for `claim_timeout` was left by a crashed run and is
taken over. A heartbeat can also stall in a live run (a loaded machine, a long pause): the claim is then
taken over although its first holder still works. Two guards keep that harmless: captioning skips what is
already written, so the new owner finishes the batch without duplicates; and `finish` is a fenced step,
its last writes (`commit`) run under the ledger lock only while the claim still holds this run's token,
so a holder that lost its claim commits nothing and records nothing.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from radcap.core.io import exclusive_lock, write_json


def newest_change(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                times.append(os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:  # removed while we look: a change
                times.append(time.time())
    return max(times)


def complete_batches(inbox: Path, marker: str, settle_seconds: float, now: float | None = None) -> list[Path]:
    now = time.time() if now is None else now
    batches = sorted(p for p in inbox.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    return [b for b in batches if (b / marker).exists() or now - newest_change(b) >= settle_seconds]


class Claim:
    """This process's hold on one batch (see the module doc)."""

    def __init__(self, ledger: Ledger, batch: str, token: str, timeout: float):
        self.ledger, self.batch, self.token, self.timeout = ledger, batch, token, timeout

    def _mine(self) -> bool:
        try:
            return json.loads(self.ledger.claim_file(self.batch).read_text())["token"] == self.token
        except (OSError, ValueError, KeyError):
            return False

    def heartbeat(self) -> bool:
        """Refresh the claim's time; False when it is no longer ours (taken over after a long stall)."""
        with self.ledger.locked():
            if not self._mine():
                return False
            os.utime(self.ledger.claim_file(self.batch))
            return True

    @contextmanager
    def kept_alive(self) -> Iterator[Claim]:
        """Heartbeats every timeout/4 in a thread while the batch is worked on."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(max(self.timeout / 4, 0.05)):
                if not self.heartbeat():
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.batch}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def finish(self, summary: dict, commit: Callable[[], None] | None = None) -> bool:
        """Run `commit` (the batch's last writes), record the batch as done and drop the claim, all under the
        ledger lock; False, with nothing committed or recorded, if the claim was lost (taken over)."""
        with self.ledger.locked():
            if not self._mine():
                return False
            if commit is not None:
                commit()
            write_json({"batch": self.batch, "finished": time.time(), **summary}, self.ledger.done_file(self.batch))
            self.ledger.claim_file(self.batch).unlink()
            return True

    def release(self) -> None:
        """Give the batch back (after a failure), so the next run retries it; only our own claim is removed."""
        with self.ledger.locked():
            if self._mine():
                self.ledger.claim_file(self.batch).unlink()


class Ledger:
    def __init__(self, out: Path):
        self.root = Path(out) / ".ledger"

    @contextmanager
    def locked(self) -> Iterator[None]:
        with exclusive_lock(self.root / ".lock", 600.0, f"{self.root}"):
            yield

    def claim_file(self, batch: str) -> Path:
        return self.root / f"{batch}.claim"

    def done_file(self, batch: str) -> Path:
        return self.root / f"{batch}.done.json"

    def is_done(self, batch: str) -> bool:
        return self.done_file(batch).exists()

    def claim(self, batch: str, timeout: float) -> Claim | None:
        """A Claim when this process now owns the batch; None when it is done or held by a live claim."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.locked():
            if self.is_done(batch):
                return None
            path = self.claim_file(batch)
            if path.exists():
                if time.time() - path.stat().st_mtime <= timeout:
                    return None  # held, and its heartbeat is recent
                path.rename(path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}"))  # crashed owner
            token = uuid.uuid4().hex
            write_json({"token": token, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, path)
            return Claim(self, batch, token, timeout)
