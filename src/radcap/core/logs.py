"""What the command line prints: a user mistake (RadcapError) in one line, never a traceback or a block of
Prefect failure logs; Prefect's INFO logs on the console only with --verbose; everything with --debug.

Prefect keeps logging every run to its API (the Prefect UI) whatever is shown on the console: only the
console handler's level is changed (`PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL`), and the filter below is
attached to console handlers only.
"""

from __future__ import annotations

import logging
import os

from radcap.core.errors import RadcapError


def configure_console(verbose: bool, debug: bool) -> None:
    """Before Prefect is imported: its console shows warnings and errors by default (a level the user set in
    the environment is kept), INFO with --verbose or --debug (the option wins)."""
    for key in ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "MLFLOW_LOGGING_LEVEL"):  # MLflow: "Creating initial..."
        if verbose or debug:
            os.environ[key] = "INFO"
        else:
            os.environ.setdefault(key, "WARNING")


class _QuietUserErrors(logging.Filter):
    """Drops the records Prefect writes about a RadcapError (task failed, flow failed, the exception): the
    CLI says it in one line. With `debug`, keeps them with their tracebacks."""

    def __init__(self, debug: bool):
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debug:
            return True
        user_error = record.exc_info is not None and isinstance(record.exc_info[1], RadcapError)
        return not user_error and "RadcapError" not in record.getMessage()


def quiet_user_errors(debug: bool = False) -> None:
    """Attach the filter to every console handler Prefect configured (call after importing Prefect)."""
    names = [None, "prefect", *logging.root.manager.loggerDict]
    for name in names:
        logger = logging.getLogger(name)
        for handler in getattr(logger, "handlers", []):
            if "api" in type(handler).__name__.lower():
                continue  # the Prefect UI keeps the full record
            if not any(isinstance(f, _QuietUserErrors) for f in handler.filters):
                handler.addFilter(_QuietUserErrors(debug))


# The name the commands used before: every command calls it after importing its flow.
def hide_user_error_tracebacks() -> None:
    quiet_user_errors(DEBUG["on"])


DEBUG = {"on": False}
