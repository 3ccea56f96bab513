"""Speaker changes inside one speech segment.

People answer each other within 300 ms and talk over each other, so a pause-based segment
often holds two voices; the 3 s window then mixes them and the label smears across the turn.
At every hop the pipeline gives this test two embeddings: the last ``recent_s`` of the segment,
and the segment's window as it was ``recent_s`` ago (audio that does not overlap the recent
one). A cosine between them below ``threshold`` for ``confirm_hops`` hops in a row is a change:
the pipeline then emits ``speaker_change`` and restarts its window and smoother on the audio
since the change, so the new voice is judged on its own.

The test is pure bookkeeping over vectors (no model here), so it runs the same on any embedder.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .config import ChangeConfig

# Where in the recent window a change is placed when it is called: the test fires once the new
# voice fills most of the recent window, so the change lies inside it. Measured on the tuning
# conversations of tools/bench_detection.py.
CHANGE_LAG_SHARE = 0.75


@dataclass(frozen=True)
class ChangeVerdict:
    similarity: float     # cosine of the recent audio to the segment before it
    changed: bool
    lag_s: float          # seconds before the hop where the change is placed (when changed)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


class ChangeDetector:
    """Feed ``remember(t, window_embedding)`` at every hop and ``test(t, recent_embedding)``
    half-way between hops; ``reset()`` at a segment start and after a change."""

    def __init__(self, settings: ChangeConfig = ChangeConfig()) -> None:
        self.settings = settings
        self._windows: deque[tuple[float, np.ndarray]] = deque()
        self._below = 0
        self._start = 0.0

    def reset(self, t: float = 0.0) -> None:
        """A fresh segment (or the new voice after a change) begins at segment time ``t``."""
        self._windows.clear()
        self._below = 0
        self._start = t

    def remember(self, t: float, window_embedding: np.ndarray) -> None:
        """The pipeline's window embedding at segment time ``t`` (the reference for later hops)."""
        self._windows.append((t, _unit(window_embedding)))
        # Only windows older than the recent span are ever used; keep one more than needed.
        while len(self._windows) > 2 and self._windows[1][0] <= t - self.settings.recent_s:
            self._windows.popleft()

    def ready(self, t: float) -> bool:
        """Whether segment time ``t`` has enough audio before its recent window to test."""
        s = self.settings
        return s.enabled and t - s.recent_s - self._start >= s.min_reference_s - 1e-9 and self._reference(t) is not None

    def _reference(self, t: float) -> np.ndarray | None:
        cutoff = t - self.settings.recent_s + 1e-9
        older = [v for when, v in self._windows if when <= cutoff]
        return older[-1] if older else None

    def test(self, t: float, recent_embedding: np.ndarray) -> ChangeVerdict | None:
        """Compare the recent audio's embedding with the segment before it; None when untestable."""
        if not self.ready(t):
            return None
        similarity = float(_unit(recent_embedding) @ self._reference(t))
        self._below = self._below + 1 if similarity < self.settings.threshold else 0
        changed = self._below >= self.settings.confirm_hops
        return ChangeVerdict(round(similarity, 4), changed, CHANGE_LAG_SHARE * self.settings.recent_s)
