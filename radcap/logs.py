"""Logging policy: a user mistake (RadcapError) is reported in one line, never as a traceback."""

from __future__ import annotations

import logging

from radcap.errors import RadcapError


class _DropUserErrorTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RadcapError):
            record.exc_info, record.exc_text = None, None
        return True


def hide_user_error_tracebacks() -> None:
    """Attach the filter to every handler Prefect configured (call after importing Prefect)."""
    names = [None, "prefect", *logging.root.manager.loggerDict]
    for name in names:
        logger = logging.getLogger(name)
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, _DropUserErrorTraceback) for f in handler.filters):
                handler.addFilter(_DropUserErrorTraceback())
