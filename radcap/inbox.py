"""The inbox of the scheduled captioning flow: which batch folders are complete, and who takes each one.

A batch is a sub-folder of the inbox. It is complete when it holds the marker file (`.complete` by
default) or when nothing in it changed for `settle_seconds`. It is taken by creating
`OUT/.ledger/BATCH.claim` with O_CREAT|O_EXCL, which exactly one process can do, so two overlapping runs
never caption the same batch; `BATCH.done.json` records the result and the batch is never taken again.
A claim older than `claim_timeout` without a result was left by a crashed run: it is moved aside (a
rename, which again only one process can do) and the batch is claimed anew; since captioning skips what
is already written, the second run finishes the batch without duplicates.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from radcap.io import write_json


def newest_change(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for root, dirs, files in os.walk(folder):
        times += [os.stat(os.path.join(root, name)).st_mtime for name in dirs + files]
    return max(times)


def complete_batches(inbox: Path, marker: str, settle_seconds: float, now: float | None = None) -> list[Path]:
    now = time.time() if now is None else now
    batches = sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [b for b in batches if (b / marker).exists() or now - newest_change(b) >= settle_seconds]


class Ledger:
    def __init__(self, out: Path):
        self.root = Path(out) / ".ledger"

    def _claim(self, batch: str) -> Path:
        return self.root / f"{batch}.claim"

    def done_file(self, batch: str) -> Path:
        return self.root / f"{batch}.done.json"

    def is_done(self, batch: str) -> bool:
        return self.done_file(batch).exists()

    def claim(self, batch: str, timeout: float) -> bool:
        """True when this process now owns the batch."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.is_done(batch):
            return False
        path = self._claim(batch)
        try:
            if time.time() - path.stat().st_mtime > timeout:
                os.rename(path, path.with_suffix(f".stale-{uuid.uuid4().hex[:8]}"))  # one winner
        except FileNotFoundError:
            pass  # no claim, or another process moved the stale one first
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, handle)
        if self.is_done(batch):  # finished by another run between our check and our claim
            path.unlink(missing_ok=True)
            return False
        return True

    def finish(self, batch: str, summary: dict) -> None:
        write_json({"batch": batch, "finished": time.time(), **summary}, self.done_file(batch))
        self._claim(batch).unlink(missing_ok=True)

    def release(self, batch: str) -> None:
        """Give a batch back after a failure, so the next run retries it."""
        self._claim(batch).unlink(missing_ok=True)
