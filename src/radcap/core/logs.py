"""What the command line prints: a user mistake (RadcapError) in one line, never a traceback or a block of
Prefect failure logs; Prefect's INFO logs on the console only with --verbose; everything with --debug.

Prefect keeps logging every run to its API (the Prefect UI) whatever is shown on the console: only the
console handler's level is changed (`PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL`), and the filter below is
attached to console handlers only.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

from radcap.core.errors import RadcapError

LOG_FILE = "logs/radcap.log"  # under the workspace (.radcap/)


def configure_console(verbose: bool, debug: bool, workspace: Path | None = None) -> None:
    """Before Prefect is imported: its console shows warnings and errors by default (a level the user set in
    the environment is kept), INFO with --verbose or --debug (the option wins). Libraries' Python warnings
    (deprecations, MLflow's advice on logging models) go to the workspace's log file, not the console, unless
    --verbose or --debug: the console keeps progress, summaries and what the user can act on."""
    for key in ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "MLFLOW_LOGGING_LEVEL"):  # MLflow: "Creating initial..."
        if verbose or debug:
            os.environ[key] = "INFO"
        else:
            os.environ.setdefault(key, "WARNING")
    if workspace is not None:
        library_notices_to_file(workspace / LOG_FILE, also_console=verbose or debug)


def library_notices_to_file(path: Path, also_console: bool) -> None:
    """Python warnings and radcap's record of library chatter (`library_chatter`) are written to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.captureWarnings(True)
    for name in ("py.warnings", CHATTER):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)  # configured again in one process (`main` called twice): one handler
            old.close()
        logger.addHandler(handler)
        logger.propagate = also_console


CHATTER = "radcap.library"


@contextmanager
def library_chatter() -> Iterator[None]:
    """What a library prints straight to stderr inside this block (MLflow's "Successfully registered model",
    "Created version"), as records of the `radcap.library` logger: in the log file, not the console."""
    captured = io.StringIO()
    try:
        with redirect_stderr(captured):
            yield
    finally:
        for line in captured.getvalue().splitlines():
            if line.strip():
                logging.getLogger(CHATTER).info(line)


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
