"""The student's step graph alone: ONNX Runtime step graphs timed side by side on pushes of a
fixed size, interleaved round-robin so a busy machine slows them alike. Pooling graphs
(``.pool.onnx``) are timed the same way, on a window of ``--frames`` frames.

    taskset -c 0 python -m tools.bench_step /tmp/before/student.onnx streamsv/weights/student.onnx --frames 25
    taskset -c 0 python -m tools.bench_step /tmp/before/student.pool.onnx streamsv/weights/student.pool.onnx --frames 150

Each graph runs in its own session with the daemon's settings (streamsv.embedder.session_options,
MODEL_GRAPH_OPTIMIZATION, 1 thread) on its own stream of random log-mels, advancing its position
and state as the daemon does; each round runs every graph ROUND_PUSHES times. Times are the calling
thread's CPU time (ONNX Runtime runs a 1-thread session in the caller), which other jobs on the
core disturb far less than wall time; the first WARMUP_ROUNDS rounds are not counted. Prints p50,
p10 and p90 per push and the ratio of each p50 to the first graph's.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from streamsv.embedder import MEL_FRAMES_PER_FRAME, MODEL_GRAPH_OPTIMIZATION, session_options
from streamsv.errors import StreamsvError

ROUND_PUSHES = 20
WARMUP_ROUNDS = 5


def step_session(path: str):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(path, session_options(1, MODEL_GRAPH_OPTIMIZATION), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any unreadable graph is the user's file
        raise StreamsvError(f"{path}: cannot load: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None


def time_steps(paths: list[str], frames: int, rounds: int, seed: int = 0) -> list[np.ndarray]:
    """Per graph, the thread CPU seconds of each counted push of ``frames`` encoder frames (a step
    graph), or of each pooling of a window of ``frames`` frames (a pooling graph)."""
    sessions = [step_session(p) for p in paths]
    rng = np.random.default_rng(seed)
    streams = []
    for s in sessions:
        inputs = {i.name: i for i in s.get_inputs()}
        if "state" in inputs:
            mel = rng.standard_normal((MEL_FRAMES_PER_FRAME * frames, inputs["mel"].shape[1])).astype(np.float32)
            streams.append([mel, 0, np.zeros(inputs["state"].shape, np.float32)])
        else:
            window = {name: rng.standard_normal((frames, inputs[name].shape[1])).astype(np.float32)
                      for name in ("features", "logits")}
            streams.append([window, None, None])
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(WARMUP_ROUNDS + rounds):
        for k, s in enumerate(sessions):
            fixed, position, state = streams[k]   # a step's mel (and its stream), or a pooling's window
            for _ in range(ROUND_PUSHES):
                started = time.thread_time()
                if state is None:
                    s.run(None, fixed)
                else:
                    _, _, state = s.run(None, {"mel": fixed, "position": np.array(position, np.int64), "state": state})
                    position += frames
                if r >= WARMUP_ROUNDS:
                    times[k].append(time.thread_time() - started)
            streams[k][1:] = [position, state]
    return [np.asarray(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools.bench_step", description=__doc__.split("\n")[0])
    p.add_argument("graphs", nargs="+", help="step graphs (.onnx) or pooling graphs (.pool.onnx), timed side by side")
    p.add_argument("--frames", type=int, default=25,
                   help="encoder frames (20 ms) per push, or per pooled window (default 25: a 0.5 s hop)")
    p.add_argument("--rounds", type=int, default=60, help=f"counted rounds of {ROUND_PUSHES} pushes per graph")
    a = p.parse_args(argv)
    try:
        if a.frames < 1 or a.rounds < 1:
            raise StreamsvError("--frames and --rounds must be at least 1")
        times = time_steps(a.graphs, a.frames, a.rounds)
    except StreamsvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = float(np.median(times[0]))
    print(f"{a.frames} frames a call, thread CPU ms per call, {a.rounds} rounds x {ROUND_PUSHES} pushes interleaved")
    for path, t in zip(a.graphs, times):
        p50 = float(np.median(t))
        print(f"  {path}: p50 {1e3 * p50:.3f}  p10 {1e3 * np.percentile(t, 10):.3f}  p90 {1e3 * np.percentile(t, 90):.3f}"
              f"  ({base / p50:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
