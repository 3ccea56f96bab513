"""Log records for a daemon: one plain line each off a terminal, rich records on one.

journald timestamps every line itself and reads a ``<N>`` prefix as the syslog priority, so
under systemd a record is ``<6>INFO streamsv: message`` on exactly one line.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

# journald reads a "<N>" prefix on each stdout/stderr line as the syslog priority.
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class PlainFormatter(logging.Formatter):
    """``LEVEL logger: message`` on exactly one line; no timestamp (journald adds its own)."""

    def __init__(self, syslog_prefix: bool = False) -> None:
        super().__init__()
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            exc = record.exc_info[1]
            text += f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        text = " | ".join(part for part in text.splitlines() if part.strip()) or "-"
        line = f"{record.levelname} {record.name}: {text}"
        if self.syslog_prefix:
            line = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def _stream_is_journal(stream: Any) -> bool:
    """True when ``stream`` is the journald connection systemd handed us ($JOURNAL_STREAM=dev:inode)."""
    raw = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in raw.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def setup_logging(level: str = "info", stream: Any = None, tty: bool | None = None) -> logging.Handler:
    """Configure the ``streamsv`` logger; returns the handler it installed.

    A terminal gets rich's readable records; anything else (journald, a pipe, a file) gets
    ``PlainFormatter`` lines. ``tty`` defaults to ``sys.stdout.isatty()``: stdout carries the
    events, so "interactive" is judged there even though logs go to stderr.
    """
    stream = sys.stderr if stream is None else stream
    if tty is None:
        tty = bool(getattr(sys.stdout, "isatty", lambda: False)())
    handler: logging.Handler
    if tty:
        from rich.logging import RichHandler
        from rich.console import Console

        handler = RichHandler(console=Console(file=stream), markup=False, show_path=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PlainFormatter(syslog_prefix=_stream_is_journal(stream)))
    root = logging.getLogger("streamsv")
    for old in [h for h in root.handlers if getattr(h, "_streamsv", False)]:
        root.removeHandler(old)
    handler._streamsv = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False
    return handler
