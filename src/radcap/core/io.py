"""Atomic, contract-checked reads and writes. A reader never sees a half-written file."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from radcap.core.errors import RadcapError
from radcap.data_contracts import REJECTS, Contract, ContractError

_UMASK = os.umask(0)
os.umask(_UMASK)


def new_run_id() -> str:
    """Names one run's part files: nanosecond start time, so parts sort in run order (the newest row of an
    item wins), and a random suffix, so two runs started in the same nanosecond never replace each other's."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync it and rename it over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(path: Path, wait_seconds: float, what: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (fcntl.flock: released by the kernel when the process dies,
    so a crashed run never leaves a lock behind). Another holder is waited for up to `wait_seconds`, then
    RadcapError names it. Works on local filesystems and NFSv4; see README "Scaling out" for shared storage."""
    import fcntl
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
                    raise RadcapError(
                        f"{what} is being written by another radcap run ({holder}); wait for it "
                        "to finish or write elsewhere"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_table(data: pd.DataFrame | pa.Table, path: Path, contract: Contract) -> int:
    """Validate against `contract` and write Parquet atomically; return the row count."""
    table = contract.validate(data)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table.num_rows


def write_rejects(rows: list[dict], path: Path) -> int:
    """A REJECTS table from reject rows (an empty, typed table when there are none)."""
    return write_table(pd.DataFrame(rows, columns=REJECTS.column_names) if rows else REJECTS.empty(), path, REJECTS)


def read_table(path: Path, contract: Contract) -> pd.DataFrame:
    """Read a Parquet table and check it still satisfies its contract."""
    if not path.exists():
        raise RadcapError(f"{path}: not found (run the stage that writes it first)")
    try:
        table = pq.read_table(path)
        return contract.validate(table).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise RadcapError(f"{path}: not a readable Parquet file: {exc}") from exc
    except ContractError as exc:
        raise RadcapError(f"{path}: {exc}") from exc


def write_json(payload: dict, path: Path, indent: int | None = 2) -> None:
    """Atomically; `indent=None` writes one line (large tables)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=indent, sort_keys=True, default=str) + "\n", encoding="utf-8")


def files_fingerprint(paths: list[Path], settings_dump: dict) -> str:
    """Hash of every file's path, size and modification time under `paths`, plus `settings_dump`: cheap (no
    file is read) and it changes whenever a file is added, removed, replaced or edited."""
    digest = hashlib.sha256(json.dumps(settings_dump, sort_keys=True, default=str).encode())
    for path in paths:
        files = [path] if path.is_file() else sorted(Path(r) / f for r, _, fs in os.walk(path) for f in fs)
        for file in files:
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
