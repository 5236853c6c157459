"""Exceptions that reach the user as one clear line, never a traceback."""


class XenwbError(Exception):
    """A workbench error (bad input, bad option): one line, exit status 2."""

    exit_status = 2


class GuestImageError(XenwbError):
    """The guest file cannot be booted: not ELF, truncated, wrong machine, no Xen notes."""
