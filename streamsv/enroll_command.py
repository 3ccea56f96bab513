"""``streamsv enroll``: collect speech (microphone or files), judge it, check for collisions, save.

One flow for both sources: the voiced audio and the whole recordings go through the same
quality verdict (enrollment.py) before anything is written; a refused enrollment writes
nothing and exits 2. Progress while recording goes to a rich bar with an input-level meter on a
terminal, else to one line a second (JSON lines with ``--json``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import enrollment
from .errors import StreamsvError, shown
from .features import SAMPLE_RATE

PIECE_S = 3.0                 # mic enrollment: one embedding per ~3 s of voice, like a live window
NO_VOICE_WARN_S = 3.0         # hint when no voice for this long
QUIET_FRAMES = 10             # consecutive quiet voiced frames before the "too quiet" hint
CLIP_CHUNKS = 3               # chunks with a full-scale peak before the "clipping" hint
RAW_KEEP_S = 120.0            # whole-recording audio kept for the noise floor and clipping figures
REPORT_EVERY_S = 1.0          # non-terminal progress: one line a second at most


@dataclass
class MicProgress:
    """What the person enrolling is told while speaking."""
    voiced_s: float = 0.0
    target_s: float = enrollment.GOOD_SPEECH_S
    level_dbfs: float | None = None
    hint: str = "speak naturally"
    hint_kind: str = "ok"             # ok | warn | bad

    def as_dict(self) -> dict:
        return {"event": "enroll_progress", "voiced_s": round(self.voiced_s, 2), "target_s": self.target_s,
                "level_dbfs": None if self.level_dbfs is None else round(self.level_dbfs, 1),
                "hint": self.hint}


@dataclass
class Collected:
    pieces: list[np.ndarray] = field(default_factory=list)      # voiced audio in ~PIECE_S pieces
    raw: list[np.ndarray] = field(default_factory=list)         # the whole capture (bounded)


def hint_for(clip_chunks: int, since_voice_s: float, quiet_frames: int) -> tuple[str, str]:
    """The live hint, worst problem first."""
    if clip_chunks > CLIP_CHUNKS:
        return "clipping: move back or lower the input gain", "bad"
    if since_voice_s > NO_VOICE_WARN_S:
        return "no voice heard: speak up or check --device", "warn"
    if quiet_frames > QUIET_FRAMES:
        return "too quiet: move closer to the microphone", "warn"
    return "hearing you", "ok"


def collect(chunks: Iterator[tuple[np.ndarray, float]], vad_cfg, seconds: float,
            report: Callable[[MicProgress], None], clock: Callable[[], float] = time.monotonic) -> Collected:
    """Voiced audio from live chunks until ``seconds`` of it, or a deadline of 4x that plus 30 s."""
    from .vad import Segmenter, SpeechAudio, frame_dbfs

    seg = Segmenter(vad_cfg)
    out = Collected()
    voiced: list[np.ndarray] = []
    progress = MicProgress(target_s=seconds)
    start = last_voice = clock()
    deadline = start + seconds * 4 + 30
    raw_n = clip_chunks = quiet_frames = 0
    for chunk, captured in chunks:
        if raw_n < RAW_KEEP_S * SAMPLE_RATE:
            out.raw.append(chunk)
            raw_n += len(chunk)
        if len(chunk):
            progress.level_dbfs = frame_dbfs(chunk)
            peak = float(np.abs(chunk).max())
            clip_chunks = clip_chunks + 1 if peak >= enrollment.CLIP_LEVEL else max(0, clip_chunks - 1)
        for ev in seg.process(chunk, captured):
            if not isinstance(ev, SpeechAudio):
                continue
            # The VAD's segment audio, padding and short pauses included: what vad.voiced() gives
            # for a file, so the two sources count speech seconds the same way.
            voiced.append(ev.audio)
            progress.voiced_s += len(ev.audio) / SAMPLE_RATE
            if ev.voiced:
                last_voice = clock()
                quiet_frames = quiet_frames + 1 if frame_dbfs(ev.audio) < enrollment.QUIET_DBFS else 0
        progress.hint, progress.hint_kind = hint_for(clip_chunks, clock() - last_voice, quiet_frames)
        report(progress)
        if progress.voiced_s >= seconds or clock() > deadline:
            break
    if voiced:
        from .profiles import piece_bounds

        audio = np.concatenate(voiced)
        out.pieces = [audio[a:b] for a, b in piece_bounds(len(audio), int(PIECE_S * SAMPLE_RATE))]
    return out


class LineReporter:
    """Progress for a pipe or a log: one plain line (or JSON object) a second, and at every new hint."""

    def __init__(self, json_lines: bool, stream=None, clock: Callable[[], float] = time.monotonic) -> None:
        self.json_lines = json_lines
        self.stream = stream or sys.stdout
        self.clock = clock
        self._last_t = -1e9
        self._last_hint = None

    def __call__(self, p: MicProgress) -> None:
        now = self.clock()
        if now - self._last_t < REPORT_EVERY_S and p.hint == self._last_hint:
            return
        self._last_t, self._last_hint = now, p.hint
        if self.json_lines:
            line = json.dumps(p.as_dict(), separators=(",", ":"))
        else:
            level = "-" if p.level_dbfs is None else f"{p.level_dbfs:.0f}"
            line = f"voice {p.voiced_s:4.1f}/{p.target_s:g} s  level {level} dBFS  {p.hint}"
        self.stream.write(line + "\n")
        self.stream.flush()


def record_from_mic(cfg, seconds: float, json_lines: bool) -> Collected:
    """The microphone part of ``enroll``: a rich bar on a terminal, lines otherwise."""
    from .sinks.console import level_meter
    from .sources import MicSource

    with MicSource(cfg.audio.device, cfg.audio.block_ms, cfg.audio.queue_s, rate=cfg.audio.sample_rate) as mic:
        if sys.stdout.isatty() and not json_lines:
            from rich.progress import BarColumn, Progress, TextColumn

            colours = {"ok": "green", "warn": "yellow", "bad": "red"}
            with Progress(TextColumn("[bold]voice[/]"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total:.0f} s"),
                          TextColumn("{task.fields[level]}"), TextColumn("{task.fields[hint]}")) as bar:
                task = bar.add_task("enroll", total=seconds, hint=f"speak naturally into '{mic.name}'",
                                    level=level_meter(None))

                def report(p: MicProgress) -> None:
                    bar.update(task, completed=min(p.voiced_s, seconds), level=level_meter(p.level_dbfs),
                               hint=f"[{colours[p.hint_kind]}]{p.hint}[/]")

                return collect(mic.chunks(), cfg.vad, seconds, report)
        return collect(mic.chunks(), cfg.vad, seconds, LineReporter(json_lines))


# --------------------------------------------------------------------------- the command

def _emit(result: dict, json_out: bool, say: Callable[[str], None]) -> None:
    if json_out:
        say(json.dumps(result, separators=(",", ":")))


def _figures_line(q: enrollment.Quality, consistency_mean: float | None) -> str:
    def f(v, spec, unit=""):
        return "-" if v is None else f"{format(v, spec)}{unit}"

    return (f"  this recording: speech {q.voiced_s:.1f} s  level {f(q.level_dbfs, '.0f', ' dBFS')}  "
            f"SNR {f(q.snr_db, '.0f', ' dB')}  clipped {q.clipped:.2%}  flatness {f(q.flatness, '.2f')}  "
            f"modulation {f(q.modulation_db, '.1f', ' dB')}  speech {f(q.speech_share, '.0%')}  "
            f"consistency {f(consistency_mean, '.2f')}")


def run_enroll(name: str, paths: list[Path], seconds: float, *, force: bool, append: bool, json_out: bool,
               cfg, load_model: Callable[[], object], say: Callable[[str], None],
               warn: Callable[[str], None]) -> None:
    """The whole ``enroll`` command after option parsing (``load_model()`` gives the embedder);
    raises StreamsvError on a refusal, having written nothing."""
    from .profiles import MIN_ENROLL_S, ProfileStore, append_to_profile
    from .profiles import enroll as build_profile

    store = ProfileStore(cfg.profiles.resolved())
    exists = store.exists(name)
    if append and not exists:
        raise StreamsvError(f"no profile named {name!r} to append to; enroll it first: streamsv enroll {name}")
    if exists and not (force or append):
        raise StreamsvError(f"profile {name!r} already exists; use --append to add speech to it or --force to replace it")
    if paths:
        from .sources import load_audio
        from .vad import voiced_speech

        seen: dict[str, Path] = {}
        for p in paths:   # the same recording twice would count its speech twice
            first = seen.setdefault(os.path.realpath(p), p)
            if first is not p:
                raise StreamsvError(f"{shown(p)}: the same file as {shown(first)}; give each recording once")
        raw = [load_audio(p) for p in paths]            # a bad file fails before the model loads
        speech = [voiced_speech(w, cfg.vad) for w in raw]
        labels = [str(p) for p in paths]
    else:
        from .sources import resolve_input_device

        resolve_input_device(cfg.audio.device)           # so does a wrong --device
    emb = load_model()
    old = store.load(name, emb.fingerprint, emb.dim) if append else None
    if not paths:
        got = record_from_mic(cfg, seconds, json_out)
        speech, raw, labels = got.pieces, got.raw, None
    quality = enrollment.measure(speech, raw)
    # One standard of "enough" for mic and files: judged on the whole profile's speech, old and new.
    total_s = quality.voiced_s + (old.speech_s if old is not None else 0.0)
    verdict = enrollment.judge(quality, None, min_speech_s=MIN_ENROLL_S, total_speech_s=total_s)
    base = {"event": "enroll", "name": name, "append": append, "quality": quality.as_dict()}
    if verdict.refused:
        _emit({**base, "verdict": verdict.status, "reasons": verdict.reasons}, json_out, say)
        raise StreamsvError(f"enrollment refused, nothing saved: {verdict.reasons[0]}")
    # With --append this is the new audio alone: its embeddings join the old ones.
    new, warnings = build_profile(emb, name, speech, cfg.vad, sources=labels, trim=False)
    for w in warnings:
        warn(f"warning: {w}")
    others = {n: p.centroid for n, p in store.load_all(emb.fingerprint, emb.dim).items() if n != name}
    similar = enrollment.collisions(new.centroid, others)
    if old is not None:
        # The live accept threshold, not the collision bar: a few seconds of new speech against a
        # long profile scores lower than two full enrollments of one voice do.
        own = float(np.dot(new.centroid, old.centroid))
        if own < cfg.scoring.threshold and not force:
            _emit({**base, "verdict": "refused", "reasons": [f"does not sound like {name} ({own:.2f})"]}, json_out, say)
            raise StreamsvError(f"this voice does not sound like {name} ({own:.2f} < threshold {cfg.scoring.threshold:.2f}); "
                                f"nothing appended (use --force to append anyway)")
        profile = append_to_profile(old, new.embeddings, new.speech_s)
    else:
        if similar and not force:
            who, score = similar[0]
            _emit({**base, "verdict": "refused", "reasons": [f"sounds like {who} ({score:.2f})"],
                   "similar": [{"name": n, "score": round(s, 4)} for n, s in similar]}, json_out, say)
            raise StreamsvError(f"sounds like {who} ({score:.2f}): this voice may already be enrolled as {who!r}; "
                                f"add this speech to it with `streamsv enroll {who} --append`, "
                                f"or keep {name!r} as well with --force")
        profile = new
    for who, score in similar:
        # --append never refuses on another profile's likeness (it checks the profile's own voice).
        why = f"appended to {name!r} anyway" if old is not None else "kept because of --force"
        warn(f"warning: sounds like {who} ({score:.2f}); {why}")
    mean, low = profile.consistency()
    verdict = enrollment.judge(quality, mean, min_speech_s=MIN_ENROLL_S, total_speech_s=profile.speech_s)
    path = store.save(profile, force=True) if (old is not None or force) else store.save(profile)
    result = {**base, "verdict": verdict.status, "reasons": verdict.reasons, "path": str(path),
              "speech_s": round(profile.speech_s, 2), "embeddings": int(len(profile.embeddings)),
              "consistency_mean": round(mean, 4), "consistency_min": round(low, 4),
              "similar": [{"name": n, "score": round(s, 4)} for n, s in similar]}
    if json_out:
        _emit(result, True, say)
        return
    did = "appended to" if old is not None else "enrolled"
    say(f"{did} {name!r}: {verdict.summary()}")
    say(f"  {profile.speech_s:.1f} s of speech in the profile, {len(profile.embeddings)} embeddings, "
        f"consistency mean {mean:.2f} min {low:.2f} -> {path}")
    say(_figures_line(quality, mean))

