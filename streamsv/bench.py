"""`streamsv bench`: speed and memory of the whole listen pipeline, the daemon's ways of running
the student side by side in one run.

The pipeline measured is the real one (streamsv.pipeline.Pipeline: VAD, log-mel, model, scoring),
fed continuous audio in 30 ms blocks with a 0.5 s hop and a 3 s window, re-embedding every hop.
Systems (--systems): the student on ONNX Runtime, fp32 and int8 (1 intra-op thread): what the
daemon has. Audio: --audio FILE (a recording, repeated to length), or else synthetic voiced audio,
said so in the report's first line (speed figures only: its content does not matter to them).

``python -m tools.bench`` (a checkout, not the installed daemon) runs this same measurement with
the numpy runtime the ONNX graphs replaced (numpy-baseline) and the Resemblyzer teacher added side
by side, on dev-set speech: the README's figures (issue 11) come from it.

Each system first streams WARMUP_S seconds untimed (caches, allocator: the steady state of a
long-running daemon; start-up is measured on its own below). With --repeat N the timed passes go
round-robin over the systems N times, so a busy machine slows them alike; each figure is the
median over the repeats, and the spread (min-max) is printed. Figures (1 thread):
  hop compute p50/p95/p99   wall time to process the 30 ms block that completes a hop: VAD on the
                            block, pushing the hop's audio through features + model, pooling, scoring
  RTF                       processing time / audio time, audio fed as fast as it is taken
  capture-to-decision       at real-time pace: last sample of the hop captured -> decision out
  where a hop goes          medians over hop blocks of VAD, log-mel, model step, pooling, and the rest
Once per repeat, in fresh subprocesses: start-up to READY (interpreter start, imports, weights,
profiles read; wall clock, and the child's own CPU time), start-up to the first decision (audio at
real-time pace), steady and peak RSS. The children run as an installed daemon does: the bench's
profiles are embedded beforehand and handed over as a file (a daemon reads its profiles, it does not
embed them), and Python's bytecode is cached (an untimed first child per system writes it into a
temporary folder, as pip's install does once), so READY counts no compilation of source files.
Counted, not timed (at export, by torch's FLOP counter): parameters and MACs per second of audio.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .features import SAMPLE_RATE

BLOCK_S = 0.03
HOP_S = 0.5
WINDOW_S = 3.0
N_PROFILES = 3
WARMUP_S = 10.0
TARGETS = {  # issue 11: one thread, whole listen pipeline, re-embedding every 0.5 s hop
    "rtf": ("<=", 0.0025),
    "hop_p95_ms": ("<=", 2.0),
    "latency_p95_ms": ("<=", 60.0),
    "ready_s": ("<=", 0.3),
    "rss_steady_mb": ("<=", 100.0),
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
SYNTHETIC_AUDIO = "synthetic voiced audio (speed figures only; --audio FILE streams a recording)"
STAGES = ("vad", "log_mel", "step", "pool")
FORMANT_BANDWIDTH_HZ = 100.0
RESONATOR_TAIL = 1e-9  # the resonators' impulse responses stop here (relative to their first sample)


# ---------------------------------------------------------------- audio and systems


def resonator(x: np.ndarray, hz: float, bandwidth_hz: float = FORMANT_BANDWIDTH_HZ) -> np.ndarray:
    """A two-pole resonance at ``hz`` (gain 1 - r), as scipy's lfilter([1 - r], [1, -2r cos w, r^2], x)
    computes it, by convolution with its impulse response cut where it has decayed below
    RESONATOR_TAIL: numpy only, since the daemon does not depend on scipy."""
    r = np.exp(-np.pi * bandwidth_hz / SAMPLE_RATE)
    w = 2 * np.pi * hz / SAMPLE_RATE
    n = np.arange(int(np.ceil(np.log(RESONATOR_TAIL) / np.log(r))))
    impulse = (1 - r) * r ** n * np.sin((n + 1) * w) / np.sin(w)
    return np.convolve(x, impulse)[: len(x)]


def synthetic_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Voice-like audio for when no recording is given: glottal pulse trains with a wandering
    pitch through three formant resonators, as syllables of 0.1-0.3 s. webrtcvad takes it for
    speech, which is all the timing figures need."""
    rng = np.random.default_rng(seed)
    out = []
    total = 0
    while total < seconds * SAMPLE_RATE:
        n = int(rng.uniform(0.1, 0.3) * SAMPLE_RATE)
        f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(np.linspace(0, np.pi, n)))
        phase = np.cumsum(f0 / SAMPLE_RATE)
        src = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64) + 0.01 * rng.standard_normal(n)
        y = np.zeros(n)
        for formant in (rng.uniform(300, 800), rng.uniform(900, 2200), rng.uniform(2400, 3200)):
            y += resonator(src, formant)
        out.append(y * np.hanning(n))
        total += n
    wave = np.concatenate(out)[: int(seconds * SAMPLE_RATE)]
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def recording(seconds: float, path: str) -> tuple[np.ndarray, str]:
    """The audio file at ``path``, repeated to ``seconds``."""
    from .sources import load_audio

    wave = load_audio(path)
    reps = int(np.ceil(seconds * SAMPLE_RATE / len(wave)))
    return np.tile(wave, reps)[: int(seconds * SAMPLE_RATE)], f"file {path}"


def synthetic_audio(seconds: float) -> tuple[np.ndarray, str]:
    """The daemon's default when no --audio is given: synthetic, and said so."""
    return synthetic_speech(seconds), SYNTHETIC_AUDIO


@dataclass(frozen=True)
class System:
    """One way of running speaker embedding that the bench can measure. ``load(model)`` ->
    (embedder-like, description); ``model`` is --model (a student step graph) or None.
    ``available(model)`` -> None, or why it is skipped. ``counts(system)`` -> parameters and MACs.
    ``overrides``: config settings (``section.key`` -> value) its pipeline runs with on top of the bench's."""

    load: Callable[[str | None], tuple[Any, str]]
    available: Callable[[str | None], str | None] = lambda model: None
    counts: Callable[[Any], dict] = lambda system: counted(system)
    threads: Callable[[], None] = lambda: None  # pins the system's own thread pool (torch) to one
    overrides: Mapping[str, Any] = field(default_factory=dict)


def load_student(variant: str, model: str | None) -> tuple[Any, str]:
    """The student on ONNX Runtime: the shipped model in ``variant``, or the step graph ``model``
    (its int8 sibling for int8)."""
    from .embedder import load_embedder

    if model is not None and variant == "int8":
        model = str(model).replace(".onnx", ".int8.onnx") if ".int8." not in str(model) else model
    emb = load_embedder(model, variant=variant if model is None else None)
    return emb, f"ONNX Runtime {emb.variant} ({emb.fingerprint})"


@dataclass(frozen=True)
class Kit:
    """What one bench command measures: its systems (in report order), the module its start-up
    children run as (``python -m MODULE --child NAME``), and its audio when --audio is absent."""

    systems: dict[str, System]
    child_module: str
    default_audio: Callable[[float], tuple[np.ndarray, str]]
    prog: str = "streamsv bench"
    description: str = "Speed and memory of the listen pipeline: the student's fp32 and int8 graphs side by side."


DAEMON_KIT = Kit(
    systems={variant: System(functools.partial(load_student, variant)) for variant in ("fp32", "int8")},
    child_module="streamsv.bench",
    default_audio=synthetic_audio,
)


# ---------------------------------------------------------------- measured pipeline


class StageClock:
    """Time spent in each stage of the pipeline (STAGES), by wrapping the functions that do them;
    ``clock`` as the hop's (wall or process CPU time)."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.clock = clock
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            started = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += self.clock() - started
        return timed

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


def has_stages(system) -> bool:
    """Whether ``system`` is a student whose encoder's step and pooling can be timed apart."""
    return hasattr(getattr(system, "encoder", None), "embed_window")


@contextmanager
def stage_timing(system, clock: StageClock):
    """While inside: the VAD, the log-mel, the encoder's step and its pooling report to ``clock``."""
    from . import features, vad

    patched = [(vad.Segmenter, "process"), (features.StreamingLogMel, "push")]
    originals = [getattr(cls, name) for cls, name in patched]
    encoder = getattr(system, "encoder", None)
    has_encoder = has_stages(system)
    try:
        vad.Segmenter.process = clock.wrap("vad", originals[0])
        features.StreamingLogMel.push = clock.wrap("log_mel", originals[1])
        if has_encoder:
            encoder.encode = clock.wrap("step", type(encoder).encode.__get__(encoder))
            encoder.embed_window = clock.wrap("pool", type(encoder).embed_window.__get__(encoder))
        yield clock
    finally:
        for (cls, name), original in zip(patched, originals):
            setattr(cls, name, original)
        if has_encoder:
            del encoder.encode, encoder.embed_window


class TimedSource:
    """Array source in 30 ms blocks that times how long the consumer spends on each block
    (from handing it out to being asked for the next), and each stage's share when given a
    StageClock. `realtime` may be flipped mid-stream."""

    name = "bench"

    def __init__(self, wave: np.ndarray, realtime: bool = False, clock=time.perf_counter, stages: StageClock | None = None):
        from .sources import SourceStats

        self.wave = wave
        self.realtime = realtime
        self.clock = clock
        self.stages = stages
        self.stats = SourceStats()
        self.block_seconds: list[float] = []
        self.block_stages: list[dict[str, float]] = []

    def chunks(self, stop=None) -> Iterator[tuple[np.ndarray, float]]:
        block = int(BLOCK_S * SAMPLE_RATE)
        t0 = time.monotonic()
        for start in range(0, len(self.wave) - block + 1, block):
            chunk = self.wave[start : start + block]
            if self.realtime:
                due = t0 + (start + block) / SAMPLE_RATE
                if due > time.monotonic():
                    time.sleep(due - time.monotonic())
                captured = due
            else:
                t0 = time.monotonic() - (start + block) / SAMPLE_RATE  # keep the clock consistent on a flip
                captured = time.monotonic()
            self.stats.chunks += 1
            self.stats.seconds += block / SAMPLE_RATE
            before = self.stages.snapshot() if self.stages else None
            handed = self.clock()
            yield chunk, captured
            self.block_seconds.append(self.clock() - handed)
            if self.stages:
                after = self.stages.snapshot()
                self.block_stages.append({k: after[k] - before[k] for k in STAGES})

    def close(self) -> None:
        pass


def bench_profiles(system, wave: np.ndarray) -> dict[str, np.ndarray]:
    """Profiles enrolled from the bench audio itself: N_PROFILES clips of 3 s (timing only)."""
    step = max(1, len(wave) // N_PROFILES)
    n = min(step, int(3 * SAMPLE_RATE))
    return {f"p{i}": system.embed(wave[i * step : i * step + n]) for i in range(N_PROFILES)}


def make_pipeline(system, wave: np.ndarray, source: TimedSource, overrides: Mapping[str, Any] | None = None,
                  profiles: Mapping[str, np.ndarray] | None = None):
    """The listen pipeline on ``source``, scoring against ``profiles`` (default: ``bench_profiles``)."""
    from .config import Config
    from .pipeline import Pipeline

    cfg = Config().with_overrides(**{"scoring.hop_s": HOP_S, "scoring.window_s": WINDOW_S, "output.stats_interval_s": 86400,
                                     **(overrides or {})})
    return Pipeline(system, source, cfg, dict(profiles) if profiles is not None else bench_profiles(system, wave))


@dataclass
class RunResult:
    hop_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    busy_s: float = 0.0
    audio_s: float = 0.0
    decisions: int = 0


def run_pipeline(system, wave: np.ndarray, realtime: bool, clock=time.perf_counter, stages: bool = False,
                 overrides: Mapping[str, Any] | None = None) -> RunResult:
    stage_clock = StageClock(clock) if stages else None
    source = TimedSource(wave, realtime, clock, stage_clock)
    pipe = make_pipeline(system, wave, source, overrides)
    res = RunResult()
    hop_blocks = []
    with (stage_timing(system, stage_clock) if stage_clock else _nothing()):
        for event in pipe.run():
            if event["event"] == "decision":
                hop_blocks.append(len(source.block_seconds))  # the block being processed now
                res.latency_ms.append(event["latency_ms"])
    hop_blocks = [i for i in hop_blocks if i < len(source.block_seconds)]
    res.hop_ms = [1000 * source.block_seconds[i] for i in hop_blocks]
    if stage_clock:
        res.stage_ms = {k: [1000 * source.block_stages[i][k] for i in hop_blocks] for k in STAGES}
        res.stage_ms["rest"] = [h - sum(res.stage_ms[k][j] for k in STAGES) for j, h in enumerate(res.hop_ms)]
    res.busy_s = sum(source.block_seconds)
    res.audio_s = source.stats.seconds
    res.decisions = len(hop_blocks)
    return res


@contextmanager
def _nothing():
    yield None


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def measure(system, wave: np.ndarray, realtime_s: float, clock=time.perf_counter, warmup_s: float = 0.0,
            overrides: Mapping[str, Any] | None = None) -> dict:
    """Hop compute, RTF, where a hop goes and capture-to-decision of ``system``'s pipeline (with
    ``overrides`` on its config)."""
    if warmup_s > 0:  # untimed: the steady state of a long-running daemon, not its first seconds
        run_pipeline(system, wave[: int(warmup_s * SAMPLE_RATE)], realtime=False, overrides=overrides)
    fast = run_pipeline(system, wave, realtime=False, clock=clock, overrides=overrides)
    out = {
        "hop_p50_ms": pct(fast.hop_ms, 50),
        "hop_p95_ms": pct(fast.hop_ms, 95),
        "hop_p99_ms": pct(fast.hop_ms, 99),
        "rtf": round(fast.busy_s / fast.audio_s, 5),
        "decisions": fast.decisions,
        "audio_s": round(fast.audio_s, 2),
    }
    if has_stages(system):
        # A separate pass for where the time goes: the stage timers add a little to each hop.
        profiled = run_pipeline(system, wave, realtime=False, clock=clock, stages=True, overrides=overrides)
        out.update({f"stage_{k}_ms": pct(v, 50) for k, v in profiled.stage_ms.items()})
    if realtime_s > 0:
        rt = run_pipeline(system, wave[: int(realtime_s * SAMPLE_RATE)], realtime=True, overrides=overrides)
        out.update(latency_p50_ms=pct(rt.latency_ms, 50), latency_p95_ms=pct(rt.latency_ms, 95),
                   latency_p99_ms=pct(rt.latency_ms, 99))
    return out


def counted(system) -> dict:
    """Parameters and MACs per second of audio, offline and streaming: the student's were counted
    at export (training/export_weights.py) and travel in the model's metadata."""
    info = system.info
    return {"params": info.get("parameters"), "macs_per_s": info.get("macs_per_second"),
            "stream_macs_per_s": info.get("stream_macs_per_second")}


# ---------------------------------------------------------------- start-up and memory (child process)


def _rss_mb() -> tuple[float | None, float | None]:
    """(current, peak) resident set size in MB, from /proc (Linux); peak from getrusage elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        import resource

        return None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(kit: Kit, kind: str, model: str | None, audio_path: str, profiles_path: str | None = None) -> int:
    """Run as a fresh process: load, read the profiles (``profiles_path``: an .npz of centroids;
    without it they are embedded here, before READY), print READY with this process's CPU seconds,
    stream (real-time until the first decision, then as fast as possible), report memory."""
    kit.systems[kind].threads()
    import soundfile as sf

    system, _ = kit.systems[kind].load(model)
    wave = sf.read(audio_path, dtype="float32")[0]
    source = TimedSource(wave, realtime=True)
    profiles = None
    if profiles_path:
        with np.load(profiles_path, allow_pickle=False) as stored:
            profiles = {name: stored[name] for name in stored.files}
    pipe = make_pipeline(system, wave, source, kit.systems[kind].overrides, profiles)
    print(f"READY {time.process_time():.4f}", flush=True)
    for event in pipe.run():
        if event["event"] == "decision" and source.realtime:
            print("FIRST", flush=True)
            source.realtime = False
    rss, peak = _rss_mb()
    print(json.dumps({"rss_steady_mb": rss and round(rss, 1), "rss_peak_mb": peak and round(peak, 1),
                      "audio_s": round(source.stats.seconds, 1), "torch_loaded": "torch" in sys.modules}), flush=True)
    return 0


def startup(kind: str, model: str | None, audio_path: str, child_module: str = DAEMON_KIT.child_module,
            profiles_path: str | None = None, bytecode_dir: str | None = None) -> dict:
    """Start-up and memory of one fresh child (``child_main``). ``bytecode_dir``: Python's bytecode
    cache for the child (read and written there), else the environment's setting."""
    cmd = [sys.executable, "-m", child_module, "--child", kind, "--audio", audio_path]
    if model:
        cmd += ["--model", model]
    if profiles_path:
        cmd += ["--profiles", profiles_path]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if bytecode_dir:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = bytecode_dir
    # The child must import this same package, installed or not (and, for tools.bench, this checkout).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out: dict = {}
    for line in proc.stdout:
        if line.startswith("READY"):
            out["ready_s"] = round(time.monotonic() - t0, 3)
            out["ready_cpu_s"] = round(float(line.split()[1]), 3)
        elif line.startswith("FIRST"):
            out["first_decision_s"] = round(time.monotonic() - t0, 3)
        elif line.startswith("{"):
            out.update(json.loads(line))
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"bench child ({kind}) failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return out


# ---------------------------------------------------------------- report


ROWS = [  # key, label, format
    ("params", "parameters", "{:,.0f}"),
    ("macs_per_s", "MMAC per s of audio (offline)", "M"),
    ("stream_macs_per_s", "MMAC per s of audio (streaming, every hop)", "M"),
    ("hop_p50_ms", "hop compute p50 ms", "{:.2f}"),
    ("hop_p95_ms", "hop compute p95 ms", "{:.2f}"),
    ("hop_p99_ms", "hop compute p99 ms", "{:.2f}"),
    ("rtf", "RTF (whole pipeline)", "{:.4f}"),
    ("stage_vad_ms", "  hop: VAD ms (p50)", "{:.2f}"),
    ("stage_log_mel_ms", "  hop: log-mel ms (p50)", "{:.2f}"),
    ("stage_step_ms", "  hop: model step ms (p50)", "{:.2f}"),
    ("stage_pool_ms", "  hop: pooling ms (p50)", "{:.2f}"),
    ("stage_rest_ms", "  hop: scoring and the rest ms (p50)", "{:.2f}"),
    ("latency_p50_ms", "capture-to-decision p50 ms", "{:.1f}"),
    ("latency_p95_ms", "capture-to-decision p95 ms", "{:.1f}"),
    ("ready_s", "start-up to READY s", "{:.2f}"),
    ("ready_cpu_s", "start-up to READY, CPU s (the child's own)", "{:.2f}"),
    ("first_decision_s", "start-up to first decision s", "{:.2f}"),
    ("rss_steady_mb", "steady RSS MB", "{:.0f}"),
    ("rss_peak_mb", "peak RSS MB", "{:.0f}"),
]
LOWER_IS_BETTER_TIMED = {"hop_p50_ms", "hop_p95_ms", "hop_p99_ms", "rtf", "latency_p50_ms", "latency_p95_ms",
                         "ready_s", "ready_cpu_s", "first_decision_s", "rss_steady_mb", "rss_peak_mb"}


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.1f}" if fmt == "M" else fmt.format(value)


def summarise(runs: list[dict]) -> dict:
    """Median of each figure over repeats, and its (min, max) spread under key+'_spread'."""
    out: dict = {}
    for key in {k for r in runs for k in r}:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if not values:
            out[key] = runs[0].get(key)
            continue
        out[key] = float(np.median(values))
        if len(values) > 1:
            out[key + "_spread"] = (min(values), max(values))
    return out


def report(result: dict) -> str:
    systems = list(result["systems"])
    base = systems[0]
    lines = [f"{result.get('prog', DAEMON_KIT.prog)}: {result['audio']}, hop {HOP_S} s, window {WINDOW_S} s, {result['audio_s']:.0f} s streamed, "
             f"1 thread, {result['repeat']} repeat(s) round-robin (median; [min-max] when repeated); hop compute and RTF by "
             + ("wall clock" if result["clock"] == "wall" else "process CPU time (core-seconds)")]
    lines += [f"  {name}: {sect['desc']}" for name, sect in result["systems"].items()]
    lines += result.get("notes", [])
    lines += ["", "| figure | " + " | ".join(systems) + f" | target ({result['target_system']}) |",
              "|---|" + "---:|" * len(systems) + "---|"]
    for key, label, fmt in ROWS:
        cells = []
        for name in systems:
            figures = result["systems"][name]["figures"]
            value = figures.get(key)
            cell = _fmt(value, fmt)
            spread = figures.get(key + "_spread")
            if spread and value is not None:
                cell += f" [{_fmt(spread[0], fmt)}-{_fmt(spread[1], fmt)}]"
            ref = result["systems"][base]["figures"].get(key)
            if name != base and key in LOWER_IS_BETTER_TIMED and value and ref:
                cell += f" ({ref / value:.1f}x)"
            cells.append(cell)
        target = ""
        if key in TARGETS:
            op, limit = TARGETS[key]
            target_figures = result["systems"].get(result["target_system"], {}).get("figures", {})
            value = None if target_figures.get("decisions") == 0 else target_figures.get(key)   # no speech: no verdict
            target = f"{op} {limit:g} " + ("-" if value is None else ("ok" if value <= limit else "MISSED"))
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")
    lines.append(f"(Nx) = {base} / system: how many times less time or memory than {base}.")
    return "\n".join(lines)


def run_bench(args, kit: Kit = DAEMON_KIT) -> dict:
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in kit.systems]
    if unknown:
        from .errors import StreamsvError

        raise StreamsvError(f"bench: unknown system {unknown[0]!r}; expected some of {', '.join(kit.systems)}")
    if args.audio:
        wave, audio_desc = recording(args.seconds, args.audio)
    else:
        wave, audio_desc = (synthetic_audio if args.synthetic else kit.default_audio)(args.seconds)
    notes = []
    for name in list(wanted):
        why_not = kit.systems[name].available(args.model)
        if why_not:
            wanted.remove(name)
            notes.append(f"{name}: skipped ({why_not})")
    for name in wanted:
        kit.systems[name].threads()
    target = next((s for s in ("fp32", "int8") if s in wanted), wanted[0] if wanted else None)
    result = {"prog": kit.prog, "audio": audio_desc, "clock": args.clock, "audio_s": len(wave) / SAMPLE_RATE, "repeat": args.repeat,
              "systems": {}, "notes": notes, "target_system": target}
    loaded = {name: kit.systems[name].load(args.model) for name in wanted}
    runs: dict[str, list[dict]] = {name: [] for name in wanted}
    with tempfile.TemporaryDirectory() as tmp:
        import soundfile as sf

        audio_path = str(Path(tmp) / "bench.wav")
        child_wave = wave[: int(max(args.seconds, 5) * SAMPLE_RATE)]
        sf.write(audio_path, child_wave, SAMPLE_RATE, subtype="FLOAT")
        bytecode_dir = str(Path(tmp) / "bytecode")
        profiles_paths = {name: str(Path(tmp) / f"{name}.profiles.npz") for name in wanted}
        if not args.no_startup:
            for name in wanted:
                np.savez(profiles_paths[name], **bench_profiles(loaded[name][0], child_wave))
                startup(name, args.model, audio_path, kit.child_module, profiles_paths[name], bytecode_dir)  # untimed: caches bytecode
        for _ in range(args.repeat):
            for name in wanted:
                figures = measure(loaded[name][0], wave, args.realtime_s, CLOCKS[args.clock], args.warmup_s,
                                  kit.systems[name].overrides)
                if not args.no_startup:
                    figures.update(startup(name, args.model, audio_path, kit.child_module, profiles_paths[name],
                                           bytecode_dir))
                runs[name].append(figures)
    for name in wanted:
        system, desc = loaded[name]
        figures = summarise(runs[name])
        figures.update(kit.systems[name].counts(system))
        result["systems"][name] = {"desc": desc, "figures": figures, "runs": runs[name]}
        if figures.get("decisions") == 0:
            result["notes"].append(f"{name}: no decision was made (no speech the VAD passes in this audio): the hop "
                                   "figures are empty and RTF is the VAD's alone, not the pipeline's")
    result["notes"].append(vad_cost_note(wave, result))
    return result


def vad_cost_note(wave: np.ndarray, result: dict) -> str:
    """Each VAD engine's process CPU per second of audio, beside the whole pipeline's (issue 10)."""
    from .config import VadConfig
    from .vad import ENGINES, cost_ms_per_s

    costs = {engine: cost_ms_per_s(wave, VadConfig(engine=engine)) for engine in ENGINES}
    result["vad_ms_per_s"] = costs
    rtf = result["systems"].get(result["target_system"], {}).get("figures", {}).get("rtf")
    whole = f"; the whole {result['target_system']} pipeline {1000 * rtf:.2f} ms" if rtf else ""
    return "VAD CPU per s of audio: " + ", ".join(f"{e} {ms:.2f} ms" for e, ms in costs.items()) + whole


def main(args: list[str] | None = None, kit: Kit = DAEMON_KIT, audio_help: str = "audio file to stream (default: synthetic voiced audio)") -> int:
    names = ",".join(kit.systems)
    p = argparse.ArgumentParser(prog=kit.prog, description=kit.description)
    p.add_argument("--systems", default=names,
                   help=f"comma-separated, measured in this order (default: all of {names}; unavailable ones are skipped with a note)")
    p.add_argument("--model", help="student step graph for fp32/int8 (default: the shipped model)")
    p.add_argument("--audio", help=audio_help)
    p.add_argument("--synthetic", action="store_true", help="without --audio: synthetic voiced audio (speed figures only)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of audio streamed as fast as possible")
    p.add_argument("--realtime-s", type=float, default=8.0, help="seconds streamed at real-time pace for latency (0: skip)")
    p.add_argument("--warmup-s", type=float, default=WARMUP_S, help="seconds streamed untimed before the timed pass")
    p.add_argument("--repeat", type=int, default=1, help="timed passes per system, round-robin; figures are medians")
    p.add_argument("--clock", default="wall", choices=list(CLOCKS),
                   help="time hops by wall clock, or by process CPU time (robust on a busy machine); latency is always wall time")
    p.add_argument("--no-startup", action="store_true", help="skip the start-up and memory subprocesses")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--child", choices=list(kit.systems), help=argparse.SUPPRESS)
    p.add_argument("--profiles", help=argparse.SUPPRESS)   # the child's profiles (.npz of centroids)
    a = p.parse_args(args)

    from .errors import StreamsvError

    if a.child:
        return child_main(kit, a.child, a.model, a.audio, a.profiles)
    if a.seconds < 2 or not (a.realtime_s == 0 or a.realtime_s >= 2) or a.repeat < 1:
        # Under 2 s the first decision (after 1 s of speech) may never come.
        raise StreamsvError("bench: --seconds must be at least 2, --realtime-s 0 (skip) or at least 2, --repeat at least 1")
    result = run_bench(a, kit)
    print(json.dumps(result, indent=1) if a.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
