"""DICOM UIDs: the one rule for whether a value is one (PS3.5 9.1: digits and dots, at most 64 characters)."""

from __future__ import annotations

import re
from typing import Any

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(value: Any) -> str | None:
    """The UID, stripped, or None when the value is not one (missing, multi-valued, garbage, too long)."""
    text = str(value).strip() if value is not None else ""
    return text if len(text) <= 64 and UID.match(text) else None
