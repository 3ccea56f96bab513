"""Where events leave: each sink is one file that consumes the pipeline's events (streamsv/events.py).

  jsonl.py     JSON lines on stdout (``--json``, or when stdout is not a terminal)
  console.py   the rich live view for people
  mqtt.py      Home Assistant over MQTT (``mqtt.url``)

A sink is a context manager (``with sink:`` opens and closes what it holds: a terminal, a
broker connection) with ``consume(event)``, called from the audio loop's thread, which must not
block; and a ``level_interval_s`` attribute: how often it wants ``level`` events (0: never).
``open_sinks(cfg)`` opens every sink the config asks for as one ``Sinks``.
"""
from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any, Mapping, Protocol, Sequence

from ..events import LEVEL, TurnFilter


class Sink(Protocol):
    level_interval_s: float

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...

    def consume(self, event: Mapping[str, Any]) -> None: ...


class Sinks:
    """Several sinks fed the same events, opened in order and closed in reverse. When one fails
    to open, those already open are closed again (no broker thread outlives a failed start).
    With ``turns`` only what ``TurnFilter`` keeps reaches them (``listen --turns``)."""

    def __init__(self, members: Sequence[Sink], turns: bool = False) -> None:
        self.members = list(members)
        self._turns = TurnFilter() if turns else None
        self._stack: ExitStack | None = None

    @property
    def level_interval_s(self) -> float:
        """The most frequent level events any member asks for (0: none does)."""
        wanted = [m.level_interval_s for m in self.members if m.level_interval_s > 0]
        return min(wanted) if wanted else 0.0

    def __enter__(self) -> "Sinks":
        with ExitStack() as stack:
            for member in self.members:
                stack.enter_context(member)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc)

    def consume(self, event: Mapping[str, Any]) -> None:
        if self._turns is not None and self._turns.keep(event) is None:
            return
        for member in self.members:
            if event.get("event") != LEVEL or member.level_interval_s > 0:
                member.consume(event)


def json_mode(setting: bool | None) -> bool:
    """JSON lines when asked, or when stdout is not a terminal."""
    return (not sys.stdout.isatty()) if setting is None else bool(setting)


def open_sinks(cfg: Any, *, title: str = "streamsv listen", turns: bool = False) -> Sinks:
    """The sinks ``cfg`` asks for: JSON lines or the live view (``output.json``), and MQTT when
    ``mqtt.url`` is set. Made here, opened by ``with``; a bad MQTT setting (a missing password
    file) fails now, before any audio is opened."""
    if json_mode(cfg.output.json):
        from .jsonl import JsonWriter

        members: list[Sink] = [JsonWriter()]
    else:
        from .console import LiveView

        members = [LiveView(title=title)]
    if cfg.mqtt.url:
        from .mqtt import MqttSink

        members.append(MqttSink(cfg.mqtt))   # learns the enrolled names from the ready event
    return Sinks(members, turns=turns)
