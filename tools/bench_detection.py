"""Streaming detection benchmark in the style of Picovoice's speaker-recognition benchmark.

For each conversation (tools/make_conversations.py: dev speakers only) the target is enrolled
from 3 utterances with streamsv.profiles.enroll, then the conversation is streamed through the
real listen pipeline (streamsv.pipeline.Pipeline: VAD, rolling 3 s window, a decision every
0.5 s hop, score smoothing) as fast as it can go on one thread. The pipeline's output is held
between events: after a decision the target is "detected" if the decision accepted the target,
until the next decision or the end of the speech segment; before a segment's first decision
nothing is detected (that wait is part of the figure).

On a 10 ms frame grid, against who is really speaking:
  detection accuracy     DA  = (true-positive + true-negative time) / total time
  detection error rate   DER = (false-alarm + missed time) / target speech time
  core-seconds per audio-second: process CPU time / audio time (1 thread)
  time to detect: from the start of each target turn to the first accept in it (median)

Each system's threshold is its EER threshold on calibration speakers that never appear in the
conversations (the odd-numbered dev speakers): enroll on their first 3 utterances, score 3 s
crops of the rest. Teacher and student run side by side on the same conversations.

    python tools/bench_detection.py                       # shipped student (or untrained) + teacher
    python tools/bench_detection.py --student runs/x.pt --limit 4 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import datasets  # noqa: E402
import make_conversations as mc  # noqa: E402

FRAME_S = 0.01
CALIBRATION_CROP_S = 3.0  # the streaming window: calibrate on what the pipeline scores


def calibrate_threshold(system, set_name: str) -> float:
    from streamsv.scoring import calibrate

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import eval as ev

    utts = datasets.dev_set(set_name)
    _, calib = mc.split_speakers(utts)
    groups = {s: us for s, us in mc.by_speaker(utts).items() if s in calib}
    profiles, tests = {}, []
    for spk, us in groups.items():
        vecs = [system.embed(datasets.read_audio(u.path)) for u in us[: mc.ENROLL_UTTERANCES]]
        mean = np.mean(vecs, axis=0)
        profiles[spk] = mean / np.linalg.norm(mean)
        for u in us[mc.ENROLL_UTTERANCES :]:
            wave = ev.crop(datasets.read_audio(u.path), CALIBRATION_CROP_S, ev._rng("calib", u.path.name))
            tests.append((spk, system.embed(wave)))
    genuine = [float(v @ profiles[s]) for s, v in tests]
    impostor = [float(v @ p) for s, v in tests for o, p in profiles.items() if o != s]
    return calibrate(np.array(genuine), np.array(impostor)).threshold


def detection_trace(events: list[dict], n_frames: int) -> np.ndarray:
    """Per 10 ms frame: did the pipeline's latest output say 'target'?"""
    out = np.zeros(n_frames, bool)
    state, since = False, 0.0
    for e in events:
        if e["event"] not in ("decision", "speech_end"):
            continue
        t = e["t"]
        if state:
            out[int(since / FRAME_S) : int(t / FRAME_S)] = True
        state = e["event"] == "decision" and bool(e["accepted"]) and e["speaker"] == "target"
        since = t
    if state:
        out[int(since / FRAME_S) :] = True
    return out


def run_conversation(system, audio: np.ndarray, conv: mc.Conversation, threshold: float) -> dict:
    from streamsv.bench import TimedSource
    from streamsv.config import Config
    from streamsv.pipeline import Pipeline
    from streamsv.profiles import enroll

    profile, _ = enroll(system, "target", [datasets.read_audio(p) for p in conv.enroll_paths])
    cfg = Config().with_overrides(**{"scoring.threshold": float(threshold), "output.stats_interval_s": 86400})
    started = time.process_time()
    events = list(Pipeline(system, TimedSource(audio), cfg, {"target": profile.centroid}).run())
    cpu = time.process_time() - started
    truth = mc.truth_frames(conv, FRAME_S)
    pred = detection_trace(events, len(truth))
    delays = []
    accepts = [e["t"] for e in events if e["event"] == "decision" and e["accepted"] and e["speaker"] == "target"]
    for turn in conv.turns:
        if turn.speaker == conv.target:
            hit = [t for t in accepts if turn.start <= t <= turn.end + 0.5]
            delays.append(hit[0] - turn.start if hit else None)
    return {
        "tp": int((pred & truth).sum()), "tn": int((~pred & ~truth).sum()),
        "fa": int((pred & ~truth).sum()), "miss": int((~pred & truth).sum()),
        "cpu_s": cpu, "audio_s": conv.seconds, "delays": delays,
    }


def summarise(parts: list[dict], threshold: float) -> dict:
    tot = {k: sum(p[k] for p in parts) for k in ("tp", "tn", "fa", "miss", "cpu_s", "audio_s")}
    frames = tot["tp"] + tot["tn"] + tot["fa"] + tot["miss"]
    target = tot["tp"] + tot["miss"]
    delays = [d for p in parts for d in p["delays"]]
    found = [d for d in delays if d is not None]
    return {
        "threshold": round(threshold, 4),
        "conversations": len(parts),
        "audio_s": round(tot["audio_s"], 1),
        "detection_accuracy": round(100 * (tot["tp"] + tot["tn"]) / frames, 2),
        "detection_error_rate": round(100 * (tot["fa"] + tot["miss"]) / target, 2),
        "miss_rate": round(100 * tot["miss"] / target, 2),
        "false_alarm_rate": round(100 * tot["fa"] / (frames - target), 2),
        "core_s_per_audio_s": round(tot["cpu_s"] / tot["audio_s"], 5),
        "target_turns": len(delays),
        "turns_detected": len(found),
        "time_to_detect_median_s": round(float(np.median(found)), 2) if found else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", action="append", default=[], metavar="[LABEL=]PATH",
                   help="student weights (repeatable; default: shipped weights, else 'untrained')")
    p.add_argument("--no-teacher", action="store_true")
    p.add_argument("--set", default=mc.DEFAULT_SET, choices=["speechocean-dev", "librispeech-test-other"])
    p.add_argument("--limit", type=int, default=0, help="only the first N conversations (quick runs)")
    p.add_argument("--threshold", action="append", default=[], metavar="LABEL=VALUE",
                   help="fixed threshold for a system instead of calibrating it")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    if datasets.data_root(required=False) is None:
        raise SystemExit("error: shared data not found (set STREAMSV_DATA)")
    import eval as ev
    import teacher as teacher_mod
    from streamsv.embedder import DEFAULT_WEIGHTS

    systems = []
    specs = a.student or ([str(DEFAULT_WEIGHTS)] if DEFAULT_WEIGHTS.is_file() else ["untrained"])
    for spec in specs:
        s = ev.student_system(spec)  # same labelling rules as tools/eval.py
        systems.append((s.label, s.embedder))
    if not a.no_teacher:
        if teacher_mod.available():
            systems.append(("teacher", teacher_mod.Teacher()))
        else:
            print("teacher: not installed (bash tools/install-train-deps.sh); student only", file=sys.stderr)
    fixed = {k: float(v) for k, _, v in (t.partition("=") for t in a.threshold)}

    convs = mc.conversations(a.set)
    if a.limit:
        convs = convs[: a.limit]
    results = {}
    for label, system in systems:
        thr = fixed[label] if label in fixed else calibrate_threshold(system, a.set)
        parts = [run_conversation(system, audio, conv, thr) for audio, conv in convs]
        results[label] = summarise(parts, thr)
        print(f"  {label}: {results[label]}", file=sys.stderr)

    rows = [("threshold (EER on calibration speakers)", "threshold", "{:.3f}"),
            ("detection accuracy %", "detection_accuracy", "{:.2f}"),
            ("detection error rate %", "detection_error_rate", "{:.2f}"),
            ("  missed target time %", "miss_rate", "{:.2f}"),
            ("  false-alarm time % (of non-target time)", "false_alarm_rate", "{:.2f}"),
            ("target turns detected", "turns_detected", "{}"),
            ("time to detect, median s", "time_to_detect_median_s", "{:.2f}"),
            ("core-seconds per audio-second (1 thread)", "core_s_per_audio_s", "{:.4f}")]
    labels = list(results)
    first = results[labels[0]]
    print(f"{first['conversations']} conversations, {first['audio_s']:.0f} s of {a.set} dev speakers, "
          f"{first['target_turns']} target turns")
    print("| figure | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name, key, fmt in rows:
        print(f"| {name} | " + " | ".join("-" if results[l][key] is None else fmt.format(results[l][key]) for l in labels) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
