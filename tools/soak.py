"""Soak test: hours of looped speech and silence through the whole pipeline at full speed.

    python -m tools.soak                 # 6 h of audio (the release check)
    python -m tools.soak --minutes 10    # the short version the test suite runs

The audio is a loop of real dev-set speech (speechocean762 dev speakers, from ../shared/data or
$STREAMSV_DATA) separated by stretches of quiet noise; without the data, espeak-ng speech is
generated at run time. Every chunk goes through streamsv.pipeline.Pipeline (VAD, streaming
embedder, scoring, smoothing, stats) exactly as in `streamsv listen`, and every event is
serialised as the CLI would. A profile reload is requested periodically (the SIGHUP path).

Sampled every --sample-s seconds of audio: RSS (VmRSS from /proc/self/status) and the length of
every queue-like container inside the pipeline (deques, lists, dicts, arrays found by walking its
attributes), which is where an unbounded buffer would show. PASS when RSS grows by at most
--max-rss-growth-mb after warm-up and no container is larger at the end than it ever was during
the first half after warm-up (bounded deques at their maxlen are bounded by construction).
Exit status 0 on PASS, 1 on FAIL.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamsv.features import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]

CHUNK = 480  # 30 ms, what the microphone source delivers
GAP_S = (1.5, 4.0)  # silence between utterances: long enough for the VAD to close segments
NOISE_RMS = 0.002  # quiet room noise in the gaps, so "silence" is not digital zero
SPEAKERS = 3
UTTERANCES_PER_SPEAKER = 4
ESPEAK_LINES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to switch off the kitchen lights before you go to bed.",
    "Tomorrow morning we will take the early train to visit our grandmother.",
    "She sells sea shells by the sea shore every summer afternoon.",
)
ESPEAK_VOICES = ("en-us+m3", "en-us+f2", "en-gb+m1")


def data_dir() -> Path | None:
    d = Path(os.environ.get("STREAMSV_DATA") or REPO.parent / "shared" / "data")
    return d if d.is_dir() else None


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status")


# --------------------------------------------------------------------------- audio


def dev_speech() -> dict[str, list[np.ndarray]]:
    """A few utterances from each of the first dev speakers; empty without the data."""
    from streamsv.sources import load_audio

    d = data_dir()
    listing = d / "speechocean762" / "dev-speakers.txt" if d else None
    if listing is None or not listing.is_file():
        return {}
    out: dict[str, list[np.ndarray]] = {}
    for spk in listing.read_text().split()[:SPEAKERS]:
        files = sorted((d / "speechocean762" / "train" / spk).glob("*.opus"))[:UTTERANCES_PER_SPEAKER]
        if files:
            out[spk] = [load_audio(f) for f in files]
    return out


def espeak_speech() -> dict[str, list[np.ndarray]]:
    """Synthetic speech, generated now into a temporary folder (nothing stored in the repo)."""
    from streamsv.sources import load_audio

    exe = shutil.which("espeak-ng")
    if exe is None:
        return {}
    out: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="streamsv-soak-") as tmp:
        for voice in ESPEAK_VOICES:
            for i, line in enumerate(ESPEAK_LINES):
                path = Path(tmp) / f"{voice}-{i}.wav"
                subprocess.run([exe, "-v", voice, "-w", str(path), line], check=True, capture_output=True)
                out.setdefault(voice, []).append(load_audio(path))
    return out


def build_loop(speech: dict[str, list[np.ndarray]], seed: int = 0) -> np.ndarray:
    """Utterances interleaved across speakers, each followed by a gap of quiet noise."""
    rng = np.random.default_rng(seed)
    parts = []
    longest = max(len(v) for v in speech.values())
    for i in range(longest):
        for utts in speech.values():
            if i < len(utts):
                parts.append(utts[i])
                gap = int(rng.uniform(*GAP_S) * SAMPLE_RATE)
                parts.append((NOISE_RMS * rng.standard_normal(gap)).astype(np.float32))
    return np.concatenate(parts).astype(np.float32)


# --------------------------------------------------------------------------- source


def loop_source_class():
    from streamsv.sources import Source

    class LoopSource(Source):
        """The loop repeated until ``total_s`` of audio, in 30 ms chunks, as fast as consumed."""

        name = "soak-loop"

        def __init__(self, loop: np.ndarray, total_s: float) -> None:
            super().__init__()
            self.loop = loop
            self.total = int(total_s * SAMPLE_RATE)

        def chunks(self, stop=None):
            pos = 0  # position in the loop
            sent = 0
            while sent < self.total and (stop is None or not stop.is_set()):
                n = min(CHUNK, self.total - sent)
                if pos + n <= len(self.loop):
                    chunk = self.loop[pos:pos + n]
                else:
                    chunk = np.concatenate([self.loop[pos:], self.loop[: n - (len(self.loop) - pos)]])
                pos = (pos + n) % len(self.loop)
                sent += n
                self._count(chunk)
                yield chunk, time.monotonic()

    return LoopSource


# --------------------------------------------------------------------------- container sizes


def container_sizes(root: object, name: str = "pipeline", depth: int = 3) -> dict[str, tuple[int, int | None]]:
    """``{path: (len, maxlen)}`` for every sized container reachable through attributes.

    Walks instance ``__dict__``s (not modules, classes, or the model's tensors) up to ``depth``
    levels: the pipeline, its segmenter, embedding stream, smoother, source.
    """
    out: dict[str, tuple[int, int | None]] = {}
    seen: set[int] = set()

    def walk(obj: object, path: str, level: int) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (collections.deque, list, dict, set, bytearray)):
            out[path] = (len(obj), getattr(obj, "maxlen", None))
        elif isinstance(obj, np.ndarray) and obj.ndim >= 1:
            out[path] = (int(obj.shape[0]), None)
        if level >= depth or isinstance(obj, (str, bytes, np.ndarray, type)):
            return
        attrs = getattr(obj, "__dict__", None)
        if not isinstance(attrs, dict) or type(obj).__module__.startswith(("torch", "numpy", "threading")):
            return
        for key, value in attrs.items():
            if callable(value) and not isinstance(value, (collections.deque, list, dict)):
                continue
            walk(value, f"{path}.{key}", level + 1)

    walk(root, name, 0)
    return out


# --------------------------------------------------------------------------- run


@dataclass
class Sample:
    audio_s: float
    wall_s: float
    rss_mb: float
    sizes: dict[str, tuple[int, int | None]]


@dataclass
class Soak:
    minutes: float
    sample_s: float
    warmup_s: float
    reload_every_s: float
    samples: list[Sample] = field(default_factory=list)
    events: collections.Counter = field(default_factory=collections.Counter)
    bytes_out: int = 0


def run(args: argparse.Namespace) -> int:
    import streamsv
    from streamsv.config import Config
    from streamsv.pipeline import Pipeline

    speech = {} if args.espeak else dev_speech()
    origin = "speechocean762 dev speakers"
    if not speech:
        speech = espeak_speech()
        origin = "espeak-ng (generated now)"
    if not speech:
        print("soak: no speech available (neither ../shared/data nor espeak-ng)", file=sys.stderr)
        return 2
    loop = build_loop(speech)
    try:
        emb = streamsv.load_embedder(None)
        model = "shipped weights"
    except Exception as exc:  # noqa: BLE001 - weights not trained yet: plumbing still soaks
        from training.model import untrained_embedder  # needs torch: only when the weights are missing

        emb = untrained_embedder(seed=0)
        model = f"untrained (no shipped weights: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    # Profiles from each speaker's first utterance; the rest of the loop is scored against them.
    profiles = {spk: emb.embed(utts[0]) for spk, utts in speech.items()}

    total_s = args.minutes * 60.0
    soak = Soak(args.minutes, args.sample_s, min(args.warmup_s, total_s / 4), args.reload_every_s)
    source = loop_source_class()(loop, total_s)
    pipe = Pipeline(emb, source, Config(), profiles)
    print(f"soak: {args.minutes:g} min of audio; loop {len(loop) / SAMPLE_RATE:.1f} s from {origin} "
          f"({len(speech)} speakers); model {model}")
    print(f"soak: sampling every {args.sample_s:g} s of audio, warm-up {soak.warmup_s:g} s, "
          f"profile reload every {args.reload_every_s:g} s")

    t0 = time.monotonic()
    state = {"next_sample": 0.0, "next_reload": args.reload_every_s, "audio": 0}

    def on_audio(n: int) -> None:
        state["audio"] += n
        audio_s = state["audio"] / SAMPLE_RATE
        if audio_s >= state["next_sample"]:
            state["next_sample"] += args.sample_s
            s = Sample(audio_s, time.monotonic() - t0, rss_mb(), container_sizes(pipe))
            soak.samples.append(s)
            if args.verbose:
                print(f"  audio {audio_s / 60:7.1f} min  wall {s.wall_s:7.1f} s  RSS {s.rss_mb:7.1f} MB", flush=True)
        if args.reload_every_s > 0 and audio_s >= state["next_reload"]:
            state["next_reload"] += args.reload_every_s
            pipe.request_reload()

    pipe.add_audio_listener(on_audio)
    stop = threading.Event()
    with open(os.devnull, "w") as sink:
        for event in pipe.run(stop):
            line = json.dumps(event)  # what the CLI writes per event
            soak.bytes_out += sink.write(line + "\n")
            soak.events[event.get("event", "?")] += 1
    wall = time.monotonic() - t0
    final = Sample(state["audio"] / SAMPLE_RATE, wall, rss_mb(), container_sizes(pipe))
    soak.samples.append(final)
    return report(soak, final, wall, args.max_rss_growth_mb)


def report(soak: Soak, final: Sample, wall: float, max_growth_mb: float) -> int:
    after = [s for s in soak.samples if s.audio_s >= soak.warmup_s]
    if len(after) < 3:
        print("soak: FAIL: too few samples after warm-up (use a longer run or a smaller --sample-s)")
        return 1
    base = after[0]
    peak = max(after, key=lambda s: s.rss_mb)
    growth = peak.rss_mb - base.rss_mb
    first_half = [s for s in after if s.audio_s <= (base.audio_s + final.audio_s) / 2]
    growing = {}
    for path, (size, maxlen) in final.sizes.items():
        earlier = max((s.sizes.get(path, (0, None))[0] for s in first_half), default=0)
        bounded = maxlen is not None and size <= maxlen
        if size > earlier and not bounded:
            growing[path] = (earlier, size)

    audio = final.audio_s
    print(f"soak: audio {audio / 3600:.2f} h in {wall:.1f} s wall ({audio / wall:.1f}x real time)")
    print(f"soak: events {dict(soak.events)}; {soak.bytes_out / 1e3:.0f} kB of JSON lines")
    print("soak: RSS MB over audio time (min):")
    step = max(1, len(soak.samples) // 12)
    shown = soak.samples[::step] + ([soak.samples[-1]] if (len(soak.samples) - 1) % step else [])
    for s in shown:
        mark = " (warm-up)" if s.audio_s < soak.warmup_s else ""
        print(f"  {s.audio_s / 60:8.1f}  {s.rss_mb:8.1f}{mark}")
    print(f"soak: RSS after warm-up {base.rss_mb:.1f} MB, peak {peak.rss_mb:.1f} MB at {peak.audio_s / 60:.1f} min, "
          f"end {final.rss_mb:.1f} MB; growth {growth:+.1f} MB (limit {max_growth_mb:g})")
    print("soak: containers (first sample after warm-up -> end; maxlen):")
    for path in sorted(final.sizes):
        size, maxlen = final.sizes[path]
        start = base.sizes.get(path, (0, None))[0]
        peak_size = max(s.sizes.get(path, (0, None))[0] for s in after)
        cap = f" / {maxlen}" if maxlen is not None else ""
        print(f"  {path:48s} {start:7d} -> {size:7d}{cap}  (max {peak_size})")
    ok = growth <= max_growth_mb and not growing
    if growing:
        print("soak: growing containers: " + ", ".join(f"{p} {a}->{b}" for p, (a, b) in growing.items()))
    print(f"soak: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=360.0, help="minutes of audio to stream (default 360 = 6 h)")
    ap.add_argument("--sample-s", type=float, default=None, help="seconds of audio between samples (default: run/60, >= 5)")
    ap.add_argument("--warmup-s", type=float, default=None, help="audio seconds before the RSS baseline (default: 10%% of the run, 60..1800)")
    ap.add_argument("--reload-every-s", type=float, default=None, help="request a profile reload every N s of audio (0: never; default: run/20)")
    ap.add_argument("--max-rss-growth-mb", type=float, default=10.0)
    ap.add_argument("--espeak", action="store_true", help="use generated espeak-ng speech even when the data is there")
    ap.add_argument("--verbose", action="store_true", help="print every sample as it is taken")
    args = ap.parse_args(argv)
    if args.minutes <= 0:
        ap.error("--minutes must be positive")
    total_s = args.minutes * 60
    if args.sample_s is None:
        args.sample_s = max(5.0, total_s / 60)
    if args.warmup_s is None:
        args.warmup_s = min(1800.0, max(60.0, total_s / 10))
    if args.reload_every_s is None:
        args.reload_every_s = total_s / 20
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
