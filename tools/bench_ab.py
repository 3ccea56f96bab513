"""Before/after of the listen pipeline's cost: the daemon package of a git revision (the base)
against this checkout's, side by side in one run (issue 11: what a change to the code around the
network saved).

    taskset -c 0 python -m tools.bench_ab --base HEAD~1 --repeat 5     # dev speech, 60 s per pass
    python -m tools.bench_ab --base v0.3 --synthetic --seconds 20

The base revision's ``streamsv/`` is exported with ``git archive`` into a temporary folder (the
working tree is not touched). Each pass is a fresh child process that imports one of the two
packages and runs ``streamsv.bench.measure`` on the same audio with the shipped model (fp32, one
thread), the change test off and on, by process CPU time. Passes go round-robin (base, this, this,
base, ...) so a busy machine slows both alike; each figure is the median over ``--repeat`` passes
with its min-max spread, and the ratio base/this (above 1: this checkout is cheaper).
Figures: RTF (whole pipeline), hop compute p50/p95, and the median hop's split (VAD, log-mel,
model step, pooling, the rest) from streamsv.bench's stage clocks.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from streamsv.errors import StreamsvError
from streamsv.features import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "streamsv"
SIDES = ("base", "this")
CHANGE_TEST = {"change off": False, "change on": True}
FIGURES = [  # key in streamsv.bench.measure's figures, label, decimals
    ("rtf", "RTF", 5),
    ("hop_p50_ms", "hop compute p50 ms", 3),
    ("hop_p95_ms", "hop compute p95 ms", 3),
    ("stage_vad_ms", "  hop: VAD ms", 3),
    ("stage_log_mel_ms", "  hop: log-mel ms", 3),
    ("stage_step_ms", "  hop: model step ms", 3),
    ("stage_pool_ms", "  hop: pooling ms", 3),
    ("stage_rest_ms", "  hop: the rest ms", 3),
]


def export_base(rev: str, into: Path) -> Path:
    """``rev``'s daemon package under ``into`` (``into/streamsv``); a one-line error for a bad revision."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, PACKAGE],
                                 capture_output=True, check=False)
    except FileNotFoundError:
        raise StreamsvError("bench_ab: git is not installed") from None
    if archive.returncode != 0:
        reason = archive.stderr.decode(errors="replace").strip().splitlines()
        raise StreamsvError(f"bench_ab: cannot export {PACKAGE}/ at {rev!r}: {reason[-1] if reason else 'git archive failed'}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


# A pass, run as ``python -c CHILD ROOT AUDIO WARMUP_S`` from ROOT, so that ``import streamsv`` is
# ROOT's package (the checkout's or the exported base's) and nothing else of this process is in it.
CHILD = """
import json, sys
from pathlib import Path
import numpy as np
import streamsv
from streamsv import bench
from streamsv.embedder import load_embedder
root, audio, warmup_s = Path(sys.argv[1]).resolve(), sys.argv[2], float(sys.argv[3])
if not Path(streamsv.__file__).resolve().is_relative_to(root):
    sys.exit(f"imported {streamsv.__file__}, not the package under {root}")
wave, system = np.load(audio), load_embedder()
print(json.dumps({name: bench.measure(system, wave, 0.0, bench.CLOCKS["cpu"], warmup_s, {"change.enabled": on})
                  for name, on in json.loads(sys.argv[4]).items()}))
"""


def run_pass(root: Path, audio: Path, warmup_s: float) -> dict:
    """One pass in a fresh process on the package under ``root``: both change-test settings."""
    cmd = [sys.executable, "-c", CHILD, str(root), str(audio), str(warmup_s), json.dumps(CHANGE_TEST)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise StreamsvError(f"bench_ab: the pass on {root} failed: {lines[-1] if lines else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def order(repeat: int) -> list[str]:
    """base, this, this, base, base, this...: each side as often first as second over pairs of repeats."""
    return [side for r in range(repeat) for side in (SIDES if r % 2 == 0 else SIDES[::-1])]


def summarise(passes: dict[str, list[dict]]) -> dict:
    """{side: {setting: {figure: (median, min, max)}}} over the passes."""
    out: dict = {}
    for side, runs in passes.items():
        out[side] = {}
        for setting in CHANGE_TEST:
            out[side][setting] = {}
            for key, _, _ in FIGURES:
                values = [r[setting][key] for r in runs if r[setting].get(key) is not None]
                if values:
                    out[side][setting][key] = (float(np.median(values)), min(values), max(values))
    return out


def report(summary: dict, header: str) -> str:
    lines = [header, "", "| figure | base | this | base/this |", "|---|---:|---:|---:|"]
    for setting in CHANGE_TEST:
        lines.append(f"| **{setting}** | | | |")
        for key, label, decimals in FIGURES:
            cells = []
            for side in SIDES:
                fig = summary[side][setting].get(key)
                cells.append("-" if fig is None else f"{fig[0]:.{decimals}f} [{fig[1]:.{decimals}f}-{fig[2]:.{decimals}f}]")
            base, this = (summary[s][setting].get(key) for s in SIDES)
            ratio = f"{base[0] / this[0]:.2f}x" if base and this and this[0] > 0 else "-"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def audio_for(args) -> tuple[np.ndarray, str]:
    from streamsv import bench

    if args.audio:
        return bench.recording(args.seconds, args.audio)
    if args.synthetic:
        return bench.synthetic_audio(args.seconds)
    from tools.bench import dev_speech

    return dev_speech(args.seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD", help="git revision whose streamsv/ is the base (default: HEAD)")
    p.add_argument("--audio", help="audio file to stream (default: dev speech from the shared data)")
    p.add_argument("--synthetic", action="store_true", help="without --audio: synthetic voiced audio")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of audio per timed pass")
    p.add_argument("--warmup-s", type=float, default=10.0, help="seconds streamed untimed first in each pass")
    p.add_argument("--repeat", type=int, default=3, help="passes per side, round-robin")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)
    try:
        if a.seconds < 2 or a.repeat < 1 or a.warmup_s < 0:
            raise StreamsvError("bench_ab: --seconds must be at least 2, --repeat at least 1, --warmup-s at least 0")
        with tempfile.TemporaryDirectory() as tmp:
            base = export_base(a.base, Path(tmp))
            wave, desc = audio_for(a)
            audio = Path(tmp) / "audio.npy"
            np.save(audio, wave)
            passes: dict[str, list[dict]] = {side: [] for side in SIDES}
            for side in order(a.repeat):
                passes[side].append(run_pass(base if side == "base" else REPO, audio, a.warmup_s))
    except StreamsvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(passes)
    if a.json:
        print(json.dumps(summary, indent=1))
        return 0
    header = (f"tools.bench_ab: base = {PACKAGE}/ at {a.base}, this = the checkout's; {desc}, "
              f"{len(wave) / SAMPLE_RATE:.0f} s per pass after {a.warmup_s:g} s warm-up; shipped model fp32, 1 thread, "
              f"process CPU time; {a.repeat} pass(es) per side round-robin, median [min-max]")
    print(report(summary, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
