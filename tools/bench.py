"""The bench of issue 11, all four side by side in one run: the numpy runtime the ONNX graphs
replaced (numpy-baseline), the student's fp32 and int8 graphs on ONNX Runtime, and the Resemblyzer
teacher, streamed through the same listen pipeline by the same code as `streamsv bench`
(streamsv.bench: hop compute, RTF, where a hop goes, capture-to-decision, start-up, RSS).

    taskset -c 0 python -m tools.bench --repeat 3                 # the README's figures
    python -m tools.bench --systems numpy-baseline,fp32 --seconds 10 --no-startup
    python -m tools.bench --audio talk.wav                      # any recording instead of dev speech

Audio: --audio FILE, else continuous dev-set speech (LibriSpeech test-other, dev speakers only,
never trained on) from ../shared/data or $STREAMSV_DATA; without that data it stops with an error
(--synthetic streams the daemon's synthetic voiced audio instead, and says so). The teacher needs
the training extra (bash tools/install-train-deps.sh); without it, it is skipped with a note.
Run from the repository root (tools/ and training/ are packages of the checkout).
"""
from __future__ import annotations

import numpy as np

from streamsv import bench
from streamsv.errors import StreamsvError
from streamsv.features import SAMPLE_RATE

DEV_SPEECH_SET = "librispeech-test-other"  # continuous read speech, dev speakers only
DEV_SPEECH = "LibriSpeech test-other (dev speakers)"


def dev_speech(seconds: float) -> tuple[np.ndarray, str]:
    """``seconds`` of continuous dev-set speech, clips joined in listing order; a clear error
    when the shared data is not there."""
    from training import datasets

    advice = "pass --audio FILE, or --synthetic for synthetic voiced audio"
    if datasets.data_root(required=False) is None:
        raise StreamsvError(f"bench: no dev speech (../shared/data or $STREAMSV_DATA not found); {advice}")
    try:
        utterances = datasets.dev_set(DEV_SPEECH_SET)
    except OSError as exc:  # the folder is there but not this set
        raise StreamsvError(f"bench: no dev speech ({DEV_SPEECH}: {exc.strerror}: {exc.filename}); {advice}") from None
    if not utterances:
        raise StreamsvError(f"bench: no dev speech ({DEV_SPEECH} is empty); {advice}")
    clips, total = [], 0
    for utt in utterances:
        clips.append(datasets.read_audio(utt.path))
        total += len(clips[-1])
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(clips)[: int(seconds * SAMPLE_RATE)], DEV_SPEECH


def load_baseline(model: str | None) -> tuple[object, str]:
    from tools.baseline import numpy_runtime

    emb = numpy_runtime.load_baseline()
    return emb, f"numpy runtime before ONNX (tools/baseline, {emb.fingerprint})"


def baseline_unavailable(model: str | None) -> str | None:
    # The frozen runtime runs only its own weights: beside another model it would compare two models.
    return "--model given: the baseline runs only its own weights" if model else None


def load_teacher(model: str | None) -> tuple[object, str]:
    from training import teacher

    return teacher.Teacher(), "Resemblyzer VoiceEncoder (teacher)"


def teacher_unavailable(model: str | None) -> str | None:
    try:
        from training import teacher
    except ImportError as exc:  # torch itself is missing
        return f"not installed ({exc.name}; bash tools/install-train-deps.sh)"
    return None if teacher.available() else "not installed (bash tools/install-train-deps.sh)"


def teacher_counts(system) -> dict:
    from training import teacher

    return {"params": system.num_parameters, "macs_per_s": teacher.teacher_macs_per_second(system.encoder),
            "stream_macs_per_s": teacher.teacher_stream_macs_per_second(bench.WINDOW_S, bench.HOP_S, system.encoder)}


def one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


KIT = bench.Kit(
    systems={
        "numpy-baseline": bench.System(load_baseline, available=baseline_unavailable),
        **bench.DAEMON_KIT.systems,
        "teacher": bench.System(load_teacher, available=teacher_unavailable, counts=teacher_counts,
                                threads=one_torch_thread),
    },
    child_module="tools.bench",
    default_audio=dev_speech,
    prog="tools.bench",
    description="streamsv bench with the numpy baseline and the teacher: all four side by side, on dev speech.",
)


def main(argv: list[str] | None = None) -> int:
    return bench.main(argv, KIT, audio_help="audio file to stream (default: dev speech from the shared data, "
                                            "else an error)")


if __name__ == "__main__":
    from streamsv.errors import run_tool

    run_tool(main)  # a bad option value: one error line, not a traceback
