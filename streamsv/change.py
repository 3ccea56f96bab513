"""Speaker changes inside one speech segment.

People answer each other within 300 ms and talk over each other, so a pause-based segment
often holds two voices; the 3 s window then mixes them and the label smears across the turn.
At every hop the pipeline gives this test two embeddings: the last ``recent_s`` of the segment,
and the segment's window as it was ``recent_s`` ago (audio that does not overlap the recent
one). A cosine between them below ``threshold`` for ``confirm_hops`` hops in a row is a change:
the pipeline then emits ``speaker_change`` and restarts its window and smoother on the audio
since the change, so the new voice is judged on its own. The recent embedding is pooled from the
live stream's own last frames at the hop (``change.embedding: stream``, no model step of its own)
or embedded afresh half-way between hops (``offline``); the stream's frames of a new voice carry
the voice before it, so its change is placed further back (CHANGE_LAG_SHARE).

A pause inside a segment is where a new voice most often takes over (people answer after a
breath), so a pause of at least ``min_pause_s`` is a candidate change point of its own: once
``recent_s`` of audio follows it, that audio is compared with the segment's window as it was
before the pause, and a cosine below ``threshold`` places the change at the pause's end. The
``continuous`` test above finds voices that take over without a pause (talking over each other).

A gap between two segments can be such a pause too: when the pipeline bridges it (a segment that
starts within ``bridge_s`` of the last one's end continues its voice), the gap is tested as a
pause at the voice time where the new segment's audio begins (``wants_gap``).

The test is pure bookkeeping over vectors (no model here), so it runs the same on any embedder.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .config import ChangeConfig
from .scoring import snr_shift, unit

# Where in the recent window a change is placed when it is called, by change.embedding: the test
# fires once the new voice fills most of the recent window, so the change lies inside it. The
# stream's frames of a new voice still carry the one before it, so that test fires later and the
# change lies further back. Measured on the tuning conversations of tools/bench_detection.py
# (0.4-0.95 tried: 0.75 best offline, 0.85 best on the stream).
CHANGE_LAG_SHARE = {"offline": 0.75, "stream": 0.85}
KEEP_WINDOWS = 16           # hop windows remembered: 8 s at a 0.5 s hop, more than a pause test looks back
EPS_S = 1e-9
# change.snr_slope lowers a test's bar by at most this much: 0.1 (the decisions' bound) found more
# boundaries on the tuning conversations (F1 0.634 against 0.629) and cost in-turn accuracy in the
# noisiest rooms (babble 0.741 -> 0.729; 0.814 -> 0.810 over every room, against 0.812).
MAX_SNR_SHIFT = 0.03
# A reference window may end this far into the recent audio: hops land on 30 ms blocks, so a test at
# a hop finds the window of recent_s before it up to a block late (a test half-way never comes this close).
REFERENCE_SLACK_S = 0.05


@dataclass(frozen=True)
class ChangeVerdict:
    similarity: float     # cosine of the recent audio to the segment before it
    changed: bool
    lag_s: float          # seconds before the hop where the change is placed (when changed)
    reference: np.ndarray  # the segment before it (unit), for the pipeline's profile checks


class ChangeDetector:
    """Feed ``remember(t, window_embedding)`` at every hop, ``test(t, recent_embedding)`` at or
    half-way between hops (the continuous test), ``pause(t, reference)`` at every pause inside
    the segment that ``wants_pause(t, seconds)``, and ``test_pause(t, embedding)`` when ``pause_due(t)``;
    ``reset()`` at a segment start and after a change. Times are segment seconds."""

    def __init__(self, settings: ChangeConfig = ChangeConfig()) -> None:
        self.settings = settings
        self._windows: deque[tuple[float, np.ndarray]] = deque(maxlen=KEEP_WINDOWS)
        # (pause end, the segment before it, the threshold its test uses), oldest first
        self._pauses: deque[tuple[float, np.ndarray, float]] = deque()
        self._below = 0
        self._start = 0.0

    def reset(self, t: float = 0.0) -> None:
        """A fresh segment (or the new voice after a change) begins at segment time ``t``."""
        self._windows.clear()
        self._pauses.clear()
        self._below = 0
        self._start = t

    def remember(self, t: float, window_embedding: np.ndarray) -> None:
        """The pipeline's window embedding at segment time ``t`` (the reference for later hops)."""
        self._windows.append((t, unit(window_embedding)))

    def ready(self, t: float) -> bool:
        """Whether segment time ``t`` has enough audio before its recent window to test."""
        s = self.settings
        return (s.enabled and s.continuous and t - s.recent_s - self._start >= s.min_reference_s - EPS_S
                and self._reference(t - s.recent_s) is not None)

    def _reference(self, cutoff: float) -> np.ndarray | None:
        """The latest window that ends by ``cutoff`` (so it holds none of the audio after it)."""
        older = [v for when, v in self._windows if when <= cutoff + REFERENCE_SLACK_S]
        return older[-1] if older else None

    def _bar(self, own: float | None) -> float:
        """A test's own threshold setting, or the segment's ``threshold`` where it has none."""
        return self.settings.threshold if own is None else own

    # ------------------------------------------------------------ at pauses

    def wants_pause(self, t: float, seconds: float) -> bool:
        """Whether a pause of ``seconds`` ending at segment time ``t`` is a candidate change point:
        long enough, with ``min_reference_s`` of the segment before it to compare with."""
        s = self.settings
        return (s.enabled and s.min_pause_s > 0 and seconds >= s.min_pause_s - EPS_S
                and t - seconds - self._start >= s.min_reference_s - EPS_S)

    def wants_gap(self, t: float) -> bool:
        """Whether the gap before a segment that continues the voice at segment time ``t`` can be
        tested as a pause: the pause test is on and ``min_reference_s`` of the voice precedes it."""
        s = self.settings
        return s.enabled and s.min_pause_s > 0 and t - self._start >= s.min_reference_s - EPS_S

    def gap(self, t: float, reference: np.ndarray, threshold: float) -> None:
        """A bridged gap at segment time ``t``: the candidate pause now, at its own ``threshold``.
        Pauses still waiting are dropped: the ``recent_s`` after them would reach across the gap
        into the next segment, and a change found so would be placed at them, not at the gap."""
        self.drop_pauses()
        self.pause(t, reference, threshold)

    def drop_pauses(self) -> None:
        """Forget the candidate pauses still waiting for their test."""
        self._pauses.clear()

    def pause(self, t: float, reference: np.ndarray, threshold: float | None = None) -> None:
        """A candidate pause ended at segment time ``t``; ``reference`` embeds the segment before it.
        ``threshold``: its own (a bridged gap's), else ``settings.threshold``."""
        self._pauses.append((t, unit(reference), self.settings.threshold if threshold is None else threshold))

    def pause_due(self, t: float) -> float | None:
        """The end of the oldest candidate pause with ``recent_s`` of audio after it by ``t``."""
        if self._pauses and t + EPS_S >= self._pauses[0][0] + self.settings.recent_s:
            return self._pauses[0][0]
        return None

    def test_pause(self, t: float, after_embedding: np.ndarray, short_gap: bool = False,
                   shift: float = 0.0) -> ChangeVerdict:
        """The embedding of the ``recent_s`` after the due pause against the segment before it; a
        change lies at the pause's end (``lag_s`` before ``t``). ``short_gap``: the pause is a
        bridged gap whose segment closed before ``recent_s`` of it (settings.short_gap_threshold).
        ``shift``: how far the bar comes down for the room's noise (``snr_shift``)."""
        end, reference, threshold = self._pauses.popleft()
        if short_gap:
            threshold = self._bar(self.settings.short_gap_threshold)
        similarity = float(unit(after_embedding) @ reference)
        return ChangeVerdict(round(similarity, 4), similarity < threshold - shift, t - end, reference)

    def snr_shift(self, snr_db: float | None, ref_db: float) -> float:
        """How far every test's bar comes down for a window ``snr_db`` above the noise floor
        (change.snr_slope per dB under ``ref_db``, at most MAX_SNR_SHIFT; 0 when unknown)."""
        return min(MAX_SNR_SHIFT, snr_shift(snr_db, self.settings.snr_slope, ref_db))

    # ------------------------------------------------------------ continuous

    def test(self, t: float, recent_embedding: np.ndarray, shift: float = 0.0) -> ChangeVerdict | None:
        """Compare the recent audio's embedding with the segment before it, at the bar less
        ``shift`` (``snr_shift``); None when untestable."""
        if not self.ready(t):
            return None
        reference = self._reference(t - self.settings.recent_s)
        similarity = float(unit(recent_embedding) @ reference)
        s = self.settings
        threshold = self._bar(s.continuous_threshold) - shift
        self._below = self._below + 1 if similarity < threshold else 0
        changed = self._below >= s.confirm_hops
        return ChangeVerdict(round(similarity, 4), changed, CHANGE_LAG_SHARE[s.embedding] * s.recent_s, reference)
