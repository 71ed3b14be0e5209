"""Errors that are the user's to fix: the CLI prints them in one line and exits 2, without a traceback."""


class RadcapError(Exception):
    """A problem with the user's input or configuration (missing file, wrong columns, bad option)."""
