"""JSON lines: one event per line, as ``events.to_json_line`` writes it (``listen --json``, and
whenever stdout is not a terminal). The schema is streamsv/events.py."""
from __future__ import annotations

import sys
from typing import IO, Any, Mapping

from ..events import to_json_line


class JsonWriter:
    level_interval_s = 0.0      # machines do not want four level lines a second

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def __enter__(self) -> "JsonWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def consume(self, event: Mapping[str, Any]) -> None:
        self.stream.write(to_json_line(event) + "\n")
        self.stream.flush()   # consumers read events live, one per line
