"""The live loop: source → VAD segments → rolling embedding → scores → events.

``Pipeline.run(stop)`` yields plain-dict events (the JSON schema is in
output.py's docstring). It is written to be driven by the CLI and by a service
layer alike: ``on_audio`` is called for every chunk that arrives (a watchdog can
hang off it), ``request_reload()`` is safe to call from any thread or a signal
handler (profiles are re-read, and new thresholds taken, between chunks), and stopping — via the ``stop``
event or the source ending — always yields a final ``stats`` event.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from typing import Callable, Iterator

import numpy as np

from . import confidence as confidence_mod
from .change import ChangeDetector
from .config import Config
from .errors import StreamsvError
from .scoring import Smoother, cosine_scores, decide, threshold_for, unit
from .sources import SAMPLE_RATE, Source
from .vad import Segmenter, SpeechAudio, SpeechEnd, SpeechStart

TAIL_MIN_S = 0.3              # audio after the last hop worth adding to the turn summary
LATENCY_KEEP = 5000            # recent hops kept for percentiles: bounded memory on a long-running service
# What a reload can change without restarting audio: the decision rule, not the VAD, the
# window or the hop (those shape the streaming state; they apply after a restart).
RELOADABLE_SCORING = ("threshold", "min_margin", "duration_slope", "min_confidence")

log = logging.getLogger("streamsv.pipeline")

ProfileLoader = Callable[[], dict[str, np.ndarray]]
# Events a script reading ``listen --turns`` gets: the turn boundaries and who spoke, not every hop.
TURN_EVENTS = ("ready", "speech_start", "speech_end", "profiles_reloaded")
CHANGE_EVENT = "speaker_change"  # a change of voice found inside a segment (streamsv/change.py)


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 2) if len(values) else None


class Pipeline:
    def __init__(self, embedder, source: Source, cfg: Config, profiles: ProfileLoader | dict[str, np.ndarray],
                 on_audio: Callable[[int], None] | None = None) -> None:
        self.embedder = embedder
        self.source = source
        self.cfg = cfg
        self.sc = cfg.scoring
        self._loader: ProfileLoader = profiles if callable(profiles) else (lambda p=dict(profiles): p)
        self.centroids: dict[str, np.ndarray] = {}
        self.reload_profiles()
        self._reload_requested = threading.Event()
        self._pending_cfg: Config | None = None
        self.on_audio = on_audio
        self.segmenter: Segmenter | None = None   # built by run(): silero's session costs ~16 ms
        self.stream = embedder.stream(window_s=self.sc.window_s)
        self.smoother = Smoother(self.sc.smoothing_hops)
        self.change = ChangeDetector(cfg.change)
        self.changes = 0
        # Counters (read by the live view and a service layer).
        self.chunks_in = 0
        self.audio_s = 0.0
        self.busy_s = 0.0            # wall time spent processing (VAD + model + scoring)
        self.decisions = 0
        self.segments = 0
        self.in_speech = False
        self.last_decision: dict | None = None
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_KEEP)
        self.compute_ms: deque[float] = deque(maxlen=LATENCY_KEEP)
        self._started = time.monotonic()
        # The calibrated confidence for this model (None: confidence is reported as null).
        self.calibration = confidence_mod.load(embedder.fingerprint, cfg.profiles.resolved())
        self._check_min_confidence()
        self._ready_sent = False
        # Input level events for a live meter (off: JSON consumers do not want 4 lines a second).
        self.level_interval_s = 0.0
        self._level_sq = 0.0
        self._level_peak = 0.0
        self._level_n = 0
        self._seg_reset()

    def _check_min_confidence(self) -> None:
        if self.sc.min_confidence is not None and self.calibration is None:
            raise StreamsvError(f"scoring.min_confidence needs a confidence calibration for model "
                                f"{self.embedder.fingerprint}; give a cosine --threshold instead, or fit one")

    def threshold_at(self, seconds: float) -> float:
        """The cosine a best score must reach with ``seconds`` of speech behind it: from
        ``min_confidence`` through the calibration when set, else threshold minus the duration slope."""
        if self.sc.min_confidence is not None and self.calibration is not None:
            return self.calibration.cosine_for(self.sc.min_confidence, seconds)
        return threshold_for(self.sc.threshold, seconds, self.sc.window_s, self.sc.duration_slope)

    def confidence_of(self, score: float | None, seconds: float) -> float | None:
        if self.calibration is None or score is None or not np.isfinite(score):
            return None
        return round(self.calibration.confidence(score, seconds), 4)

    def ready_event(self) -> dict:
        """What a consumer needs before the first voice: input, model, profiles and the decision rule."""
        return {"event": "ready", "t": round(self.audio_s, 3),
                "device": getattr(self.source, "name", type(self.source).__name__),
                "sample_rate": SAMPLE_RATE, "model": self.embedder.fingerprint, "dim": int(self.embedder.dim),
                "profiles": sorted(self.centroids), "threshold": self.sc.threshold,
                "min_confidence": self.sc.min_confidence, "min_margin": self.sc.min_margin,
                "duration_slope": self.sc.duration_slope, "window_s": self.sc.window_s,
                "confidence": self.calibration is not None}

    # ------------------------------------------------------------------ profiles

    def reload_profiles(self) -> int:
        """Re-read profiles now (call from the loop's thread); returns how many are loaded."""
        self.centroids = {n: unit(c) for n, c in self._loader().items()}
        return len(self.centroids)

    def request_reload(self, cfg: Config | None = None) -> None:
        """Ask for a reload at the next chunk boundary; safe from signal handlers and other threads.

        Profiles are always re-read. With ``cfg``, its threshold, min_margin and duration_slope
        replace the current ones at the same boundary (a plain attribute swap: no lock needed).
        """
        if cfg is not None:
            self._pending_cfg = cfg
        self._reload_requested.set()

    def _apply_reload(self) -> dict:
        new, self._pending_cfg = self._pending_cfg, None
        if new is not None:
            changes = {k: getattr(new.scoring, k) for k in RELOADABLE_SCORING}
            if changes["min_confidence"] is not None and self.calibration is None:
                log.warning("reload: scoring.min_confidence ignored: no confidence calibration for this model")
                changes["min_confidence"] = None
            self.sc = dataclasses.replace(self.sc, **changes)
            self.cfg = dataclasses.replace(self.cfg, scoring=self.sc)
            fixed = [f"scoring.{f.name}" for f in dataclasses.fields(self.sc)
                     if f.name not in RELOADABLE_SCORING and getattr(new.scoring, f.name) != getattr(self.sc, f.name)]
            fixed += [s for s in ("audio", "vad", "model", "profiles") if getattr(new, s) != getattr(self.cfg, s)]
            if fixed:
                log.warning("reload: %s changed; applied after a restart", ", ".join(fixed))
        try:
            n = self.reload_profiles()
        except StreamsvError as e:
            # e.g. the folder became writable by others: keep verifying with the profiles we had.
            log.error("reload: %s; keeping the current profiles", e)
            n = len(self.centroids)
        return {"event": "profiles_reloaded", "t": round(self.audio_s, 3), "profiles": sorted(self.centroids),
                "count": n, "threshold": self.sc.threshold, "min_confidence": self.sc.min_confidence,
                "min_margin": self.sc.min_margin,
                "duration_slope": self.sc.duration_slope}

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event | None = None) -> Iterator[dict]:
        interval = self.cfg.output.stats_interval_s
        next_stats = time.monotonic() + interval
        # A service may call run() again with a fresh source after a device failure: start clean.
        self.segmenter = Segmenter(self.cfg.vad)
        self.in_speech = False
        self._seg_reset()
        if not self._ready_sent:
            self._ready_sent = True
            yield self.ready_event()
        try:
            for chunk, captured in self.source.chunks(stop):
                self.chunks_in += 1
                if self.level_interval_s > 0:
                    level = self._level(chunk)
                    if level is not None:
                        yield level
                if self.on_audio is not None:
                    self.on_audio(len(chunk))
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    yield self._apply_reload()
                began = time.perf_counter()
                self.audio_s += len(chunk) / SAMPLE_RATE
                events = self._process(self.segmenter.process(chunk, captured))
                self.busy_s += time.perf_counter() - began
                yield from events
                if interval > 0 and time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + interval
                    yield self.stats_event()
                if stop is not None and stop.is_set():
                    break
            yield from self._process(self.segmenter.flush())
        except StreamsvError:
            # The audio broke mid-stream (a truncated FLAC): what was heard still gets final stats.
            yield self.stats_event(final=True)
            raise
        finally:
            self.source.close()
        yield self.stats_event(final=True)

    def _level(self, chunk: np.ndarray) -> dict | None:
        """Accumulate the input level; an event every ``level_interval_s`` of audio."""
        if len(chunk):
            self._level_sq += float(np.dot(chunk, chunk))
            self._level_peak = max(self._level_peak, float(np.abs(chunk).max()))
            self._level_n += len(chunk)
        if self._level_n < self.level_interval_s * SAMPLE_RATE:
            return None
        rms = (self._level_sq / self._level_n) ** 0.5
        event = {"event": "level", "t": round(self.audio_s + len(chunk) / SAMPLE_RATE, 3),
                 "dbfs": round(20 * np.log10(rms + 1e-10), 1), "peak": round(self._level_peak, 3)}
        self._level_sq, self._level_peak, self._level_n = 0.0, 0.0, 0
        return event

    def _seg_reset(self) -> None:
        self.stream.reset()
        self.smoother.reset()
        self._seg_audio_s = 0.0
        self._next_hop = self.sc.min_speech_s
        self._next_change = self.sc.min_speech_s + self.sc.hop_s / 2
        self._seg_embeddings: list[np.ndarray] = []
        self._buf: list[np.ndarray] = []
        self._seg_hops = 0
        self._seg_start = 0.0
        self._compute_mark = self.stream.compute_seconds
        self.change.reset()
        self._recent: deque[np.ndarray] = deque()  # the segment's last change.recent_s of audio
        self._recent_n = 0

    def _process(self, vad_events) -> list[dict]:
        out: list[dict] = []
        for ev in vad_events:
            if isinstance(ev, SpeechStart):
                self._seg_reset()
                self._seg_start = ev.t
                self.in_speech = True
                self.segments += 1
                out.append({"event": "speech_start", "t": round(ev.t, 3)})
            elif isinstance(ev, SpeechAudio):
                # Audio is batched and pushed to the model once per hop: per-call
                # overhead makes many 30 ms pushes several times dearer than one.
                self._buf.append(ev.audio)
                self._seg_audio_s += len(ev.audio) / SAMPLE_RATE
                self._remember_recent(ev.audio)
                # The change test runs half-way between decisions, so its extra embedding never
                # lands on the block that completes a hop (capture-to-decision stays as it was).
                if self.cfg.change.enabled and self._seg_audio_s + 1e-9 >= self._next_change:
                    while self._next_change <= self._seg_audio_s + 1e-9:
                        self._next_change += self.sc.hop_s
                    changed = self._change_test(ev)
                    if changed is not None:
                        out.append(changed)
                if self._seg_audio_s + 1e-9 >= self._next_hop:
                    while self._next_hop <= self._seg_audio_s + 1e-9:
                        self._next_hop += self.sc.hop_s
                    d = self._hop(ev)
                    if d is not None:
                        out.append(d)
            elif isinstance(ev, SpeechEnd):
                self.in_speech = False
                if self._seg_embeddings and sum(map(len, self._buf)) >= TAIL_MIN_S * SAMPLE_RATE:
                    self._flush_buf()   # let the turn's last words count in its summary
                    emb = self.stream.embedding()
                    if emb is not None:
                        self._seg_embeddings.append(emb)
                out.append(self._summary(ev))
        return out

    def _remember_recent(self, audio: np.ndarray) -> None:
        if not self.cfg.change.enabled:
            return
        self._recent.append(audio)
        self._recent_n += len(audio)
        keep = int(self.cfg.change.recent_s * SAMPLE_RATE)
        while self._recent_n - len(self._recent[0]) >= keep:
            self._recent_n -= len(self._recent.popleft())

    def _change_test(self, ev: SpeechAudio) -> dict | None:
        """At a hop: has the voice changed since the segment's window of ``recent_s`` ago? On a
        change, restart the window and smoother on the audio since the change."""
        if not self.change.ready(self._seg_audio_s):
            return None
        recent = np.concatenate(self._recent)[-int(self.cfg.change.recent_s * SAMPLE_RATE):]
        began = time.perf_counter()
        verdict = self.change.test(self._seg_audio_s, self.embedder.embed(recent))
        self.stream.compute_seconds += time.perf_counter() - began  # the hop's model time includes the test
        if verdict is None or not verdict.changed:
            return None
        self.changes += 1
        since_change = recent[-int(verdict.lag_s * SAMPLE_RATE):]
        at = ev.t_end - verdict.lag_s
        # The new voice's turn: its own window, smoother and summary, from the change on.
        self.stream.reset()
        self.smoother.reset()
        self._seg_embeddings = []
        self._seg_hops = 0
        self._seg_start = at
        self._buf = [since_change]
        self._seg_audio_s = len(since_change) / SAMPLE_RATE
        # The new voice's first decision comes once it has min_speech_s of audio (at least a
        # block away); the change test resumes half a hop after that.
        self._next_hop = max(self.sc.min_speech_s, self._seg_audio_s + 1e-3)
        self._next_change = self._next_hop + self.sc.hop_s / 2
        self.change.reset(0.0)
        self._recent, self._recent_n = deque([since_change]), len(since_change)
        return {"event": CHANGE_EVENT, "t": round(ev.t_end, 3), "at": round(at, 3),
                "similarity": verdict.similarity}

    def _flush_buf(self) -> None:
        if self._buf:
            self.stream.push(np.concatenate(self._buf))
            self._buf = []

    def _hop(self, ev: SpeechAudio) -> dict | None:
        self._flush_buf()
        emb = self.stream.embedding()
        if emb is None:
            return None
        self._seg_embeddings.append(emb)
        self._seg_hops += 1
        self.change.remember(self._seg_audio_s, emb)
        raw = cosine_scores(emb, self.centroids)
        smoothed = self.smoother.push(raw)
        d = decide(smoothed, self.threshold_at(self.stream.seconds), self.sc.min_margin)
        # Model time for this hop: every push since the previous hop, plus pooling.
        compute_ms = (self.stream.compute_seconds - self._compute_mark) * 1000.0
        self._compute_mark = self.stream.compute_seconds
        latency_ms = (time.monotonic() - ev.capture_time) * 1000.0
        self.latencies_ms.append(latency_ms)
        self.compute_ms.append(compute_ms)
        self.decisions += 1
        event = {
            "event": "decision",
            "t": round(ev.t_end, 3),
            "speaker": d.speaker,
            "accepted": d.accepted,
            "score": _r(d.score),
            "confidence": self.confidence_of(d.score, self.stream.seconds),
            "scores": {n: _r(s) for n, s in sorted(smoothed.items())},
            "speech_s": round(self.stream.seconds, 3),
            "latency_ms": round(latency_ms, 2),
            "compute_ms": round(compute_ms, 2),
        }
        self.last_decision = event
        return event

    def _summary(self, ev: SpeechEnd) -> dict:
        event = {"event": "speech_end", "t": round(ev.t, 3), "start": round(self._seg_start, 3),
                 "duration_s": round(ev.duration_s, 3), "decisions": self._seg_hops}
        if self._seg_embeddings:
            # The mean of the segment's hop embeddings covers the whole turn, not just its last window.
            scores = cosine_scores(unit(np.mean(self._seg_embeddings, axis=0)), self.centroids)
            d = decide(scores, self.threshold_at(self._seg_audio_s), self.sc.min_margin)
            event.update(speaker=d.speaker, accepted=d.accepted, score=_r(d.score),
                         confidence=self.confidence_of(d.score, min(self._seg_audio_s, self.sc.window_s)),
                         scores={n: _r(s) for n, s in sorted(scores.items())})
        else:
            # Shorter than min_speech_s: too little audio to say anything.
            event.update(speaker=None, accepted=False, score=None, confidence=None, scores={})
        return event

    # ------------------------------------------------------------------ stats

    def stats_event(self, final: bool = False) -> dict:
        s = self.source.stats
        lat = list(self.latencies_ms)
        comp = list(self.compute_ms)
        return {
            "event": "stats",
            "t": round(self.audio_s, 3),
            "final": final,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "audio_s": round(self.audio_s, 3),
            "segments": self.segments,
            "speaker_changes": self.changes,
            "decisions": self.decisions,
            "profiles": len(self.centroids),
            "latency_p50_ms": percentile(lat, 50),
            "latency_p95_ms": percentile(lat, 95),
            "latency_p99_ms": percentile(lat, 99),
            "compute_p50_ms": percentile(comp, 50),
            "compute_p95_ms": percentile(comp, 95),
            "rtf": round(self.busy_s / self.audio_s, 4) if self.audio_s > 0 else None,
            "overflows": s.overflows,
            "drops": s.drops,
            "dropped_s": round(s.dropped_s, 3),
        }


class TurnFilter:
    """``listen --turns``: only what a script acting on turns needs. The ready and reload events,
    each turn's start, the pipeline's ``speaker_change``, a ``decision`` only when the live label (a
    name or unknown) differs from the turn's previous one (its first label included), and the turn's
    end with its summary decision; the final stats close the stream. Repeated decisions, level and
    periodic stats are left out. Every event keeps its own name and schema."""

    def __init__(self) -> None:
        self._label: object = ()          # no label yet in this turn (None means "unknown")

    def keep(self, ev: dict) -> dict | None:
        kind = ev.get("event")
        if kind in ("speech_start", CHANGE_EVENT):
            self._label = ()   # the next decision names the new voice
        if kind == CHANGE_EVENT:
            return ev
        if kind in TURN_EVENTS or (kind == "stats" and ev.get("final")):
            return ev
        if kind == "decision" and ev.get("speaker") != self._label:
            self._label = ev.get("speaker")
            return ev
        return None


def turn_events(events: Iterator[dict]) -> Iterator[dict]:
    """The events ``TurnFilter`` keeps, as a stream."""
    f = TurnFilter()
    for ev in events:
        kept = f.keep(ev)
        if kept is not None:
            yield kept


def _r(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)
