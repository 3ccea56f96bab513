"""The live loop: audio in, events out (their schema is streamsv/events.py).

source chunks ─▶ VAD segments ─▶ per voice: the rolling embedding (one model push per hop) ─▶
scores against the profiles ─▶ ``decision`` events, the change test at each hop ─▶
``speaker_change``, and each turn's summary ─▶ ``speech_end``. A voice spans segments: one that
starts within ``change.bridge_s`` of the last one's end continues it, its gap a pause that the
change test judges (``speech_start`` says ``continues``).

``Pipeline.run(stop)`` yields the events. It is driven by the CLI and a service layer alike:
``add_audio_listener(fn)`` has ``fn(n_samples)`` called for every chunk consumed (a watchdog
hangs off it), ``request_reload()`` is safe to call from any thread or a signal handler (profiles
are re-read, and new thresholds taken, between chunks), and stopping — via the ``stop`` event or
the source ending — always yields a final ``stats`` event.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

import numpy as np

from . import confidence as confidence_mod
from . import events
from .change import ChangeDetector, ChangeVerdict
from .config import Config, ScoringConfig
from .embedder import MIN_AUDIO_S
from .errors import StreamsvError, shown
from .events import Event
from .features import SAMPLE_RATE
from .profiles import ProfilesWatch
from .scoring import Decision, Smoother, cosine_scores, decide, snr_shift, threshold_for, unit
from .sources import Source
from .vad import Segmenter, SpeechAudio, SpeechEnd, SpeechStart, power_dbfs

TAIL_MIN_S = 0.3              # audio after the last hop worth adding to the turn summary
LATENCY_KEEP = 5000            # recent hops kept for percentiles: bounded memory on a long-running service
EPS_S = 1e-9                   # float slack when comparing accumulated seconds with a due time
RECENT_SLACK_S = 0.5           # audio kept past change.recent_s + the VAD's hangover (a pause comes in one block)
# change.profile_veto: how far over its decision bar each side must score to be the same enrolled voice.
# 0 vetoed more false splits (reporting split, every room: boundary F1 0.566 against 0.559) but
# some true changes with them (in-turn 0.806 against 0.808, quiet 0.855 against 0.859; docs/live-rooms.md,
# tenth pass).
PROFILE_VETO_MARGIN = 0.05
# change.stranger_veto: how far under its decision bar each side must score, against every profile,
# to be no enrolled voice. 0.05 vetoed more false splits but missed more true changes into and out of
# an enrolled voice (reporting split, -50 dBFS: boundary F1 0.698 against 0.710, in-turn 0.837
# against 0.841; every room 0.620 against 0.618; docs/live-rooms.md, eleventh pass).
STRANGER_VETO_MARGIN = 0.10
# What a reload can change without restarting audio: the decision rule, not the VAD, the
# window or the hop (those shape the streaming state; they apply after a restart).
RELOADABLE_SCORING = ("threshold", "min_margin", "duration_slope", "min_confidence", "snr_slope", "snr_ref_db")
SNR_DECIMALS = 1              # a decision's snr_db: tenths of a dB

log = logging.getLogger("streamsv.pipeline")

ProfileLoader = Callable[[], dict[str, np.ndarray]]
AudioListener = Callable[[int], None]


# --------------------------------------------------------------------------- the parts


class DecisionRule:
    """The scoring settings in force and the model's confidence calibration (None: uncalibrated):
    what a best score must reach with so much speech behind it, and how confident a score is."""

    def __init__(self, scoring: ScoringConfig, calibration: confidence_mod.ConfidenceModel | None) -> None:
        self.scoring = scoring
        self.calibration = calibration

    @classmethod
    def load(cls, scoring: ScoringConfig, fingerprint: str, profiles_dir) -> "DecisionRule":
        """The rule with the calibration stored for this model (read from disk: once per process,
        not per pipeline, where a server makes many); a min_confidence without one is an error."""
        rule = cls(scoring, confidence_mod.load(fingerprint, profiles_dir))
        if scoring.min_confidence is not None and rule.calibration is None:
            raise StreamsvError(f"scoring.min_confidence needs a confidence calibration for model "
                                f"{fingerprint}; give a cosine --threshold instead, or fit one")
        return rule

    def threshold_at(self, seconds: float, snr_db: float | None = None) -> float:
        """The cosine a best score must reach with ``seconds`` of speech behind it, standing
        ``snr_db`` above the noise floor (None: unknown, no SNR term): from ``min_confidence``
        through the calibration when set, else threshold minus the duration slope; either way
        less the SNR-aware shift (scoring.snr_slope)."""
        sc = self.scoring
        if sc.min_confidence is not None and self.calibration is not None:
            bar = self.calibration.cosine_for(sc.min_confidence, seconds)
        else:
            bar = threshold_for(sc.threshold, seconds, sc.window_s, sc.duration_slope)
        return bar - snr_shift(snr_db, sc.snr_slope, sc.snr_ref_db)

    def decide(self, scores: dict[str, float], seconds: float, snr_db: float | None = None) -> Decision:
        return decide(scores, self.threshold_at(seconds, snr_db), self.scoring.min_margin)

    def confidence_of(self, score: float | None, seconds: float) -> float | None:
        if self.calibration is None or score is None or not np.isfinite(score):
            return None
        return round(self.calibration.confidence(score, seconds), events.SCORE_DECIMALS)

    def reloaded(self, new: ScoringConfig) -> "DecisionRule":
        """This rule with ``new``'s reloadable settings; the rest wait for a restart."""
        changes = {k: getattr(new, k) for k in RELOADABLE_SCORING}
        if changes["min_confidence"] is not None and self.calibration is None:
            log.warning("reload: scoring.min_confidence ignored: no confidence calibration for this model")
            changes["min_confidence"] = None
        return DecisionRule(dataclasses.replace(self.scoring, **changes), self.calibration)


@dataclasses.dataclass
class Totals:
    """Running counts since the pipeline was made: what the ``stats`` event reports."""

    chunks_in: int = 0
    audio_s: float = 0.0
    busy_s: float = 0.0          # wall time spent processing (VAD + model + scoring)
    segments: int = 0
    speaker_changes: int = 0
    decisions: int = 0
    latencies_ms: deque = dataclasses.field(default_factory=lambda: deque(maxlen=LATENCY_KEEP))
    compute_ms: deque = dataclasses.field(default_factory=lambda: deque(maxlen=LATENCY_KEEP))
    started: float = dataclasses.field(default_factory=time.monotonic)

    def record_hop(self, latency_ms: float, compute_ms: float) -> None:
        self.decisions += 1
        self.latencies_ms.append(latency_ms)
        self.compute_ms.append(compute_ms)


class LevelMeter:
    """Input level for a live meter: a ``level`` event per ``interval_s`` of audio (0: none; JSON
    consumers do not want four lines a second, so only a sink that asks gets them)."""

    def __init__(self, interval_s: float = 0.0) -> None:
        self.interval_s = interval_s
        self._sum_sq = 0.0
        self._peak = 0.0
        self._n = 0

    def measure(self, chunk: np.ndarray, t_end: float) -> events.LevelEvent | None:
        if self.interval_s <= 0:
            return None
        if len(chunk):
            self._sum_sq += float(np.dot(chunk, chunk))
            self._peak = max(self._peak, float(np.abs(chunk).max()))
            self._n += len(chunk)
        if self._n < self.interval_s * SAMPLE_RATE:
            return None
        rms = (self._sum_sq / self._n) ** 0.5
        event = events.level(t_end, 20 * np.log10(rms + 1e-10), self._peak)
        self._sum_sq, self._peak, self._n = 0.0, 0.0, 0
        return event


class ReloadRequest:
    """A reload asked for from any thread or a signal handler, taken by the loop between chunks:
    a flag and the new config, both set without a lock (an Event and a plain attribute swap)."""

    def __init__(self) -> None:
        self._asked = threading.Event()
        self._cfg: Config | None = None

    def ask(self, cfg: Config | None) -> None:
        if cfg is not None:
            self._cfg = cfg
        self._asked.set()

    def take(self) -> tuple[bool, Config | None]:
        """(whether a reload was asked for, the config it brought, if any); clears both."""
        if not self._asked.is_set():
            return False, None
        self._asked.clear()
        cfg, self._cfg = self._cfg, None
        return True, cfg


class TrailingBlocks:
    """Per-block items of a voice's audio, as many of the latest blocks as cover its last ``keep_s``
    (a block leaves once the blocks after it cover that much)."""

    def __init__(self, keep_s: float) -> None:
        self.keep = int(keep_s * SAMPLE_RATE)
        self._parts: deque[tuple[int, Any]] = deque()
        self._n = 0

    def _append(self, samples: int, item: Any) -> None:
        self._parts.append((samples, item))
        self._n += samples
        while self._n - self._parts[0][0] >= self.keep:
            self._n -= self._parts.popleft()[0]


class RecentAudio(TrailingBlocks):
    """The last ``keep_s`` of a voice's audio: what the pause tests (and an offline continuous test) embed."""

    def __init__(self, keep_s: float, first: np.ndarray | None = None) -> None:
        super().__init__(keep_s)
        if first is not None:
            self.add(first)

    def add(self, audio: np.ndarray) -> None:
        self._append(len(audio), audio)

    def last(self, seconds: float) -> np.ndarray:
        """The last ``seconds`` of audio (all that is kept, if less)."""
        audio = np.concatenate([part for _, part in self._parts])
        return audio[-min(self.keep, int(round(seconds * SAMPLE_RATE))):]


class WindowLevel(TrailingBlocks):
    """The level of a voice's last ``window_s`` of audio (what its window embeds), kept per block
    as its energy: the speech side of a decision's SNR."""

    def add(self, audio: np.ndarray) -> None:
        self._append(len(audio), float(np.dot(audio, audio)))

    def dbfs(self) -> float | None:
        """The mean power of the audio held, in dBFS; None before any."""
        if not self._n:
            return None
        return power_dbfs(sum(energy for _, energy in self._parts), self._n)


@dataclasses.dataclass
class Voice:
    """One voice's stretch of speech: from a VAD start, or from a speaker change inside a segment;
    it goes on across a gap to a segment that starts within ``change.bridge_s`` (the gap's audio is
    not its own). Times in ``audio_s``, ``next_hop`` and ``next_change`` count this voice's speech
    seconds."""

    start: float                    # stream time the voice began
    recent: RecentAudio
    level: WindowLevel              # its last window's level, for the decisions' SNR
    audio_s: float = 0.0
    next_hop: float = 0.0           # when the next decision is due
    next_change: float = 0.0        # when the next offline change test is due (half-way between decisions)
    pending: list = dataclasses.field(default_factory=list)      # audio not yet pushed to the model
    embeddings: list = dataclasses.field(default_factory=list)   # each hop's window, for the summary
    hops: int = 0
    awaiting_gap: float | None = None   # voice time of a bridged gap whose pause test has not spoken
    gaps: list = dataclasses.field(default_factory=list)   # (voice time, stream seconds) of each bridged gap

    def add(self, audio: np.ndarray) -> None:
        self.pending.append(audio)
        self.level.add(audio)
        self.audio_s += len(audio) / SAMPLE_RATE

    def take_pending(self) -> np.ndarray | None:
        audio = np.concatenate(self.pending) if self.pending else None
        self.pending = []
        return audio

    def pending_samples(self) -> int:
        return sum(map(len, self.pending))

    def hop_due(self, hop_s: float) -> bool:
        due, self.next_hop = _passed(self.next_hop, self.audio_s, hop_s)
        return due

    def change_due(self, hop_s: float) -> bool:
        due, self.next_change = _passed(self.next_change, self.audio_s, hop_s)
        return due

    def gaps_after(self, voice_time: float) -> float:
        """Stream seconds of the bridged gaps after ``voice_time``: what lies between it and now in the
        stream but not in the voice."""
        return sum(seconds for when, seconds in self.gaps if when > voice_time + EPS_S)


def _passed(mark: float, now: float, step: float) -> tuple[bool, float]:
    """Whether ``now`` reached ``mark``, and the next mark after ``now`` (steps of ``step``)."""
    if now + EPS_S < mark:
        return False, mark
    while mark <= now + EPS_S:
        mark += step
    return True, mark


# --------------------------------------------------------------------------- the pipeline


class Pipeline:
    def __init__(self, embedder, source: Source, cfg: Config, profiles: ProfileLoader | dict[str, np.ndarray],
                 *, level_interval_s: float = 0.0, rule: DecisionRule | None = None,
                 watch: ProfilesWatch | None = None) -> None:
        """``profiles``: a loader (re-read on reload) or fixed centroids. ``rule``: a decision rule
        already loaded for ``cfg.scoring`` (a server shares one across requests); by default it is
        loaded here. ``level_interval_s``: what a level-meter sink asked for (0: no level events).
        ``watch``: the ProfilesWatch of the loader's folder, asked between chunks: a change there is a
        reload (the loader tells it when it reads)."""
        self.embedder = embedder
        self.source = source
        self.cfg = cfg
        self.rule = rule or DecisionRule.load(cfg.scoring, embedder.fingerprint, cfg.profiles.resolved())
        self._loader: ProfileLoader = profiles if callable(profiles) else (lambda p=dict(profiles): p)
        self._watch = watch
        self.centroids: dict[str, np.ndarray] = {}
        self.reload_profiles()
        self._reload = ReloadRequest()
        self._audio_listeners: list[AudioListener] = []
        self.levels = LevelMeter(level_interval_s)
        self.totals = Totals()
        self.segmenter: Segmenter | None = None   # built by run(): silero's session costs ~16 ms
        self.stream = embedder.stream(window_s=cfg.scoring.window_s)
        self.smoother = Smoother(cfg.scoring.smoothing_hops)
        change_settings = cfg.change
        if not hasattr(self.stream, "recent_embedding"):
            # A stream that re-embeds its window per call (the teacher's, in the benchmarks) has no
            # encoded frames to pool: its change tests embed offline.
            change_settings = dataclasses.replace(change_settings, embedding="offline", pause_embedding="offline")
        self.change = ChangeDetector(change_settings)
        self._compute_mark = 0.0                  # stream.compute_seconds at the last hop
        self.voice = self._new_voice(0.0)
        self._last_end: float | None = None       # stream time the last segment ended (its voice may go on)
        self._ready_sent = False

    def add_audio_listener(self, listener: AudioListener) -> None:
        """Call ``listener(n_samples)`` for every chunk the loop consumes (from the loop's thread)."""
        self._audio_listeners.append(listener)

    def ready_event(self) -> events.ReadyEvent:
        """What a consumer needs before the first voice: input, model, profiles and the decision rule."""
        sc = self.rule.scoring
        return events.ready(self.totals.audio_s, getattr(self.source, "name", type(self.source).__name__),
                            SAMPLE_RATE, self.embedder.fingerprint, self.embedder.dim, self.centroids,
                            sc.threshold, sc.min_confidence, sc.min_margin, sc.duration_slope, sc.window_s,
                            self.rule.calibration is not None)

    # ------------------------------------------------------------------ profiles

    def reload_profiles(self) -> int:
        """Re-read profiles now (call from the loop's thread); returns how many are loaded."""
        self.centroids = {n: unit(c) for n, c in self._loader().items()}
        return len(self.centroids)

    def request_reload(self, cfg: Config | None = None) -> None:
        """Ask for a reload at the next chunk boundary; safe from signal handlers and other threads.

        Profiles are always re-read. With ``cfg``, its threshold, min_margin, duration_slope and
        min_confidence replace the current ones at the same boundary (a plain attribute swap).
        """
        self._reload.ask(cfg)

    def _apply_reload(self, new: Config | None) -> events.ProfilesReloadedEvent:
        if new is not None:
            self.rule = self.rule.reloaded(new.scoring)
            sc = self.rule.scoring
            self.cfg = dataclasses.replace(self.cfg, scoring=sc)
            fixed = [f"scoring.{f.name}" for f in dataclasses.fields(sc)
                     if f.name not in RELOADABLE_SCORING and getattr(new.scoring, f.name) != getattr(sc, f.name)]
            fixed += [s for s in ("audio", "vad", "model", "profiles") if getattr(new, s) != getattr(self.cfg, s)]
            if fixed:
                log.warning("reload: %s changed; applied after a restart", ", ".join(fixed))
        error = None
        try:
            n = self.reload_profiles()
        except StreamsvError as e:
            # e.g. the folder became writable by others: keep verifying with the profiles we had.
            log.error("reload: %s; keeping the current profiles", e)
            n, error = len(self.centroids), str(e)
        sc = self.rule.scoring
        return events.profiles_reloaded(self.totals.audio_s, self.centroids, n, sc.threshold, sc.min_confidence,
                                        sc.min_margin, sc.duration_slope, error)

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event | None = None) -> Iterator[Event]:
        interval = self.cfg.output.stats_interval_s
        next_stats = time.monotonic() + interval
        # A service may call run() again with a fresh source after a device failure: start clean.
        self.segmenter = Segmenter(self.cfg.vad)
        self._begin_voice(0.0)
        self._last_end = None
        if not self._ready_sent:
            self._ready_sent = True
            yield self.ready_event()
        totals = self.totals
        try:
            for chunk, captured in self.source.chunks(stop):
                totals.chunks_in += 1
                level = self.levels.measure(chunk, totals.audio_s + len(chunk) / SAMPLE_RATE)
                if level is not None:
                    yield level
                self._tell_listeners(len(chunk))
                asked, new_cfg = self._reload.take()
                if not asked and self._watch is not None and self._watch.changed():
                    log.info("profiles folder %s changed: reloading", shown(self._watch.store.dir))
                    asked = True
                if asked:
                    yield self._apply_reload(new_cfg)
                began = time.perf_counter()
                totals.audio_s += len(chunk) / SAMPLE_RATE
                out = self._process(self.segmenter.process(chunk, captured))
                totals.busy_s += time.perf_counter() - began
                yield from out
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

    def _tell_listeners(self, n_samples: int) -> None:
        for listener in self._audio_listeners:
            listener(n_samples)

    def _process(self, vad_events) -> list[Event]:
        out: list[Event] = []
        hop_s = self.rule.scoring.hop_s
        for ev in vad_events:
            if isinstance(ev, SpeechStart):
                self.totals.segments += 1
                changed = self._judge_short_gap()
                if changed is not None:
                    out.append(changed)
                gap = self._bridged_gap(ev.t)
                if gap is None:
                    self._begin_voice(ev.t)
                out.append(events.speech_start(ev.t, gap))
            elif isinstance(ev, SpeechAudio):
                # Audio is batched and pushed to the model once per hop: per-call
                # overhead makes many 30 ms pushes several times dearer than one.
                self.voice.add(ev.audio)
                if self.cfg.change.enabled:
                    # Every voice second, the closing tail's too: a test across a bridged gap counts back
                    # in voice seconds.
                    self.voice.recent.add(ev.audio)
                if ev.closing:
                    # The segment's kept tail comes only as it closes, a hangover after it was heard:
                    # a decision on it would be that late. The turn's summary covers this audio.
                    continue
                if self.cfg.change.enabled:
                    if not ev.voiced:   # a pause inside the segment: a candidate change point
                        self._note_pause(len(ev.audio) / SAMPLE_RATE)
                    changed = self._pause_test(ev)
                    # Offline, the continuous test runs half-way between decisions, so its extra embedding
                    # never lands on the block that completes a hop (capture-to-decision stays as it was);
                    # on the stream's frames it runs at the hop (below), one pooling before the decision.
                    # Across a bridged gap the pause test judges: a continuous change would be placed
                    # by voice seconds, which do not count the gap.
                    if (changed is None and self.voice.awaiting_gap is None and not self._test_at_hop
                            and self.voice.change_due(hop_s)):
                        changed = self._change_test(ev)
                    if changed is not None:
                        out.append(changed)
                if self.voice.awaiting_gap is not None and self.cfg.change.bridge_hold:
                    # The window still holds the voice before the gap: a decision now would name it
                    # for the first second of whoever speaks. The hop stays due until the test speaks.
                    continue
                if self.voice.hop_due(hop_s):
                    if self._test_at_hop and self.cfg.change.enabled and self.voice.awaiting_gap is None:
                        # The stream's frames are the test's: pushed for this hop anyway, one pooling more.
                        self._push_pending()
                        changed = self._change_test(ev)
                        if changed is not None:
                            out.append(changed)
                            continue   # the new voice decides once it has its own audio
                    d = self._hop(ev)
                    if d is not None:
                        out.append(d)
                elif self.voice.pending_samples() >= hop_s * SAMPLE_RATE:
                    # More than a hop waits for the model only before a voice's first decision
                    # (min_speech_s, 1 s): pushed as it comes, that decision's block encodes a hop's
                    # audio, not all of it (a segment's first hop, 16% of hops on continuous speech,
                    # took 2.3 ms against 1.5; docs/performance.md). The stream is the same whatever the pushes.
                    self._push_pending()
            elif isinstance(ev, SpeechEnd):
                self._last_end = ev.t
                if self.voice.embeddings and self.voice.pending_samples() >= TAIL_MIN_S * SAMPLE_RATE:
                    self._push_pending()   # let the turn's last words count in its summary
                    emb = self.stream.embedding()
                    if emb is not None:
                        self.voice.embeddings.append(emb)
                out.append(self._summary(ev))
        return out

    # ------------------------------------------------------------------ one voice

    def _new_voice(self, start: float, carried: np.ndarray | None = None) -> Voice:
        """A voice's bookkeeping from ``start``; ``carried`` is its audio so far (after a change)."""
        sc = self.rule.scoring
        keep_s = self.cfg.change.recent_s + self.cfg.vad.hangover_ms / 1000.0 + RECENT_SLACK_S
        recent = RecentAudio(keep_s, carried)
        level = WindowLevel(sc.window_s)
        if carried is None:
            next_hop = sc.min_speech_s
            return Voice(start, recent, level, next_hop=next_hop, next_change=next_hop + sc.hop_s / 2)
        level.add(carried)
        audio_s = len(carried) / SAMPLE_RATE
        # Its first decision comes once it has min_speech_s of audio (at least a block away); the
        # change test resumes half a hop after that.
        next_hop = max(sc.min_speech_s, audio_s + 1e-3)
        return Voice(start, recent, level, audio_s=audio_s, next_hop=next_hop, next_change=next_hop + sc.hop_s / 2,
                     pending=[carried])

    def _begin_voice(self, start: float, carried: np.ndarray | None = None) -> None:
        """Its own window, smoother, change reference and summary, from ``start`` on."""
        self.stream.reset()
        self.smoother.reset()
        self.change.reset()
        self.voice = self._new_voice(start, carried)
        if carried is None:
            # A new segment: the last one's closing push is not its first hop's model time. (After a
            # change, the model time since the last hop, the change test's included, still counts.)
            self._compute_mark = self.stream.compute_seconds

    def _judge_short_gap(self) -> events.SpeakerChangeEvent | None:
        """The last bridged gap's test when its segment closed before ``recent_s`` of it was heard:
        judged now, on what there is, before another segment starts (a gap after it would cut the
        test off, and a voice that took over at the short segment would be placed at the next one)."""
        voice = self.voice
        if voice.awaiting_gap is None or self._last_end is None:
            return None
        after_s = voice.audio_s - voice.awaiting_gap
        voice.awaiting_gap = None
        embedding = self._after_pause_embedding(after_s, after_s)
        if embedding is None:
            self.change.drop_pauses()   # too little to embed: nothing to judge
            return None
        verdict = self.change.test_pause(voice.audio_s, embedding, short_gap=True, shift=self._change_shift())
        return self._split(self._last_end, verdict) if self._changed(verdict, embedding, after_s) else None

    def _bridged_gap(self, start: float) -> float | None:
        """The gap before a segment starting at ``start`` when the voice before it goes on across it
        (the gap then waits for the pause test as a candidate change point), else None."""
        settings = self.cfg.change
        if settings.bridge_s <= 0 or self._last_end is None:
            return None
        gap = max(0.0, start - self._last_end)
        if gap > settings.bridge_s + EPS_S or not self.change.wants_gap(self.voice.audio_s):
            return None   # too long a gap, or too little voice before it to judge one
        self._push_pending()
        reference = self.stream.embedding()
        if reference is None:
            return None
        self.change.gap(self.voice.audio_s, reference, settings.bridge_threshold)
        self.voice.awaiting_gap = self.voice.audio_s
        self.voice.gaps.append((self.voice.audio_s, gap))
        return gap

    def _push_pending(self) -> None:
        audio = self.voice.take_pending()
        if audio is not None:
            self.stream.push(audio)

    def _change_test(self, ev: SpeechAudio) -> events.SpeakerChangeEvent | None:
        """Has the voice changed since the segment's window of ``recent_s`` ago? On a change, the
        new voice begins at the change with the audio since it."""
        if not self.change.ready(self.voice.audio_s):
            return None
        recent = self._recent_embedding()
        verdict = None if recent is None else self.change.test(self.voice.audio_s, recent, self._change_shift())
        if verdict is None or not self._changed(verdict, recent, self.cfg.change.recent_s):
            return None
        return self._split(ev.t_end, verdict)

    def _note_pause(self, seconds: float) -> None:
        """A pause of ``seconds`` just ended: if it is a candidate, the segment's window up to it
        (the audio so far goes to the model now, not at the next hop: no extra model time) is
        what the audio after it will be compared with."""
        if not self.change.wants_pause(self.voice.audio_s, seconds):
            return
        self._push_pending()
        reference = self.stream.embedding()
        if reference is not None:
            self.change.pause(self.voice.audio_s, reference)

    def _pause_test(self, ev: SpeechAudio) -> events.SpeakerChangeEvent | None:
        """Has another voice taken over after a pause inside the segment? Tested once
        ``recent_s`` of audio follows the pause; on a change the new voice begins at its end."""
        end = self.change.pause_due(self.voice.audio_s)
        if end is None:
            return None
        after_s = self.voice.audio_s - end
        judged_s = min(after_s, self.cfg.change.recent_s)   # the audio after the pause that is embedded
        embedding = self._after_pause_embedding(after_s, judged_s)
        if embedding is None:   # too little audio to embed (recent_s set below MIN_AUDIO_S)
            self.change.drop_pauses()
            return None
        verdict = self.change.test_pause(self.voice.audio_s, embedding, shift=self._change_shift())
        if self.voice.awaiting_gap is not None and end + EPS_S >= self.voice.awaiting_gap:
            self.voice.awaiting_gap = None   # the last bridged gap has been judged
        return self._split(ev.t_end, verdict) if self._changed(verdict, embedding, judged_s) else None

    def _change_shift(self) -> float:
        """How far the change tests' bars come down for the room's noise now (change.snr_slope)."""
        return self.change.snr_shift(self._window_snr(), self.rule.scoring.snr_ref_db)

    def _changed(self, verdict: ChangeVerdict, after: np.ndarray, after_s: float) -> bool:
        """A change test's verdict, unless the enrolled profiles say otherwise of the speech before
        it and the ``after_s`` after it, each against the decision bar for its length: both score
        as the same enrolled voice, PROFILE_VETO_MARGIN over it (change.profile_veto: a known voice
        that goes on is not a new speaker), or neither scores as any, STRANGER_VETO_MARGIN under it
        (change.stranger_veto: nobody is named either side)."""
        settings = self.cfg.change
        if not verdict.changed or not self.centroids or not (settings.profile_veto or settings.stranger_veto):
            return verdict.changed
        before = cosine_scores(verdict.reference, self.centroids)
        now = cosine_scores(after, self.centroids)
        bar_before = self.rule.threshold_at(self.rule.scoring.window_s)
        bar_now = self.rule.threshold_at(after_s)
        name = max(before, key=before.get)
        if (settings.profile_veto and max(now, key=now.get) == name
                and before[name] >= bar_before + PROFILE_VETO_MARGIN and now[name] >= bar_now + PROFILE_VETO_MARGIN):
            return False
        if (settings.stranger_veto and before[name] < bar_before - STRANGER_VETO_MARGIN
                and max(now.values()) < bar_now - STRANGER_VETO_MARGIN):
            return False
        return True

    @property
    def _test_at_hop(self) -> bool:
        """The continuous test on the stream's frames runs at the hop, whose push encodes them."""
        return self.change.settings.embedding == "stream"

    def _recent_embedding(self) -> np.ndarray | None:
        """The continuous test's embedding of the voice's last ``recent_s`` (change.embedding)."""
        seconds = self.cfg.change.recent_s
        if self._test_at_hop:
            return self.stream.recent_embedding(seconds)   # at the hop: its push has just encoded them
        return self._embed_for_test(self.voice.recent.last(seconds))

    def _after_pause_embedding(self, after_s: float, seconds: float) -> np.ndarray | None:
        """The embedding of the first ``seconds`` of the voice's last ``after_s`` (the audio after a
        pause or gap), by change.pause_embedding: pooled from the stream's frames, whose pending audio
        is pushed now (the hop's push gets the less), or embedded afresh. None: under MIN_AUDIO_S."""
        if self.change.settings.pause_embedding == "stream":
            # The last ``seconds``, not the first: a test falls due within a block of them.
            self._push_pending()
            return self.stream.recent_embedding(seconds)
        audio = self.voice.recent.last(after_s)[: int(seconds * SAMPLE_RATE)]
        return self._embed_for_test(audio) if len(audio) >= MIN_AUDIO_S * SAMPLE_RATE else None

    def _embed_for_test(self, audio: np.ndarray) -> np.ndarray:
        began = time.perf_counter()
        emb = self.embedder.embed(audio)
        self.stream.compute_seconds += time.perf_counter() - began  # the hop's model time includes the test
        return emb

    def _split(self, t_end: float, verdict: ChangeVerdict) -> events.SpeakerChangeEvent:
        """A change ``verdict.lag_s`` voice seconds before now (``t_end`` in the stream): the new voice
        begins there, with the audio since (placed in the stream past any bridged gap in between)."""
        self.totals.speaker_changes += 1
        at = t_end - verdict.lag_s - self.voice.gaps_after(self.voice.audio_s - verdict.lag_s)
        self._begin_voice(at, carried=self.voice.recent.last(verdict.lag_s))
        return events.speaker_change(t_end, at, verdict.similarity)

    def _hop(self, ev: SpeechAudio) -> events.DecisionEvent | None:
        self._push_pending()
        emb = self.stream.embedding()
        if emb is None:
            return None
        voice = self.voice
        voice.embeddings.append(emb)
        voice.hops += 1
        if self.cfg.change.enabled:   # its windows serve only the change test (~45 us a hop after a step)
            self.change.remember(voice.audio_s, emb)
        smoothed = self.smoother.push(cosine_scores(emb, self.centroids))
        snr_db = self._window_snr()
        bar = self.rule.threshold_at(self.stream.seconds, snr_db)
        d = decide(smoothed, bar, self.rule.scoring.min_margin)
        # Model time for this hop: every push since the previous hop, plus pooling.
        compute_ms = (self.stream.compute_seconds - self._compute_mark) * 1000.0
        self._compute_mark = self.stream.compute_seconds
        latency_ms = (time.monotonic() - ev.capture_time) * 1000.0
        self.totals.record_hop(latency_ms, compute_ms)
        return events.decision(ev.t_end, d.speaker, d.accepted, d.score,
                               self.rule.confidence_of(d.score, self.stream.seconds), smoothed,
                               self.stream.seconds, latency_ms, compute_ms, bar, snr_db)

    def _window_snr(self) -> float | None:
        """How far the voice's window stands above the room's noise floor, in dB, as the decision
        event gives it (rounded, so the event's seconds and SNR give its bar back: a replay of the
        decisions, tools/sweep_decisions.py, needs that); None before the VAD has heard a frame."""
        level, floor = self.voice.level.dbfs(), self.segmenter.noise_floor_dbfs if self.segmenter else -math.inf
        snr = math.nan if level is None else level - floor
        return round(snr, SNR_DECIMALS) if math.isfinite(snr) else None

    def _summary(self, ev: SpeechEnd) -> events.SpeechEndEvent:
        """The voice's summary since its start (a change's ``at``, or the start of the first segment
        it spans when segments continued it), over its speech seconds: the hops and the embeddings
        are the voice's, so the duration is too, not the closing segment's."""
        voice = self.voice
        if not voice.embeddings:
            # Shorter than min_speech_s: too little audio to say anything.
            return events.speech_end(ev.t, voice.start, voice.audio_s, voice.hops)
        # The mean of the voice's hop embeddings covers the whole turn, not just its last window.
        scores = cosine_scores(unit(np.mean(voice.embeddings, axis=0)), self.centroids)
        d = self.rule.decide(scores, voice.audio_s, self._window_snr())
        confidence = self.rule.confidence_of(d.score, min(voice.audio_s, self.rule.scoring.window_s))
        return events.speech_end(ev.t, voice.start, voice.audio_s, voice.hops, d.speaker, d.accepted, d.score,
                                 confidence, scores)

    # ------------------------------------------------------------------ stats

    def stats_event(self, final: bool = False) -> events.StatsEvent:
        s, t = self.source.stats, self.totals
        return events.stats(t.audio_s, final, time.monotonic() - t.started, t.audio_s, t.segments,
                            t.speaker_changes, t.decisions, len(self.centroids), t.latencies_ms, t.compute_ms,
                            t.busy_s, s.overflows, s.drops, s.dropped_s)
