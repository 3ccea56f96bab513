"""Before/after of the listen pipeline's cost: the daemon package of a git revision (the base)
against this checkout's, side by side in one run (issue 11: what a change to the code around the
network saved).

    taskset -c 0 python -m tools.bench_ab --base HEAD~1 --repeat 10    # dev speech, 30 s per pass
    python -m tools.bench_ab --base v0.3 --synthetic --seconds 20

The base revision's ``streamsv/`` is exported with ``git archive`` into a temporary folder (the
working tree is not touched) and imported beside the checkout's as another package name, so both
run in this one process on the same audio with the shipped model (each side its own copy: fp32,
one thread), by process CPU time. Passes alternate base, this, this, base, ... ``--repeat`` times
per side, so a machine that gets busier slows both alike; each figure is the median over the
passes with its min-max spread, and base/this (above 1: this checkout is cheaper): the ratio of
the medians, and the median [min-max] of the ratios of each repeat's two passes, which ran next
to each other (on a shared machine the steadier estimate).

Per pass and change-test setting (off, on): ``streamsv.bench.measure``'s RTF, hop compute p50/p95
and the median hop's split (VAD, log-mel, model step, pooling, the rest), and from a pass with the
stage clocks on, the whole stream's cost per second of audio: in the network (model step and
pooling, the change test's included) and outside it (everything else: the bench's array source,
VAD, log-mel, scoring, events, the loop, and the stage clocks' own reads), in ms per second of audio.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from streamsv.errors import StreamsvError
from streamsv.features import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "streamsv"
BASE_PACKAGE = "streamsv_base"  # the base revision's package, imported under this name
SIDES = ("base", "this")
CHANGE_TEST = {"change off": False, "change on": True}
NETWORK_STAGES = ("step", "pool")
FIGURES = [  # key, label, decimals
    ("rtf", "RTF", 5),
    ("hop_p50_ms", "hop compute p50 ms", 3),
    ("hop_p95_ms", "hop compute p95 ms", 3),
    ("stage_vad_ms", "  hop: VAD ms", 3),
    ("stage_log_mel_ms", "  hop: log-mel ms", 3),
    ("stage_step_ms", "  hop: model step ms", 3),
    ("stage_pool_ms", "  hop: pooling ms", 3),
    ("stage_rest_ms", "  hop: the rest ms", 3),
    ("network_ms_per_s", "whole stream: network ms per s (step + pooling)", 3),
    ("outside_ms_per_s", "whole stream: outside the network ms per s", 3),
    ("log_mel_ms_per_s", "  of which log-mel (the stream's) ms per s", 3),
    ("vad_ms_per_s", "  of which VAD ms per s", 3),
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
    return into / PACKAGE


def import_package(folder: Path, name: str) -> ModuleType:
    """The package in ``folder`` imported as ``name`` (its modules import each other relatively);
    a package imported under that name before (an earlier run in this process) is forgotten first."""
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[loaded]
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def this_package() -> ModuleType:
    import streamsv

    if not Path(streamsv.__file__).resolve().is_relative_to(REPO / PACKAGE):
        raise StreamsvError(f"bench_ab: imported {streamsv.__file__}, not this checkout's; run from the repository root")
    return streamsv


def whole_stream(bench: ModuleType, system, wave: np.ndarray, overrides: dict) -> dict:
    """Per second of audio over every block of a pass with the stage clocks on: the network's
    share (step and pooling), everything else, and the log-mel's and VAD's part of that."""
    clock = bench.StageClock(time.process_time)
    source = bench.TimedSource(wave, False, time.process_time, clock)
    pipe = bench.make_pipeline(system, wave, source, overrides)
    with bench.stage_timing(system, clock):
        for _ in pipe.run():
            pass
    audio_s, busy_s = source.stats.seconds, sum(source.block_seconds)
    total = {k: sum(b[k] for b in source.block_stages) for k in bench.STAGES}
    network = sum(total[k] for k in NETWORK_STAGES)
    return {"network_ms_per_s": 1000 * network / audio_s, "outside_ms_per_s": 1000 * (busy_s - network) / audio_s,
            "log_mel_ms_per_s": 1000 * total["log_mel"] / audio_s, "vad_ms_per_s": 1000 * total["vad"] / audio_s}


def one_pass(package: ModuleType, system, wave: np.ndarray, warmup_s: float) -> dict:
    bench = importlib.import_module(f"{package.__name__}.bench")
    out = {}
    for setting, on in CHANGE_TEST.items():
        overrides = {"change.enabled": on}
        figures = bench.measure(system, wave, 0.0, time.process_time, warmup_s, overrides)
        figures.update(whole_stream(bench, system, wave, overrides))
        out[setting] = figures
    return out


def order(repeat: int) -> list[str]:
    """base, this, this, base, base, this...: each side as often first as second over pairs of repeats."""
    return [side for r in range(repeat) for side in (SIDES if r % 2 == 0 else SIDES[::-1])]


def spread(values: list[float]) -> tuple[float, float, float]:
    return float(np.median(values)), min(values), max(values)


def summarise(passes: dict[str, list[dict]]) -> dict:
    """{side: {setting: {figure: (median, min, max)}}} over the passes, and under "paired" the
    same of base/this over the repeats (repeat i's base pass against its this pass)."""
    out: dict = {side: {setting: {} for setting in CHANGE_TEST} for side in (*SIDES, "paired")}
    for setting in CHANGE_TEST:
        for key, _, _ in FIGURES:
            for side in SIDES:
                values = [r[setting][key] for r in passes[side] if r[setting].get(key) is not None]
                if values:
                    out[side][setting][key] = spread(values)
            pairs = [(b[setting].get(key), t[setting].get(key)) for b, t in zip(*(passes[side] for side in SIDES))]
            ratios = [b / t for b, t in pairs if b is not None and t]
            if ratios:
                out["paired"][setting][key] = spread(ratios)
    return out


def report(summary: dict, header: str) -> str:
    lines = [header, "", "| figure | base | this | base/this | base/this paired |", "|---|---:|---:|---:|---:|"]
    for setting in CHANGE_TEST:
        lines.append(f"| **{setting}** | | | | |")
        for key, label, decimals in FIGURES:
            cells = []
            for side in SIDES:
                fig = summary[side][setting].get(key)
                cells.append("-" if fig is None else f"{fig[0]:.{decimals}f} [{fig[1]:.{decimals}f}-{fig[2]:.{decimals}f}]")
            base, this = (summary[s][setting].get(key) for s in SIDES)
            ratio = f"{base[0] / this[0]:.2f}x" if base and this and this[0] > 0 else "-"
            paired = summary.get("paired", {}).get(setting, {}).get(key)
            paired_cell = f"{paired[0]:.2f}x [{paired[1]:.2f}-{paired[2]:.2f}]" if paired else "-"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} | {paired_cell} |")
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
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of audio per timed pass")
    p.add_argument("--warmup-s", type=float, default=5.0, help="seconds streamed untimed before each pass")
    p.add_argument("--repeat", type=int, default=5, help="passes per side, alternating")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)
    try:
        if a.seconds < 2 or a.repeat < 1 or a.warmup_s < 0:
            raise StreamsvError("bench_ab: --seconds must be at least 2, --repeat at least 1, --warmup-s at least 0")
        wave, desc = audio_for(a)
        with tempfile.TemporaryDirectory() as tmp:
            packages = {"base": import_package(export_base(a.base, Path(tmp)), BASE_PACKAGE), "this": this_package()}
            systems = {side: package.load_embedder() for side, package in packages.items()}
            passes: dict[str, list[dict]] = {side: [] for side in SIDES}
            for side in order(a.repeat):
                passes[side].append(one_pass(packages[side], systems[side], wave, a.warmup_s))
    except StreamsvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(passes)
    if a.json:
        print(json.dumps(summary, indent=1))
        return 0
    header = (f"tools.bench_ab: base = {PACKAGE}/ at {a.base}, this = the checkout's, in one process; {desc}, "
              f"{len(wave) / SAMPLE_RATE:.0f} s per pass after {a.warmup_s:g} s warm-up; shipped model fp32, 1 thread, "
              f"process CPU time; {a.repeat} pass(es) per side alternating, median [min-max]")
    print(report(summary, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
