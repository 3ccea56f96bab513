"""`streamsv bench`: speed and memory of the whole listen pipeline, student beside the teacher.

The pipeline measured is the real one (streamsv.pipeline.Pipeline: VAD, log-mel, model, scoring),
fed continuous speech in 30 ms blocks with a 0.5 s hop and a 3 s window, re-embedding every hop.
The teacher (Resemblyzer, training extra) runs through the same Pipeline, re-embedding its 3 s
window with embed_utterance each hop; it is skipped with a note when not installed.

Each system first streams WARMUP_S seconds untimed (caches, allocator: the steady state of a
long-running daemon; start-up is measured on its own below). Figures, per thread setting (1
thread, then all cores; the numpy runtime is single-threaded, so the student has one setting):
  hop compute p50/p95/p99   wall time to process the 30 ms block that completes a hop: VAD on the
                            block, pushing the hop's audio through features + model, pooling, scoring
  RTF                       processing time / audio time, audio fed as fast as it is taken
  capture-to-decision       at real-time pace: last sample of the hop captured -> decision out
Once, in fresh subprocesses (1 thread): start-up to READY (interpreter start, imports, weights,
profiles), start-up to the first decision (audio at real-time pace), steady and peak RSS.
Counted, not timed: parameters and multiply-accumulates per second of audio.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .embedder import Embedder

SAMPLE_RATE = 16000
BLOCK_S = 0.03
HOP_S = 0.5
WINDOW_S = 3.0
N_PROFILES = 3
WARMUP_S = 10.0
TARGETS = {  # issue 5: one thread, streaming, re-embedding every hop
    "rtf": ("<=", 0.01),
    "hop_p95_ms": ("<=", 5.0),
    "latency_p95_ms": ("<=", 60.0),
    "ready_s": ("<=", 2.0),
    "rss_steady_mb": ("<=", 300.0),
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
REPO_TOOLS = Path(__file__).resolve().parents[1] / "tools"


# ---------------------------------------------------------------- audio and systems


def synthetic_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Voice-like audio for when no real speech is at hand: glottal pulse trains with a
    wandering pitch through three formant resonators, as syllables of 0.1-0.3 s. webrtcvad
    takes it for speech, which is all the timing figures need."""
    try:
        from scipy.signal import lfilter
    except ModuleNotFoundError:
        from .errors import StreamsvError

        raise StreamsvError("bench: no speech data found; pass --audio FILE (synthetic speech needs scipy)") from None

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
            r = np.exp(-np.pi * 100 / SAMPLE_RATE)
            a = [1, -2 * r * np.cos(2 * np.pi * formant / SAMPLE_RATE), r * r]
            y += lfilter([1 - r], a, src)
        out.append(y * np.hanning(n))
        total += n
    wave = np.concatenate(out)[: int(seconds * SAMPLE_RATE)]
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def bench_audio(seconds: float, path: str | None) -> tuple[np.ndarray, str]:
    """The audio to stream: --audio, else dev-set speech from the shared data, else synthetic."""
    if path:
        from .sources import load_audio

        wave = load_audio(path)
        reps = int(np.ceil(seconds * SAMPLE_RATE / len(wave)))
        return np.tile(wave, reps)[: int(seconds * SAMPLE_RATE)], f"file {path}"
    try:
        sys.path.insert(0, str(REPO_TOOLS))
        import datasets

        if datasets.data_root(required=False) is not None:
            # Dev speakers only (never training audio): LibriSpeech test-other, continuous read speech.
            clips, total = [], 0
            for utt in datasets.dev_set("librispeech-test-other"):
                clips.append(datasets.read_audio(utt.path))
                total += len(clips[-1])
                if total >= seconds * SAMPLE_RATE:
                    break
            return np.concatenate(clips)[: int(seconds * SAMPLE_RATE)], "LibriSpeech test-other (dev speakers)"
    except ImportError:
        pass
    finally:
        if str(REPO_TOOLS) in sys.path:
            sys.path.remove(str(REPO_TOOLS))
    return synthetic_speech(seconds), "synthetic voiced audio (no speech data found)"


def load_system(kind: str, model: str | None, variant: str = "numpy"):
    """('student', 'untrained' | path | None) or ('teacher', _) -> (embedder-like, description)."""
    if kind == "teacher":
        sys.path.insert(0, str(REPO_TOOLS))
        import teacher

        return teacher.Teacher(), "Resemblyzer VoiceEncoder (teacher)"
    from .embedder import DEFAULT_WEIGHTS, load_embedder

    suffix = f", {variant}"
    if model == "untrained" or (model is None and not DEFAULT_WEIGHTS.is_file()):
        return apply_variant(Embedder.untrained(seed=0), variant), f"untrained student{suffix} (no weights: speed figures only)"
    emb = load_embedder(model)
    return apply_variant(emb, variant), f"student {model or DEFAULT_WEIGHTS.name} ({emb.fingerprint}{suffix})"


VARIANTS = ("numpy", "numpy-exact", "numpy-tanh", "torch", "int8", "compile")


def apply_variant(emb: Embedder, variant: str) -> Embedder:
    """The same weights run another way (a copy; the input is untouched).

    numpy: the runtime as loaded (streamsv/runtime.py). numpy-exact / numpy-tanh: the runtime
    with the exact (erf) GELU or its tanh approximation. torch: the torch model with each
    GroupLinear fused into one block-diagonal Linear (the runtime before the numpy one). int8:
    that model with dynamic int8 quantization of every nn.Linear (fbgemm/x86 kernels here,
    qnnpack on ARM). compile: that model's encode under torch.compile."""
    import copy

    if variant == "numpy":
        return emb
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    out = copy.copy(emb)
    if variant.startswith("numpy-"):
        from .runtime import Encoder

        out.encoder = Encoder(emb.weights, emb.config, activation=variant.split("-")[1])
        return out
    import platform
    import warnings

    import torch

    from .embedder import TorchEncoder
    from .model import fuse_for_inference

    network = fuse_for_inference(emb.to_torch())
    if variant == "int8":
        engines = torch.backends.quantized.supported_engines
        if platform.machine().lower() in ("aarch64", "arm64", "armv7l") and "qnnpack" in engines:
            torch.backends.quantized.engine = "qnnpack"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
            network = torch.ao.quantization.quantize_dynamic(network, {torch.nn.Linear}, dtype=torch.qint8)
    elif variant == "compile":
        network.encode = torch.compile(network.encode)
    out.encoder = TorchEncoder(network)
    return out


def teacher_available() -> bool:
    sys.path.insert(0, str(REPO_TOOLS))
    try:
        import teacher

        return teacher.available()
    except ImportError:
        return False
    finally:
        sys.path.remove(str(REPO_TOOLS))


# ---------------------------------------------------------------- measured pipeline


class TimedSource:
    """Array source in 30 ms blocks that times how long the consumer spends on each block
    (from handing it out to being asked for the next). `realtime` may be flipped mid-stream."""

    name = "bench"

    def __init__(self, wave: np.ndarray, realtime: bool = False, clock=time.perf_counter):
        from .sources import SourceStats

        self.wave = wave
        self.realtime = realtime
        self.clock = clock
        self.stats = SourceStats()
        self.block_seconds: list[float] = []

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
            handed = self.clock()
            yield chunk, captured
            self.block_seconds.append(self.clock() - handed)

    def close(self) -> None:
        pass


def make_pipeline(system, wave: np.ndarray, source: TimedSource):
    from .config import Config
    from .pipeline import Pipeline

    cfg = Config().with_overrides(**{"scoring.hop_s": HOP_S, "scoring.window_s": WINDOW_S, "output.stats_interval_s": 86400})
    # Profiles enrolled from the bench audio itself: N_PROFILES clips of 3 s (timing only).
    step = max(1, len(wave) // N_PROFILES)
    n = min(step, int(3 * SAMPLE_RATE))
    profiles = {f"p{i}": system.embed(wave[i * step : i * step + n]) for i in range(N_PROFILES)}
    return Pipeline(system, source, cfg, profiles)


@dataclass
class RunResult:
    hop_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    busy_s: float = 0.0
    audio_s: float = 0.0
    decisions: int = 0


def run_pipeline(system, wave: np.ndarray, realtime: bool, clock=time.perf_counter) -> RunResult:
    source = TimedSource(wave, realtime, clock)
    pipe = make_pipeline(system, wave, source)
    res = RunResult()
    hop_blocks = []
    for event in pipe.run():
        if event["event"] == "decision":
            hop_blocks.append(len(source.block_seconds))  # the block being processed now
            res.latency_ms.append(event["latency_ms"])
    res.hop_ms = [1000 * source.block_seconds[i] for i in hop_blocks if i < len(source.block_seconds)]
    res.busy_s = sum(source.block_seconds)
    res.audio_s = source.stats.seconds
    res.decisions = len(hop_blocks)
    return res


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def measure(system, wave: np.ndarray, realtime_s: float, clock=time.perf_counter, warmup_s: float = 0.0) -> dict:
    if warmup_s > 0:  # untimed: the steady state of a long-running daemon, not its first seconds
        run_pipeline(system, wave[: int(warmup_s * SAMPLE_RATE)], realtime=False)
    fast = run_pipeline(system, wave, realtime=False, clock=clock)
    out = {
        "hop_p50_ms": pct(fast.hop_ms, 50),
        "hop_p95_ms": pct(fast.hop_ms, 95),
        "hop_p99_ms": pct(fast.hop_ms, 99),
        "rtf": round(fast.busy_s / fast.audio_s, 5),
        "decisions": fast.decisions,
        "audio_s": round(fast.audio_s, 2),
    }
    if realtime_s > 0:
        rt = run_pipeline(system, wave[: int(realtime_s * SAMPLE_RATE)], realtime=True)
        out.update(latency_p50_ms=pct(rt.latency_ms, 50), latency_p95_ms=pct(rt.latency_ms, 95),
                   latency_p99_ms=pct(rt.latency_ms, 99))
    return out


def counted(kind: str, system) -> dict:
    """Parameters and MACs per second of audio, counted from the model, offline and streaming."""
    if kind == "teacher":
        import teacher

        return {"params": system.num_parameters, "macs_per_s": teacher.teacher_macs_per_second(system.encoder),
                "stream_macs_per_s": teacher.teacher_stream_macs_per_second(WINDOW_S, HOP_S, system.encoder)}
    try:
        return {"params": int(system.num_parameters), "macs_per_s": int(system.macs_per_second),
                "stream_macs_per_s": int(student_stream_macs(system))}
    except ModuleNotFoundError:  # counting MACs needs torch's FLOP counter; the runtime does not
        return {"params": int(system.num_parameters), "macs_per_s": None, "stream_macs_per_s": None}


def student_stream_macs(emb, seconds: float = 4.0) -> float:
    """MACs per second of audio of the streaming path (push a hop, pool the window, every hop),
    counted by torch's FLOP counter like Embedder.macs_per_second (2 FLOPs = 1 MAC), on the
    torch model as trained: the function's arithmetic, whichever runtime computes it."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .embedder import TorchEncoder
    from .features import FILTERBANK_MACS_PER_FRAME, num_frames

    wave = synthetic_speech(seconds, seed=1)
    hop = int(HOP_S * SAMPLE_RATE)
    reference = copy.copy(emb)
    reference.encoder = TorchEncoder(emb.to_torch())
    stream = reference.stream(window_s=WINDOW_S)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        for start in range(0, len(wave) - hop + 1, hop):
            stream.push(wave[start : start + hop])
            stream.embedding()
    mel_frames = num_frames(len(wave) - len(wave) % hop)
    return (counter.get_total_flops() / 2 + mel_frames * FILTERBANK_MACS_PER_FRAME) / seconds


# ---------------------------------------------------------------- start-up and memory (child process)


def _rss_mb() -> tuple[float | None, float | None]:
    """(current, peak) resident set size in MB, from /proc (Linux); peak from getrusage elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        import resource

        return None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(kind: str, model: str | None, audio_path: str, variant: str = "numpy") -> int:
    """Run as a fresh process: load, print READY, stream (real-time until the first decision,
    then as fast as possible), report memory."""
    if kind == "teacher" or not variant.startswith("numpy"):  # the numpy runtime never imports torch
        import torch

        torch.set_num_threads(1)
    import soundfile as sf

    system, _ = load_system(kind, model, variant)
    wave = sf.read(audio_path, dtype="float32")[0]
    source = TimedSource(wave, realtime=True)
    pipe = make_pipeline(system, wave, source)
    print("READY", flush=True)
    for event in pipe.run():
        if event["event"] == "decision" and source.realtime:
            print("FIRST", flush=True)
            source.realtime = False
    rss, peak = _rss_mb()
    print(json.dumps({"rss_steady_mb": rss and round(rss, 1), "rss_peak_mb": peak and round(peak, 1),
                      "audio_s": round(source.stats.seconds, 1)}), flush=True)
    return 0


def startup(kind: str, model: str | None, audio_path: str, variant: str = "numpy") -> dict:
    cmd = [sys.executable, "-m", "streamsv.bench", "--child", kind, "--audio", audio_path, "--variant", variant]
    if model:
        cmd += ["--model", model]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # The child must import this same package, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out: dict = {}
    for line in proc.stdout:
        if line.startswith("READY"):
            out["ready_s"] = round(time.monotonic() - t0, 3)
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
    ("latency_p50_ms", "capture-to-decision p50 ms", "{:.1f}"),
    ("latency_p95_ms", "capture-to-decision p95 ms", "{:.1f}"),
    ("ready_s", "start-up to READY s", "{:.2f}"),
    ("first_decision_s", "start-up to first decision s", "{:.2f}"),
    ("rss_steady_mb", "steady RSS MB", "{:.0f}"),
    ("rss_peak_mb", "peak RSS MB", "{:.0f}"),
]
COUNTED = {"params", "macs_per_s", "stream_macs_per_s"}
PER_THREAD = {"hop_p50_ms", "hop_p95_ms", "hop_p99_ms", "rtf", "latency_p50_ms", "latency_p95_ms"}


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.1f}" if fmt == "M" else fmt.format(value)


def report(result: dict) -> str:
    lines = [f"streamsv bench: {result['audio']}, hop {HOP_S} s, window {WINDOW_S} s, "
             f"{result['audio_s']:.0f} s streamed; {result['student_desc']}; hop compute and RTF by "
             + ("wall clock" if result["clock"] == "wall" else "process CPU time (core-seconds)")]
    if result.get("teacher_note"):
        lines.append(result["teacher_note"])
    if result["systems"]["student"]["once"].get("macs_per_s") is None:
        lines.append("MACs: not counted (counting uses torch's FLOP counter: pip install torch)")
    have_teacher = "teacher" in result["systems"]
    measured = [t for t in result["thread_settings"] if any(t in sect for sect in result["systems"].values())]
    head = "| figure | threads | student | " + ("teacher | teacher/student | " if have_teacher else "") + "target |"
    lines += ["", head, "|---|---|---:|" + ("---:|---:|" if have_teacher else "") + "---|"]
    for key, label, fmt in ROWS:
        for threads in (measured if key in PER_THREAD else ["1"]):
            s = result["systems"]["student"].get(threads, {}).get(key) if key in PER_THREAD else result["systems"]["student"]["once"].get(key)
            shown = threads if key in PER_THREAD else ("-" if key in COUNTED else "1")
            row = f"| {label} | {shown} | {_fmt(s, fmt)} |"
            if have_teacher:
                sect = result["systems"]["teacher"]
                t = sect.get(threads, {}).get(key) if key in PER_THREAD else sect["once"].get(key)
                ratio = f"{t / s:.1f}x" if (s and t) else "-"
                row += f" {_fmt(t, fmt)} | {ratio} |"
            target = ""
            if key in TARGETS and threads == "1":
                op, limit = TARGETS[key]
                ok = s is not None and s <= limit
                target = f"{op} {limit:g} {'ok' if ok else 'MISSED'}"
            lines.append(row + f" {target} |")
    return "\n".join(lines)


def _torch_threads(n: int) -> None:
    """Thread count for the torch systems (teacher, torch variants); the numpy runtime has one."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def run_bench(args) -> dict:
    wave, audio_desc = bench_audio(args.seconds, args.audio)
    kinds = ["student"]
    teacher_note = None
    if args.no_teacher:
        teacher_note = "teacher: skipped (--no-teacher)"
    elif teacher_available():
        kinds.append("teacher")
        sys.path.insert(0, str(REPO_TOOLS))
    else:
        teacher_note = "teacher: not installed (bash tools/install-train-deps.sh), figures for the student only"
    all_threads = os.cpu_count() or 1
    settings = {"1": 1, "all": all_threads}
    result = {"audio": audio_desc, "clock": args.clock, "audio_s": len(wave) / SAMPLE_RATE, "threads_all": all_threads,
              "thread_settings": list(settings), "systems": {}, "teacher_note": teacher_note}
    with tempfile.TemporaryDirectory() as tmp:
        import soundfile as sf

        audio_path = str(Path(tmp) / "bench.wav")
        sf.write(audio_path, wave[: int(max(args.seconds, 5) * SAMPLE_RATE)], SAMPLE_RATE, subtype="FLOAT")
        for kind in kinds:
            system, desc = load_system(kind, args.model, args.variant if kind == "student" else "numpy")
            if kind == "student":
                result["student_desc"] = desc
            sect = {"once": counted(kind, system)}
            for name, n in settings.items():
                if kind == "student" and args.variant.startswith("numpy") and name != "1":
                    continue  # the runtime is single-threaded: OPENBLAS_NUM_THREADS=1 (streamsv/__init__.py)
                _torch_threads(n)
                sect[name] = measure(system, wave, args.realtime_s, CLOCKS[args.clock], args.warmup_s)
            _torch_threads(1)
            if not args.no_startup:
                sect["once"].update(startup(kind, args.model, audio_path, args.variant if kind == "student" else "numpy"))
            result["systems"][kind] = sect
    return result


def main(args: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamsv bench", description="Speed and memory of the listen pipeline, student vs teacher.")
    p.add_argument("--model", help="student weights (default: shipped weights; 'untrained' for a random model)")
    p.add_argument("--audio", help="audio file to stream (default: dev speech from the shared data, else synthetic)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of audio streamed as fast as possible")
    p.add_argument("--realtime-s", type=float, default=8.0, help="seconds streamed at real-time pace for latency (0: skip)")
    p.add_argument("--warmup-s", type=float, default=WARMUP_S, help="seconds streamed untimed before the timed pass")
    p.add_argument("--variant", default="numpy", choices=VARIANTS, help="how the student runs (default: the numpy runtime)")
    p.add_argument("--clock", default="wall", choices=list(CLOCKS),
                   help="time hops by wall clock, or by process CPU time (robust on a busy machine; "
                        "core-seconds when threads > 1); latency is always wall time")
    p.add_argument("--no-teacher", action="store_true", help="student only")
    p.add_argument("--no-startup", action="store_true", help="skip the start-up and memory subprocesses")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--child", choices=["student", "teacher"], help=argparse.SUPPRESS)
    a = p.parse_args(args)

    from .errors import StreamsvError

    if a.child:
        return child_main(a.child, a.model, a.audio, a.variant)
    if a.seconds < 2 or not (a.realtime_s == 0 or a.realtime_s >= 2):
        # Under 2 s the first decision (after 1 s of speech) may never come.
        raise StreamsvError("bench: --seconds must be at least 2, and --realtime-s 0 (skip) or at least 2")
    result = run_bench(a)
    print(json.dumps(result, indent=1) if a.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
