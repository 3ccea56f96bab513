"""Which network meets issue 11's speed bar? Candidate architectures, untrained, exported the way
the shipped model is and timed side by side in one run.

    taskset -c 0 python -m tools.bench_arch --repeat 3
    taskset -c 0 python -m tools.bench_arch --candidates w128-b4 --arch mine:width=160,n_blocks=3,groups=8

Timing does not depend on trained weights, so an untrained graph of an architecture costs what the
trained one will. Each candidate is a ModelDimensions (training/model.py): the shipped model's
dimensions (read from streamsv/weights/student.onnx) with some overridden. Each is built untrained
(seeded), exported by training/export_weights.py's own export (fp32 and int8 step graphs, the
pooling graph, the same parity checks) into a folder, and then measured:

  counted   parameters; MMAC per second of audio offline (the ratio to the Resemblyzer teacher's
            offline figure: issue 11 allows at most half of it) and as the step streams it; MACs of
            one 25-frame push of the step graph alone; nodes of the stored step graph
  step      tools.bench_step's measurement: pushes of 1 and of 25 frames (a 0.5 s hop), all graphs
            interleaved round-robin, thread CPU time, the daemon's 1-thread session: p50 / p90
  pipeline  streamsv.bench's measurement of the whole listen pipeline (VAD, log-mel, step, pooling,
            scoring; continuous speech, 0.5 s hop, 3 s window, a fresh embedding every hop), by
            process CPU time, with the speaker-change test on (the default) and off
            (tools.bench_graphs.NO_CHANGE), round-robin over every system --repeat times (medians)
  start-up  with --startup: READY and steady RSS in fresh processes (change test on only)

The shipped architecture (untrained) is the baseline row; ratios are baseline / candidate (how many
times less time). ``shipped-trained`` is the shipped graph itself: it should time like the baseline
row, which checks the premise above. Hop compute is the 30 ms block that completes a hop; the
change test runs half-way between hops, so it shows in the RTF and not in the hop figures.
The 1-frame push is the step's fixed cost per call (the graph's node overhead); the 25-frame push
minus it is what the arithmetic of 24 more frames costs. The step alone runs in a hot loop; inside
the pipeline (other work between pushes) the same step measures higher, so compare within a table.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from streamsv import bench
from streamsv.embedder import DEFAULT_WEIGHTS, VARIANT_SUFFIXES, load_embedder
from streamsv.errors import StreamsvError
from streamsv.features import SAMPLE_RATE
from tools import bench_graphs, bench_step

BASELINE = "shipped"
TRAINED = "shipped-trained"
CANDIDATES = {  # name -> overrides of the shipped dimensions
    BASELINE: {},
    "w192-b3": {"n_blocks": 3},
    "w192-b2": {"n_blocks": 2},
    "w256-b2": {"width": 256, "n_blocks": 2},
    "w128-b4": {"width": 128, "n_blocks": 4},
    "w128-b4-lean": {"width": 128, "n_blocks": 4, "channel_expansion": 1, "chunk_frames": 16, "attention_hidden": 64},
    "w128-b3": {"width": 128, "n_blocks": 3},
    "w128-b2": {"width": 128, "n_blocks": 2},
    "w96-b3": {"width": 96, "n_blocks": 3},
    "w64-b2": {"width": 64, "n_blocks": 2, "attention_hidden": 64},
    "floor-w32-b1": {"width": 32, "n_blocks": 1, "chunk_frames": 8, "conv_kernel": 3, "groups": 2, "attention_hidden": 16},
}
TUNABLE = ("width", "n_blocks", "chunk_frames", "conv_kernel", "groups", "channel_expansion", "attention_hidden",
           "embedding_dim")
VARIANTS = tuple(VARIANT_SUFFIXES)  # fp32, int8
HOP_FRAMES = 25  # a 0.5 s hop of 20 ms encoder frames
PUSH_FRAMES = (1, HOP_FRAMES)
SPEED_BAR = {"rtf": 0.0025, "hop_p95_ms": 2.0}  # issue 11, whole pipeline, 1 thread
TEACHER_SHARE = 0.5  # the issue allows at most this share of the teacher's MACs
SEED = 0
DEFAULT_ROUNDS = 30


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    dims: dict  # every ModelDimensions field


def shipped_dimensions() -> dict:
    """The shipped model's ModelDimensions, from its graph's metadata (no torch needed)."""
    return dict(load_embedder().config)


def parse_arch(spec: str, base: dict) -> Candidate:
    """``NAME:key=value,...`` (integer fields of ModelDimensions) -> a candidate on ``base``."""
    name, sep, body = spec.partition(":")
    if not name or not sep or not body or "/" in name:
        raise StreamsvError(f"--arch {spec!r}: expected NAME:key=value[,key=value...], e.g. small:width=128,n_blocks=4")
    overrides = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        if key not in TUNABLE or not eq:
            raise StreamsvError(f"--arch {spec!r}: {item!r} is not key=value with a key among {', '.join(TUNABLE)}")
        try:
            overrides[key] = int(value)
        except ValueError:
            raise StreamsvError(f"--arch {spec!r}: {key} must be a whole number, not {value!r}") from None
        if overrides[key] < 1:
            raise StreamsvError(f"--arch {spec!r}: {key} must be at least 1")
    return candidate(name, overrides, base)


def candidate(name: str, overrides: dict, base: dict) -> Candidate:
    dims = {**base, **overrides}
    if dims["width"] % dims["groups"]:
        raise StreamsvError(f"{name}: width {dims['width']} is not a multiple of groups {dims['groups']}")
    if dims["chunk_frames"] < dims["conv_kernel"]:
        raise StreamsvError(f"{name}: chunk_frames {dims['chunk_frames']} must be at least conv_kernel {dims['conv_kernel']} "
                            "(the export reads the wide convolution's history from the token-mixing history)")
    return Candidate(name, dims)


def describe(dims: dict, base: dict) -> str:
    changed = [f"{k}={dims[k]}" for k in TUNABLE if dims[k] != base[k]]
    return ", ".join(changed) or "as shipped"


@contextlib.contextmanager
def errors_only(logger: str | None):
    """While inside: the logger (None: the root) passes errors only."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


# ---------------------------------------------------------------- export and counting (torch)


def step_macs(model, frames: int) -> int:
    """Multiply-accumulates of one push of ``frames`` encoder frames through the exported step
    (torch's FLOP counter on ExportStep, 2 FLOPs = 1 MAC; the position's history is full)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from training.model import ExportStep, state_rows

    step = ExportStep(model).eval()
    cfg = model.cfg
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        step(torch.zeros(2 * frames, cfg.n_mels), torch.tensor(10 * cfg.chunk_frames), torch.zeros(state_rows(cfg), cfg.width))
    return counter.get_total_flops() // 2


def export_candidate(cand: Candidate, folder: Path, force: bool) -> dict:
    """Build ``cand`` untrained, export it into ``folder``/NAME; -> counted figures."""
    import onnx
    import torch

    from training.export_weights import export_to_folder
    from training.model import ModelDimensions, SpeakerEncoder

    torch.manual_seed(SEED)
    model = SpeakerEncoder(ModelDimensions(**cand.dims)).eval()
    # onnxruntime.quantization's advice goes to the root logger; the exporter's check line to stdout (the report's)
    with errors_only(None), contextlib.redirect_stdout(sys.stderr):
        paths = export_to_folder(model, f"untrained-{cand.name}", folder / cand.name, meta={"bench_arch": cand.name},
                                 force=force)
    return {"step_macs_per_push": step_macs(model, HOP_FRAMES), "step_macs_per_frame_push": step_macs(model, 1),
            "nodes": len(onnx.load(str(paths[VARIANT_SUFFIXES["fp32"]])).graph.node)}


def teacher_macs() -> dict:
    """The teacher's MMAC per second of audio (offline, and re-embedding its window every hop),
    or {} without resemblyzer."""
    try:
        from training import teacher
        if not teacher.available():
            return {}
        encoder = teacher.Teacher().encoder
    except ImportError:
        return {}
    return {"macs_per_s": teacher.teacher_macs_per_second(encoder),
            "stream_macs_per_s": teacher.teacher_stream_macs_per_second(bench.WINDOW_S, bench.HOP_S, encoder)}


# ---------------------------------------------------------------- systems (no torch: start-up children load these)


def graph_path(folder: Path, name: str, variant: str) -> Path:
    """The step graph of candidate ``name`` in ``variant`` (the shipped files for TRAINED)."""
    stem = DEFAULT_WEIGHTS.with_suffix("") if name == TRAINED else folder / name / DEFAULT_WEIGHTS.stem
    return stem.with_name(stem.name + VARIANT_SUFFIXES[variant])


def system_name(name: str, variant: str) -> str:
    return f"{name}/{variant}"


def load_system(name: str, variant: str, folder: str | None) -> tuple[object, str]:
    emb = load_embedder(graph_path(Path(folder or "."), name, variant))
    return emb, f"{name} ONNX Runtime {emb.variant}"


def kit_for(names: list[str], folder: Path) -> bench.Kit:
    """A bench Kit whose systems are NAME/VARIANT of the exported candidates (start-up children)."""
    systems = {system_name(n, v): bench.System(functools.partial(load_system, n, v)) for n in names for v in VARIANTS}
    return bench.Kit(systems=systems, child_module="tools.bench_arch", default_audio=bench.synthetic_audio,
                     prog="tools.bench_arch")


# ---------------------------------------------------------------- measurement


def time_steps(paths: list[Path], rounds: int) -> dict[int, list[dict]]:
    """{push frames: per graph {p50_ms, p90_ms}}, every graph interleaved (tools.bench_step)."""
    out = {}
    for frames in PUSH_FRAMES:
        times = bench_step.time_steps([str(p) for p in paths], frames, rounds)
        out[frames] = [{"p50_ms": 1e3 * float(np.median(t)), "p90_ms": 1e3 * float(np.percentile(t, 90))} for t in times]
    return out


def measure_pipelines(systems: list[tuple[str, str]], folder: Path, wave: np.ndarray, args) -> tuple[dict, list[str]]:
    """({(name, variant, change on): summarised figures}, notes): streamsv.bench.measure of every
    system, change test on and off, round-robin over all of them --repeat times. A start-up child
    that fails costs its READY and RSS figures and leaves a note, not the run."""
    notes: list[str] = []
    loaded = {(name, variant): load_system(name, variant, str(folder))[0] for name, variant in systems}
    runs: dict = {(name, variant, change): [] for name, variant in systems for change in (True, False)}
    # Untrained graphs have no confidence calibration; the pipeline's warning about it says nothing here.
    with tempfile.TemporaryDirectory() as tmp, errors_only("streamsv.confidence"):
        audio_path = str(Path(tmp) / "bench.wav")
        if args.startup:
            import soundfile as sf

            sf.write(audio_path, wave[: int(max(args.seconds, 5) * SAMPLE_RATE)], SAMPLE_RATE, subtype="FLOAT")
        for _ in range(args.repeat):
            for key in runs:
                name, variant, change = key
                figures = bench.measure(loaded[(name, variant)], wave, 0.0, bench.CLOCKS["cpu"], args.warmup_s,
                                        None if change else bench_graphs.NO_CHANGE)
                if args.startup and change:
                    try:
                        figures.update(bench.startup(system_name(name, variant), str(folder), audio_path, "tools.bench_arch"))
                    except RuntimeError as exc:  # the child's last error line
                        notes.append(f"{system_name(name, variant)}: start-up not measured: {exc}")
                runs[key].append(figures)
    return {key: bench.summarise(r) for key, r in runs.items()}, notes


# ---------------------------------------------------------------- report


def meets(figures: dict) -> bool:
    return all(figures.get(k) is not None and figures[k] <= limit for k, limit in SPEED_BAR.items())


def _ratio(base, value) -> str:
    return f" ({base / value:.1f}x)" if base and value else ""


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def report(result: dict) -> str:
    rows, base = result["rows"], result["rows"][0]
    teacher = result["teacher"]
    lines = [f"tools.bench_arch: {result['audio']}, {result['audio_s']:.0f} s streamed per pass, hop {bench.HOP_S} s, "
             f"window {bench.WINDOW_S} s, 1 thread, {result['repeat']} repeat(s) round-robin (median); pipeline by "
             f"process CPU time, step by thread CPU time ({result['rounds']} rounds x {bench_step.ROUND_PUSHES} pushes "
             "interleaved); untrained graphs except shipped-trained; (Nx) = baseline / row"]
    lines += [f"  {r['name']}/{r['variant']}: {r['desc']}" for r in rows if r["variant"] == VARIANTS[0]]
    t_off = teacher.get("macs_per_s")
    lines += ["", "The network (counted; step alone):", "",
              "| system | params | nodes | MMAC/s offline (x teacher) | MMAC/s streaming | MMAC per 25-frame push "
              "| 1-frame push p50 ms | 25-frame push p50 ms | p90 ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        offline = r["macs_per_s"]
        share = f" ({offline / t_off:.2f})" if offline and t_off else ""
        lines.append(
            f"| {r['name']}/{r['variant']} | {r['params']:,} | {r['nodes']} | {offline / 1e6:.1f}{share} "
            f"| {r['stream_macs_per_s'] / 1e6:.1f} | {r['step_macs_per_push'] / 1e6:.2f} "
            f"| {r['step1_p50_ms']:.3f}{_ratio(base['step1_p50_ms'], r['step1_p50_ms'])} "
            f"| {r['step25_p50_ms']:.3f}{_ratio(base['step25_p50_ms'], r['step25_p50_ms'])} | {r['step25_p90_ms']:.3f} |")
    if t_off:
        lines.append(f"teacher: {t_off / 1e6:.1f} MMAC/s offline (a candidate may use at most {TEACHER_SHARE:g} of it: "
                     f"{TEACHER_SHARE * t_off / 1e6:.1f}), {teacher['stream_macs_per_s'] / 1e6:.1f} re-embedding its "
                     f"{bench.WINDOW_S:g} s window every hop")
    else:
        lines.append("teacher: not installed (bash tools/install-train-deps.sh): no teacher ratio")
    lines += ["", "Fixed cost per push vs arithmetic: the 1-frame push is the per-call cost; 25 frames minus 1 frame "
              "is 24 frames' arithmetic:", "",
              "| system | 1-frame ms | +24 frames ms | MMAC in +24 frames | effective GMAC/s | fixed share of a 25-frame push |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra_ms = r["step25_p50_ms"] - r["step1_p50_ms"]
        extra_macs = r["step_macs_per_push"] - r["step_macs_per_frame_push"]
        rate = f"{extra_macs / extra_ms / 1e6:.1f}" if extra_ms > 0 else "-"
        lines.append(f"| {r['name']}/{r['variant']} | {r['step1_p50_ms']:.3f} | {extra_ms:.3f} | {extra_macs / 1e6:.2f} "
                     f"| {rate} | {r['step1_p50_ms'] / r['step25_p50_ms']:.0%} |")
    lines += ["", "The whole listen pipeline (process CPU time; change test on | off):", "",
              "| system | RTF on | RTF off | hop p95 ms on | hop p95 ms off | hop p50 ms on "
              "| hop: step / log-mel / pooling / rest ms (p50) | RTF off outside the step (derived) | READY s | RSS MB "
              "| meets RTF <= 0.0025 and p95 <= 2 ms: on / off |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        on, off, b_on, b_off = r["pipeline_on"], r["pipeline_off"], base["pipeline_on"], base["pipeline_off"]
        stages = " / ".join(_num(on.get(f"stage_{k}_ms"), "{:.2f}") for k in ("step", "log_mel", "pool", "rest"))
        step_off = off.get("stage_step_ms")
        outside = off["rtf"] - step_off / 1e3 / bench.HOP_S if step_off is not None else None
        lines.append(
            f"| {r['name']}/{r['variant']} | {on['rtf']:.4f}{_ratio(b_on['rtf'], on['rtf'])} "
            f"| {off['rtf']:.4f}{_ratio(b_off['rtf'], off['rtf'])} "
            f"| {on['hop_p95_ms']:.2f}{_ratio(b_on['hop_p95_ms'], on['hop_p95_ms'])} "
            f"| {off['hop_p95_ms']:.2f}{_ratio(b_off['hop_p95_ms'], off['hop_p95_ms'])} | {on['hop_p50_ms']:.2f} "
            f"| {stages} | {_num(outside, '{:.4f}')} | {_num(on.get('ready_s'), '{:.2f}')} "
            f"| {_num(on.get('rss_steady_mb'), '{:.0f}')} | {'yes' if meets(on) else 'no'} / {'yes' if meets(off) else 'no'} |")
    lines.append("RTF off outside the step = RTF with the change test off minus its hop's step p50 per hop second: "
                 "what the rest of the pipeline (VAD, log-mel, pooling, scoring, Python) takes from the budget")
    lines += result.get("notes", [])
    for change in ("on", "off"):
        passing = [f"{r['name']}/{r['variant']}" for r in rows if meets(r[f"pipeline_{change}"])]
        lines.append(f"meet the speed bar with the change test {change}: {', '.join(passing) if passing else 'none'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- command


def choose(args, base: dict) -> list[Candidate]:
    names = [n.strip() for n in args.candidates.split(",") if n.strip()] if args.candidates else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise StreamsvError(f"unknown candidate {unknown[0]!r}; expected some of {', '.join(CANDIDATES)} (or --arch NAME:key=value,...)")
    chosen = [candidate(n, CANDIDATES[n], base) for n in [BASELINE] + [n for n in names if n != BASELINE]]
    for spec in args.arch:
        cand = parse_arch(spec, base)
        if cand.name in {c.name for c in chosen} | {TRAINED}:
            raise StreamsvError(f"--arch {spec!r}: the name {cand.name!r} is taken")
        chosen.append(cand)
    return chosen


def run(args) -> dict:
    base = shipped_dimensions()
    chosen = choose(args, base)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        raise StreamsvError(f"--variants: expected some of {', '.join(VARIANTS)}, not {args.variants!r}")
    if args.audio:
        wave, audio_desc = bench.recording(args.seconds, args.audio)
    elif args.synthetic:
        wave, audio_desc = bench.synthetic_audio(args.seconds)
    else:
        from tools.bench import dev_speech

        wave, audio_desc = dev_speech(args.seconds)
    with contextlib.ExitStack() as stack:
        folder = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        import torch

        torch.set_num_threads(1)
        counted = {c.name: export_candidate(c, folder, args.force) for c in chosen}
        names = [c.name for c in chosen]
        if args.trained:
            counted[TRAINED] = {k: counted[BASELINE][k] for k in ("step_macs_per_push", "step_macs_per_frame_push")}
            import onnx

            counted[TRAINED]["nodes"] = len(onnx.load(str(graph_path(folder, TRAINED, "fp32"))).graph.node)
            names.append(TRAINED)
        for n in names:  # parameters and MACs per second, counted at export, from the graph's metadata
            counted[n].update(bench.counted(load_embedder(graph_path(folder, n, "fp32"))))
        systems = [(n, v) for n in names for v in variants]
        steps = time_steps([graph_path(folder, n, v) for n, v in systems], args.rounds)
        pipelines, notes = measure_pipelines(systems, folder, wave, args)
    descs = {c.name: describe(c.dims, base) for c in chosen}
    descs[TRAINED] = "the shipped graph itself (trained weights, scoring backend)"
    rows = []
    for k, (name, variant) in enumerate(systems):
        rows.append({"name": name, "variant": variant, "desc": descs[name], **counted[name],
                     **{f"step{f}_{q}_ms": steps[f][k][f"{q}_ms"] for f in PUSH_FRAMES for q in ("p50", "p90")},
                     "pipeline_on": pipelines[(name, variant, True)], "pipeline_off": pipelines[(name, variant, False)]})
    return {"audio": audio_desc, "audio_s": len(wave) / SAMPLE_RATE, "repeat": args.repeat, "rounds": args.rounds,
            "teacher": teacher_macs(), "rows": rows, "notes": notes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools.bench_arch", description=__doc__.split("\n")[0])
    p.add_argument("--candidates", help=f"comma-separated, from {', '.join(CANDIDATES)} (default: all; {BASELINE} is always measured)")
    p.add_argument("--arch", action="append", default=[], metavar="NAME:key=value,...",
                   help=f"another candidate: the shipped dimensions with these overridden ({', '.join(TUNABLE)}); repeatable")
    p.add_argument("--variants", default=",".join(VARIANTS), help="fp32, int8 or both (default both)")
    p.add_argument("--no-trained", dest="trained", action="store_false", help=f"leave out {TRAINED} (the shipped graph itself)")
    p.add_argument("--audio", help="audio file to stream (default: dev speech from the shared data, else an error)")
    p.add_argument("--synthetic", action="store_true", help="without --audio: synthetic voiced audio (speed figures only)")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of audio per pipeline pass")
    p.add_argument("--warmup-s", type=float, default=bench.WARMUP_S, help="seconds streamed untimed before each timed pass")
    p.add_argument("--repeat", type=int, default=1, help="pipeline passes per system, round-robin; figures are medians")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"step timing: counted rounds of {bench_step.ROUND_PUSHES} pushes")
    p.add_argument("--startup", action="store_true", help="also READY and steady RSS in fresh processes (change test on)")
    p.add_argument("--keep", metavar="DIR", help="export the candidates into DIR/NAME and keep them (default: a temporary folder)")
    p.add_argument("--force", action="store_true", help="with --keep: overwrite graphs already there")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)  # a start-up child's candidate folder
    a = p.parse_args(argv)
    try:
        if a.child:  # a start-up child (streamsv.bench.startup): load NAME/VARIANT from --model, no torch
            name, variant = a.child.split("/")
            return bench.child_main(kit_for([name], Path(a.model)), a.child, a.model, a.audio)
        if a.seconds < 2 or a.repeat < 1 or a.rounds < 1 or a.warmup_s < 0:
            raise StreamsvError("--seconds must be at least 2, --repeat and --rounds at least 1, --warmup-s not negative")
        result = run(a)
    except StreamsvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --keep names something that cannot hold the graphs
        print(f"error: {exc.filename or a.keep}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if a.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
