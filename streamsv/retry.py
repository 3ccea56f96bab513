"""Retry delays shared by what reconnects: the capture device (service.py) and the MQTT broker
(sinks/mqtt.py)."""
from __future__ import annotations

from dataclasses import dataclass

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass
class Backoff:
    """Capped exponential delays: 0.5, 1, 2, 4 ... up to ``max_s``; ``reset()`` after a good run."""

    start_s: float = BACKOFF_START_S
    factor: float = 2.0
    max_s: float = BACKOFF_MAX_S
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.start_s * self.factor ** self.attempt)
        if delay < self.max_s:
            self.attempt += 1  # stop growing the exponent once capped (no float overflow after days)
        return delay

    def reset(self) -> None:
        self.attempt = 0
