"""Every event the live pipeline emits: one schema for every consumer, and its JSON-line form.

An event is a plain dict (a ``TypedDict`` below) whose ``event`` key names its kind, so a consumer
reads ``ev["event"]``, ``ev["t"]`` and the rest without importing anything; the pipeline builds
each one through the constructor of the same name here, which also rounds its figures, so the
JSON form is decided in this one file. ``t`` is always seconds of audio since the stream began.
Key order is part of the contract (it is the order of the JSON line).

  ready               always first: the input, the model, the profiles and the decision rule
  speech_start        the VAD opened a speech segment (``continues``: the previous one's voice goes on)
  decision            a live verdict, every hop of speech (``scoring.hop_s``)
  speaker_change      a new voice inside the segment (streamsv/change.py); the next decisions
                      and the turn's summary are about the new voice
  speech_end          the segment closed: the summary decision of its voice (since the last change,
                      or since the start of the segment it continues)
  level               input level, only for a sink that asks for it (the console's meter)
  stats               periodic (``output.stats_interval_s``) and once at the end, ``final`` true
  profiles_reloaded   after SIGHUP, a reload request or a change to the profiles folder: the profiles and the rule now in force

``confidence`` is null when the model has no confidence calibration; ``score`` is null when no
profile is enrolled. ``listen --turns`` keeps only what ``TurnFilter`` keeps.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Iterator, Literal, Mapping, TypedDict

import numpy as np

T_DECIMALS = 3          # stream times and durations: a millisecond
SCORE_DECIMALS = 4      # cosines and confidences
MS_DECIMALS = 2         # latency and compute figures
DBFS_DECIMALS = 1
PEAK_DECIMALS = 3
RTF_DECIMALS = 4

READY = "ready"
SPEECH_START = "speech_start"
DECISION = "decision"
SPEAKER_CHANGE = "speaker_change"
SPEECH_END = "speech_end"
LEVEL = "level"
STATS = "stats"
PROFILES_RELOADED = "profiles_reloaded"
KINDS = (READY, SPEECH_START, DECISION, SPEAKER_CHANGE, SPEECH_END, LEVEL, STATS, PROFILES_RELOADED)

# What a script reading ``listen --turns`` gets besides label changes: the turn boundaries and the
# stream's own news, not every hop.
TURN_EVENTS = (READY, SPEECH_START, SPEAKER_CHANGE, SPEECH_END, PROFILES_RELOADED)


# --------------------------------------------------------------------------- the schema


class ReadyEvent(TypedDict):
    event: Literal["ready"]
    t: float
    device: str                      # the input's name (a device, a file path, "stdin", "wyoming")
    sample_rate: int
    model: str                       # the model fingerprint profiles are checked against
    dim: int
    profiles: list[str]              # enrolled names, sorted
    threshold: float                 # the cosine threshold (at a full window)
    min_confidence: float | None     # when set, the rule is this calibrated confidence instead
    min_margin: float
    duration_slope: float
    window_s: float
    confidence: bool                 # whether decisions carry a calibrated confidence


class _SpeechStartKeys(TypedDict):
    event: Literal["speech_start"]
    t: float


class SpeechStartEvent(_SpeechStartKeys, total=False):
    # Only on a segment that continues the previous one's voice (``change.bridge_s``): the same
    # turn unless a speaker_change follows; the gap is a pause inside it. (Optional keys by
    # ``total=False``: NotRequired is not seen through this module's string annotations on 3.11.)
    continues: bool                  # always true when present
    gap_s: float                     # seconds since the previous segment ended


class DecisionEvent(TypedDict):
    event: Literal["decision"]
    t: float                         # stream time at the hop's end
    speaker: str | None              # the accepted name, None for unknown
    accepted: bool
    score: float | None              # the best (smoothed) cosine
    confidence: float | None
    scores: dict[str, float | None]  # every profile's smoothed cosine, by name
    speech_s: float                  # seconds of speech in the window
    latency_ms: float                # capture of the hop's last sample -> this event
    compute_ms: float                # model time for the hop
    threshold: float                 # the bar the best score met or missed: for the window's seconds and SNR
    snr_db: float | None             # the window's level over the room's noise floor (None: not yet known)


class SpeakerChangeEvent(TypedDict):
    event: Literal["speaker_change"]
    t: float                         # when the change was found
    at: float                        # where in the stream the new voice is placed
    similarity: float                # cosine of the recent audio to the segment before it


class SpeechEndEvent(TypedDict):
    event: Literal["speech_end"]
    t: float
    start: float                     # the voice's start: its segment's, an earlier one's it continues, or a change's ``at``
    duration_s: float                # the voice's speech seconds since ``start`` (gaps between segments excluded)
    decisions: int                   # live decisions on the voice since ``start``; 0: too short to judge
    speaker: str | None              # the summary decision over the whole turn
    accepted: bool
    score: float | None
    confidence: float | None
    scores: dict[str, float | None]


class LevelEvent(TypedDict):
    event: Literal["level"]
    t: float
    dbfs: float                      # RMS level since the previous level event
    peak: float                      # largest absolute sample (1.0 is full scale)


class StatsEvent(TypedDict):
    event: Literal["stats"]
    t: float
    final: bool
    uptime_s: float
    audio_s: float
    segments: int
    speaker_changes: int
    decisions: int
    profiles: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    compute_p50_ms: float | None
    compute_p95_ms: float | None
    rtf: float | None                # processing time / audio time
    overflows: int
    drops: int
    dropped_s: float


class ProfilesReloadedEvent(TypedDict):
    event: Literal["profiles_reloaded"]
    t: float
    profiles: list[str]
    count: int
    threshold: float
    min_confidence: float | None
    min_margin: float
    duration_slope: float
    error: str | None             # why the profiles were not re-read (the ones in force kept); None when they were


Event = (ReadyEvent | SpeechStartEvent | DecisionEvent | SpeakerChangeEvent | SpeechEndEvent | LevelEvent
         | StatsEvent | ProfilesReloadedEvent)


# --------------------------------------------------------------------------- constructors


def ready(t: float, device: str, sample_rate: int, model: str, dim: int, profiles: Iterable[str],
          threshold: float, min_confidence: float | None, min_margin: float, duration_slope: float,
          window_s: float, confidence: bool) -> ReadyEvent:
    return {"event": READY, "t": _t(t), "device": device, "sample_rate": sample_rate, "model": model,
            "dim": int(dim), "profiles": sorted(profiles), "threshold": threshold,
            "min_confidence": min_confidence, "min_margin": min_margin, "duration_slope": duration_slope,
            "window_s": window_s, "confidence": confidence}


def speech_start(t: float, gap_s: float | None = None) -> SpeechStartEvent:
    """A segment's start; with ``gap_s`` it continues the previous segment's voice after that gap."""
    if gap_s is None:
        return {"event": SPEECH_START, "t": _t(t)}
    return {"event": SPEECH_START, "t": _t(t), "continues": True, "gap_s": _t(gap_s)}


def decision(t: float, speaker: str | None, accepted: bool, score: float | None, confidence: float | None,
             scores: Mapping[str, float], speech_s: float, latency_ms: float, compute_ms: float,
             threshold: float, snr_db: float | None) -> DecisionEvent:
    return {"event": DECISION, "t": _t(t), "speaker": speaker, "accepted": accepted, "score": score_value(score),
            "confidence": confidence, "scores": score_map(scores), "speech_s": _t(speech_s),
            "latency_ms": round(latency_ms, MS_DECIMALS), "compute_ms": round(compute_ms, MS_DECIMALS),
            "threshold": score_value(threshold), "snr_db": snr_db}


def speaker_change(t: float, at: float, similarity: float) -> SpeakerChangeEvent:
    return {"event": SPEAKER_CHANGE, "t": _t(t), "at": _t(at), "similarity": similarity}


def speech_end(t: float, start: float, duration_s: float, decisions: int, speaker: str | None = None,
               accepted: bool = False, score: float | None = None, confidence: float | None = None,
               scores: Mapping[str, float] | None = None) -> SpeechEndEvent:
    """A turn's end; without a summary (``decisions`` 0) speaker, score and scores are empty."""
    return {"event": SPEECH_END, "t": _t(t), "start": _t(start), "duration_s": _t(duration_s),
            "decisions": decisions, "speaker": speaker, "accepted": accepted, "score": score_value(score),
            "confidence": confidence, "scores": score_map(scores or {})}


def level(t: float, dbfs: float, peak: float) -> LevelEvent:
    return {"event": LEVEL, "t": _t(t), "dbfs": round(dbfs, DBFS_DECIMALS), "peak": round(peak, PEAK_DECIMALS)}


def stats(t: float, final: bool, uptime_s: float, audio_s: float, segments: int, speaker_changes: int,
          decisions: int, profiles: int, latencies_ms: Iterable[float], computes_ms: Iterable[float],
          busy_s: float, overflows: int, drops: int, dropped_s: float) -> StatsEvent:
    """Running totals; latency and compute percentiles from the recent hops given."""
    lat, comp = list(latencies_ms), list(computes_ms)
    return {"event": STATS, "t": _t(t), "final": final, "uptime_s": _t(uptime_s), "audio_s": _t(audio_s),
            "segments": segments, "speaker_changes": speaker_changes, "decisions": decisions,
            "profiles": profiles, "latency_p50_ms": percentile(lat, 50), "latency_p95_ms": percentile(lat, 95),
            "latency_p99_ms": percentile(lat, 99), "compute_p50_ms": percentile(comp, 50),
            "compute_p95_ms": percentile(comp, 95),
            "rtf": round(busy_s / audio_s, RTF_DECIMALS) if audio_s > 0 else None,
            "overflows": overflows, "drops": drops, "dropped_s": _t(dropped_s)}


def profiles_reloaded(t: float, profiles: Iterable[str], count: int, threshold: float,
                      min_confidence: float | None, min_margin: float, duration_slope: float,
                      error: str | None = None) -> ProfilesReloadedEvent:
    return {"event": PROFILES_RELOADED, "t": _t(t), "profiles": sorted(profiles), "count": count,
            "threshold": threshold, "min_confidence": min_confidence, "min_margin": min_margin,
            "duration_slope": duration_slope, "error": error}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile rounded for an event, or None without values."""
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), MS_DECIMALS) if len(values) else None


def score_value(x: float | None) -> float | None:
    """A cosine as events carry it: rounded, and None for no score (nothing enrolled, NaN)."""
    return None if x is None or not math.isfinite(x) else round(float(x), SCORE_DECIMALS)


def score_map(scores: Mapping[str, float]) -> dict[str, float | None]:
    return {name: score_value(s) for name, s in sorted(scores.items())}


def _t(seconds: float) -> float:
    return round(float(seconds), T_DECIMALS)


# --------------------------------------------------------------------------- JSON lines


def to_json_line(event: Mapping[str, Any]) -> str:
    """The event as one compact JSON line (no trailing newline): ``listen --json``'s form."""
    return json.dumps(event, separators=(",", ":"))


# --------------------------------------------------------------------------- turns


class TurnFilter:
    """``listen --turns``: only what a script acting on turns needs. The ready and reload events,
    each turn's start, the pipeline's ``speaker_change``, a ``decision`` only when the live label (a
    name or unknown) differs from the turn's previous one (its first label included), and the turn's
    end with its summary decision; the final stats close the stream. Repeated decisions, level and
    periodic stats are left out. Every event keeps its own name and schema."""

    def __init__(self) -> None:
        self._label: object = ()          # no label yet in this turn (None means "unknown")

    def keep(self, ev: Mapping[str, Any]) -> Any:
        """``ev`` itself when a turn consumer wants it, else None."""
        kind = ev.get("event")
        if kind == SPEAKER_CHANGE or (kind == SPEECH_START and not ev.get("continues")):
            self._label = ()   # the next decision names the new voice (a continuing one keeps its label)
        if kind in TURN_EVENTS or (kind == STATS and ev.get("final")):
            return ev
        if kind == DECISION and ev.get("speaker") != self._label:
            self._label = ev.get("speaker")
            return ev
        return None


def turn_events(events: Iterable[Mapping[str, Any]]) -> Iterator[Any]:
    """The events ``TurnFilter`` keeps, as a stream."""
    f = TurnFilter()
    for ev in events:
        kept = f.keep(ev)
        if kept is not None:
            yield kept
