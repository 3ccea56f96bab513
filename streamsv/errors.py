"""The one exception type that reaches users as a one-line message, and how user text is shown in it."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

SHOWN_MAX_CHARS = 160   # a path of 4,096 bytes is still reported on one readable line


class StreamsvError(Exception):
    """A problem the user can fix (bad file, bad name, bad config, missing device).

    The CLI prints ``error: <message>`` and exits non-zero; no traceback.
    """


def shown(text: object) -> str:
    """``text`` (a path, a name) safe to put in a one-line message.

    Control characters (NUL, newlines, ESC, bidi controls...) are escaped as ``\\x00`` so that a
    hostile name can neither break the line nor drive the terminal; very long text is cut in the
    middle, keeping both ends (the file name is at the end of a path).
    """
    raw = os.fsdecode(text) if isinstance(text, (bytes, os.PathLike)) else str(text)
    out = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                  for c in raw)
    if len(out) > SHOWN_MAX_CHARS:
        keep = SHOWN_MAX_CHARS // 2 - 2
        out = f"{out[:keep]}...{out[-keep:]}"
    return out


def os_reason(exc: OSError) -> str:
    """The short reason of an OSError ("No space left on device"), without the path it repeats."""
    return exc.strerror or type(exc).__name__


def run_tool(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s status; a StreamsvError becomes its one ``error:`` line and status 2
    (the ``python -m tools.X`` entry points)."""
    try:
        sys.exit(main())
    except StreamsvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
