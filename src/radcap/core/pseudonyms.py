"""Keyed hashes of identifiers that must not be kept as they are (patient ids, accession numbers)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SALT_FILE = ".pseudonym_salt"


class Pseudonyms:
    """HMAC-SHA-256 (first 32 hex digits) keyed with `salt` (a deployment's secret: the same pseudonyms, hence the
    same splits, on every machine), else with a key made once per data directory (readable by its owner only): the
    same patient gets the same split group on every run, and no one without the key can recompute it (an unkeyed
    hash of a medical record number could be, by trying every number)."""

    def __init__(self, data_dir: Path, salt: str = ""):
        if salt:
            self.salt = salt.encode()
            return
        path = Path(data_dir) / SALT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            self.salt = path.read_text(encoding="utf-8").strip().encode()
        else:
            salt = secrets.token_hex(32)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(salt)
            self.salt = salt.encode()

    def __call__(self, kind: str, value: str | None) -> str | None:
        if not value:
            return None
        return hmac.new(self.salt, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:32]
