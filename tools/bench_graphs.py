"""Two exports of the student side by side in one bench run, and what the speaker-change test costs.

The shipped graphs (fp32, int8) beside another export of the same weights (--model BEFORE.onnx,
its .int8.onnx and .pool.onnx beside it: e.g. the graphs before an exporter change, taken from
git), streamed through the same listen pipeline by the same code as `streamsv bench`
(streamsv.bench: hop compute, RTF, where a hop goes, capture-to-decision, start-up, RSS), round
robin with --repeat. ``fp32-nochange`` is the shipped fp32 graph with the pipeline's in-segment
speaker-change test off (change.enabled: false), so the test's cost is the RTF between it and fp32.

    mkdir -p /tmp/before && for f in student.onnx student.int8.onnx student.pool.onnx; do
        git show REV:streamsv/weights/$f > /tmp/before/$f; done
    taskset -c 0 python -m tools.bench_graphs --model /tmp/before/student.onnx --repeat 3

Ratios are against the first system measured (before-fp32 by default). Audio as tools.bench: dev
speech (LibriSpeech test-other) from the shared data, --audio FILE, or --synthetic.
"""
from __future__ import annotations

import functools
import sys

from streamsv import bench
from tools.bench import dev_speech

NO_CHANGE = {"change.enabled": False}  # fp32-nochange: the pipeline without the speaker-change test


def needs_model(model: str | None) -> str | None:
    return None if model else "no --model (the graphs to compare with the shipped ones)"


def load_shipped(variant: str, model: str | None) -> tuple[object, str]:
    """The shipped graphs whatever --model says (--model names the other export)."""
    emb, desc = bench.load_student(variant, None)
    return emb, f"shipped {desc}"


def load_before(variant: str, model: str | None) -> tuple[object, str]:
    emb, desc = bench.load_student(variant, model)
    return emb, f"{model}: {desc}"


def load_shipped_without_change(model: str | None) -> tuple[object, str]:
    emb, desc = bench.load_student("fp32", None)
    return emb, f"shipped {desc}, speaker-change test off"


KIT = bench.Kit(
    systems={
        "before-fp32": bench.System(functools.partial(load_before, "fp32"), available=needs_model),
        "fp32": bench.System(functools.partial(load_shipped, "fp32")),
        "fp32-nochange": bench.System(load_shipped_without_change, overrides=NO_CHANGE),
        "before-int8": bench.System(functools.partial(load_before, "int8"), available=needs_model),
        "int8": bench.System(functools.partial(load_shipped, "int8")),
    },
    child_module="tools.bench_graphs",
    default_audio=dev_speech,
    prog="tools.bench_graphs",
    description="The shipped student graphs beside another export of them (--model), and fp32 without the change test.",
)


def main(argv: list[str] | None = None) -> int:
    return bench.main(argv, KIT, audio_help="audio file to stream (default: dev speech from the shared data, else an error)")


if __name__ == "__main__":
    sys.exit(main())
