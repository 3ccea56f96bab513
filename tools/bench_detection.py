"""Live-room conversation benchmark: pipelines side by side on tools/make_conversations.py's talk.

Each conversation (three dev voices, two enrolled from 3 utterances each with
streamsv.profiles.enroll, turns of 1-8 s, gaps of 0-800 ms, ~10% overlapping, in one room
condition) is streamed through the real listen pipeline (streamsv.pipeline.Pipeline: VAD,
speaker-change test, rolling window, a decision every hop, smoothing) as fast as it goes on
one thread. Every system and variant hears the same audio. Figures:

  in-turn accuracy       decisions inside a turn (and inside no other) that are right: the
                         enrolled speaker accepted by name, the stranger left unknown; the
                         wrong ones split by kind (stranger accepted, enrolled voice unknown or
                         named as the other) and the share that came in a turn's first 1.5 s
  DA / DER (96 ms)       Picovoice's speaker-recognition benchmark, per enrolled voice as target:
                         the pipeline's latest output is held until the next decision or the
                         segment's end; DA = (TP + TN) / frames, DER = (FA + miss) / target frames
  boundary P / R / F1    predicted turn starts (speech_start, speaker_change's ``at``) matched
                         one-to-one to true turn starts within +-0.3 s; false splits are
                         speaker_change events matching none, missed are true starts with no match.
                         A speech_start that ``continues`` the voice before it (change.bridge_s)
                         is no boundary: only a speaker_change after it is
  first correct, median  from a turn's start to its first right decision (turns with none counted)
  by dev set             in-turn accuracy per dev set over the run's rooms (urdu beside read English)
  spread over households each system's in-turn accuracy and boundary F1, and each one's difference
                         from the first system, with a 95% interval from resampling the households
                         (paired: one draw for every system; a household keeps all its rooms), so a
                         difference can be told from which households the split happened to hold
  core-s per audio-s     process CPU time / audio time (1 thread)
  decision latency p95   the decisions' own latency_ms: from a 30 ms block's hand-over to the
                         decision it completes (the block's VAD, change tests and hop; the audio
                         goes as fast as it goes, so no waiting is in it); wall time on a shared core

Student variants run on the shipped model with the daemon's default scoring; ``before`` is the
pipeline as it was before issue 10 (webrtcvad without a noise gate, no change test, a 0.05 margin
and 3 hops of smoothing). The teacher
(Resemblyzer) uses its EER threshold on the tuning speakers of speechocean762 dev. Thresholds
are tuned with ``--split tuning`` and reported on ``--split reporting`` (other speakers).

    taskset -c 0 python -m tools.bench_detection                          # every condition, reporting split
    taskset -c 0 python -m tools.bench_detection --condition floor-50 --variant x:change.threshold=0.4 --split tuning
    taskset -c 0 python -m tools.bench_detection --latency     # capture-to-decision of the variants side by side
    taskset -c 0 python -m tools.bench_detection --condition floor-50 --no-teacher --variant student \
        --model shipped=streamsv/weights/student.onnx --model new=runs/x/onnx/student.onnx   # models side by side

``--model LABEL=PATH[:key=value,...]`` adds another student model (an exported step graph; its pool
graph beside it) with the default pipeline and, as the teacher gets, its own EER threshold on the
tuning speakers (a model trained differently has its own score scale), unless the overrides set
``scoring.threshold`` themselves.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from tools import make_conversations as mc
from training import datasets

PICOVOICE_FRAME_S = 0.096
BOUNDARY_TOLERANCE_S = 0.3
SHORT_CLIP_S = 2.0  # enrollment clips shorter than this are joined (enroll needs 1 s of voice in each)
SPREAD_RESAMPLES = 2000  # household bootstrap draws (the intervals move in the third decimal between seeds)
CALIBRATION_CROP_S = 3.0  # the streaming window: calibrate the teacher on what the pipeline scores
# Variants of the student pipeline: label -> config overrides.
VARIANTS = {
    "before": {"vad.snr_db": 0.0, "change.enabled": False, "scoring.min_margin": 0.05, "scoring.smoothing_hops": 3},
    "student": {},
    "student-silero": {"vad.engine": "silero"},
}
DEFAULT_CONDITIONS = mc.CONDITIONS


def calibrate_threshold(system, set_name: str = mc.DEFAULT_SET) -> float:
    """EER threshold of ``system`` on the tuning speakers of ``set_name`` (3 s crops)."""
    from streamsv.scoring import calibrate
    from training import eval as ev

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


def detection_trace(events: list[dict], n_frames: int, speaker: str = "target", frame_s: float = PICOVOICE_FRAME_S) -> np.ndarray:
    """Per frame: did the pipeline's latest output say ``speaker``? A decision holds until the
    next decision, the segment's end or a speaker change."""
    out = np.zeros(n_frames, bool)
    state, since = False, 0.0
    for e in events:
        if e["event"] not in ("decision", "speech_end", "speaker_change"):
            continue
        t = e["t"]
        if state:
            out[int(since / frame_s) : int(t / frame_s)] = True
        state = e["event"] == "decision" and bool(e["accepted"]) and e["speaker"] == speaker
        since = t
    if state:
        out[int(since / frame_s) :] = True
    return out


def match_boundaries(predicted: list[float], truth: list[float], tolerance: float = BOUNDARY_TOLERANCE_S) -> int:
    """How many predicted boundaries pair one-to-one with a true one within ``tolerance``
    (greedy by distance: the closest pairs first)."""
    pairs = sorted((abs(p - t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth) if abs(p - t) <= tolerance)
    used_p, used_t, hits = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            hits += 1
    return hits


def owner(conv: mc.Conversation, t: float) -> mc.Turn | None:
    """The one turn running at ``t`` (None in a gap or where two overlap)."""
    mine = [turn for turn in conv.turns if turn.start <= t <= turn.end]
    return mine[0] if len(mine) == 1 else None


def right(decision: dict, turn: mc.Turn, enrolled: set[str]) -> bool:
    if turn.speaker in enrolled:
        return bool(decision["accepted"]) and decision["speaker"] == turn.speaker
    return not decision["accepted"]


def wrong_kind(decision: dict, turn: mc.Turn, enrolled: set[str]) -> str | None:
    """Which way a decision went wrong (None when right): a stranger accepted as someone, an
    enrolled voice left unknown, or an enrolled voice named as another."""
    if right(decision, turn, enrolled):
        return None
    if turn.speaker not in enrolled:
        return "stranger_accepted"
    return "enrolled_unknown" if not decision["accepted"] else "enrolled_confused"


WRONG_KINDS = ("stranger_accepted", "enrolled_unknown", "enrolled_confused")
EARLY_S = 1.5  # a wrong decision this soon after its turn's start counts as early


def score_conversation(events: list[dict], conv: mc.Conversation) -> dict:
    """Counts for one conversation's events against its truth (summed over conversations later)."""
    enrolled = set(conv.enrolled) or {conv.target}
    decisions = [e for e in events if e["event"] == "decision"]
    judged = [(e, owner(conv, e["t"])) for e in decisions]
    judged = [(e, turn) for e, turn in judged if turn is not None]
    first: dict[int, float] = {}
    for e, turn in judged:
        if right(e, turn, enrolled):
            first.setdefault(id(turn), e["t"] - turn.start)
    frames = {"tp": 0, "tn": 0, "fa": 0, "miss": 0}
    for who in sorted(enrolled):
        truth = mc.truth_frames(conv, PICOVOICE_FRAME_S, who)
        pred = detection_trace(events, len(truth), who, PICOVOICE_FRAME_S)
        frames["tp"] += int((pred & truth).sum())
        frames["tn"] += int((~pred & ~truth).sum())
        frames["fa"] += int((pred & ~truth).sum())
        frames["miss"] += int((~pred & truth).sum())
    starts = [e["t"] for e in events if e["event"] == "speech_start" and not e.get("continues")]
    continued = sum(1 for e in events if e["event"] == "speech_start" and e.get("continues"))
    changes = [e["at"] for e in events if e["event"] == "speaker_change"]
    truth_b = [turn.start for turn in conv.turns]
    change_hits = match_boundaries(changes, truth_b)
    return {
        "decisions": len(judged), "right": sum(right(e, turn, enrolled) for e, turn in judged),
        **frames,
        "boundaries_true": len(truth_b), "boundaries_pred": len(starts) + len(changes),
        "boundaries_hit": match_boundaries(starts + changes, truth_b),
        "changes": len(changes), "false_splits": len(changes) - change_hits, "continued": continued,
        **{kind: sum(wrong_kind(e, turn, enrolled) == kind for e, turn in judged) for kind in WRONG_KINDS},
        "wrong_early": sum(not right(e, turn, enrolled) and e["t"] - turn.start < EARLY_S for e, turn in judged),
        "turns": len(conv.turns), "first_correct": [first.get(id(turn)) for turn in conv.turns],
        "dev_set": conv.dev_set, "latencies_ms": [e["latency_ms"] for e in decisions if "latency_ms" in e],
    }


def enroll_household(system, conv: mc.Conversation) -> dict[str, np.ndarray]:
    """The household's enrolled voices' profile centroids, as ``streamsv enroll`` makes them."""
    from streamsv.profiles import enroll

    profiles = {}
    for who, paths in (conv.enrolled or {conv.target: conv.enroll_paths}).items():
        waves = [datasets.read_audio(p) for p in paths]
        if min(len(w) for w in waves) < SHORT_CLIP_S * mc.SAMPLE_RATE:
            waves = [np.concatenate(waves)]  # ASC's 1 s keywords: one recording of the three
        profile, _ = enroll(system, "voice", waves)
        profiles[who] = profile.centroid
    return profiles


class Profiles:
    """Each system's profiles of each household, enrolled once: the enrollment clips are the same
    in every room, and every variant of a system enrolls alike."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, tuple], dict[str, np.ndarray]] = {}

    def of(self, system, conv: mc.Conversation) -> dict[str, np.ndarray]:
        enrolled = conv.enrolled or {conv.target: conv.enroll_paths}
        key = (id(system), tuple(sorted((who, tuple(paths)) for who, paths in enrolled.items())))
        if key not in self._known:
            self._known[key] = enroll_household(system, conv)
        return self._known[key]


def household_sums(parts: list[dict]) -> dict[str, np.ndarray]:
    """Per household (``part["household"]``), the counts behind in-turn accuracy and boundary F1,
    summed over its rooms."""
    n = max(p["household"] for p in parts) + 1
    sums = {k: np.zeros(n) for k in ("right", "decisions", "boundaries_hit", "boundaries_pred", "boundaries_true")}
    for p in parts:
        for k, v in sums.items():
            v[p["household"]] += p[k]
    return sums


def _figures(sums: dict[str, np.ndarray], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-turn accuracy and boundary F1 for each row of household ``weights`` (draws, households)."""
    w = {k: weights @ v for k, v in sums.items()}
    accuracy = w["right"] / np.maximum(w["decisions"], 1)
    return accuracy, boundary_scores(w["boundaries_hit"], w["boundaries_pred"], w["boundaries_true"])[2]


def boundary_scores(hit, predicted, true) -> tuple:
    """Boundary precision, recall and F1 from counts (numbers or arrays of them); 0 where a count is 0."""
    precision = hit / np.maximum(predicted, 1)
    recall = hit / np.maximum(true, 1)
    return precision, recall, 2 * precision * recall / np.maximum(precision + recall, 1e-12)


def household_spread(per_system: dict[str, list[dict]], resamples: int = SPREAD_RESAMPLES, seed: int = 0) -> dict:
    """label -> {figure: (value, low, high)} for each system's in-turn accuracy and boundary F1, and
    for every system after the first its difference from the first ("-" figures): 95% intervals
    from resampling households with replacement, the same draws for every system."""
    sums = {label: household_sums(parts) for label, parts in per_system.items()}
    n = len(next(iter(sums.values()))["right"])
    draws = np.random.default_rng(seed).integers(0, n, (resamples, n))
    weights = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(float)
    whole = np.ones((1, n))
    base = next(iter(sums))
    base_point, base_drawn = _figures(sums[base], whole), _figures(sums[base], weights)
    out = {}
    for label, s in sums.items():
        point, drawn = _figures(s, whole), _figures(s, weights)
        figures = {"in_turn_accuracy": (point[0], drawn[0]), "boundary_f1": (point[1], drawn[1])}
        if label != base:
            figures["in_turn_accuracy-"] = (point[0] - base_point[0], drawn[0] - base_drawn[0])
            figures["boundary_f1-"] = (point[1] - base_point[1], drawn[1] - base_drawn[1])
        out[label] = {k: (round(float(v[0]), 4), *(round(float(q), 4) for q in np.percentile(d, [2.5, 97.5])))
                      for k, (v, d) in figures.items()}
    return out


def spread_table(spread: dict) -> str:
    labels = list(spread)
    cell = lambda f, sign="": "{:{s}.3f} [{:{s}.3f}, {:{s}.3f}]".format(*f, s=sign)  # noqa: E731
    lines = [f"spread over households: 95% intervals, {SPREAD_RESAMPLES} paired draws; differences from {labels[0]}",
             "| system | in-turn accuracy | boundary F1 | in-turn, difference | boundary F1, difference |",
             "|---|---:|---:|---:|---:|"]
    for label, f in spread.items():
        diffs = [cell(f[k], "+") if k in f else "-" for k in ("in_turn_accuracy-", "boundary_f1-")]
        lines.append(f"| {label} | {cell(f['in_turn_accuracy'])} | {cell(f['boundary_f1'])} | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def run_conversation(system, audio: np.ndarray, conv: mc.Conversation, overrides: dict,
                     profiles: dict[str, np.ndarray] | None = None) -> dict:
    """``conv`` streamed through the listen pipeline with ``overrides``, scored (profiles enrolled
    here unless given)."""
    from streamsv.bench import TimedSource
    from streamsv.config import Config
    from streamsv.pipeline import Pipeline

    if profiles is None:
        profiles = enroll_household(system, conv)
    cfg = Config().with_overrides(**{"output.stats_interval_s": 86400, **overrides})
    started = time.process_time()
    events = list(Pipeline(system, TimedSource(audio), cfg, profiles).run())
    part = score_conversation(events, conv)
    part.update(cpu_s=time.process_time() - started, audio_s=conv.seconds)
    return part


def totals(parts: list[dict]) -> dict:
    """The figures of a list of scored conversations."""
    s = {k: sum(p[k] for p in parts) for k in ("decisions", "right", "tp", "tn", "fa", "miss", "boundaries_true",
                                                "boundaries_pred", "boundaries_hit", "changes", "false_splits", "continued",
                                                "turns", "cpu_s", "audio_s", *WRONG_KINDS, "wrong_early")}
    frames = s["tp"] + s["tn"] + s["fa"] + s["miss"]
    target = s["tp"] + s["miss"]
    precision, recall, f1 = (float(x) for x in boundary_scores(s["boundaries_hit"], s["boundaries_pred"], s["boundaries_true"]))
    firsts = [d for p in parts for d in p["first_correct"]]
    found = [d for d in firsts if d is not None]
    return {
        "conversations": len(parts), "audio_s": round(s["audio_s"], 1), "turns": s["turns"],
        "in_turn_accuracy": round(s["right"] / s["decisions"], 4) if s["decisions"] else None,
        "decisions": s["decisions"],
        **{f"{kind}_share": round(s[kind] / s["decisions"], 4) if s["decisions"] else None
           for kind in (*WRONG_KINDS, "wrong_early")},
        "detection_accuracy": round(100 * (s["tp"] + s["tn"]) / frames, 2) if frames else None,
        "detection_error_rate": round(100 * (s["fa"] + s["miss"]) / target, 2) if target else None,
        "boundary_precision": round(precision, 4), "boundary_recall": round(recall, 4),
        "boundary_f1": round(f1, 4),
        "speaker_changes": s["changes"], "false_splits": s["false_splits"], "segments_continued": s["continued"],
        "missed_boundaries": s["boundaries_true"] - s["boundaries_hit"],
        "first_correct_median_s": round(float(np.median(found)), 2) if found else None,
        "turns_never_right": len(firsts) - len(found),
        "core_s_per_audio_s": round(s["cpu_s"] / s["audio_s"], 4) if s["audio_s"] else None,
        "decision_latency_p95_ms": percentile([ms for p in parts for ms in p.get("latencies_ms", [])], 95),
    }


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


ROWS = (("in-turn decision accuracy", "in_turn_accuracy", "{:.3f}"),
        ("  wrong: stranger accepted (share of decisions)", "stranger_accepted_share", "{:.3f}"),
        ("  wrong: enrolled voice left unknown", "enrolled_unknown_share", "{:.3f}"),
        ("  wrong: enrolled voice named as another", "enrolled_confused_share", "{:.3f}"),
        (f"  wrong within {EARLY_S:g} s of the turn's start", "wrong_early_share", "{:.3f}"),
        ("detection accuracy % (96 ms)", "detection_accuracy", "{:.2f}"),
        ("detection error rate %", "detection_error_rate", "{:.2f}"),
        ("boundary precision (+-0.3 s)", "boundary_precision", "{:.3f}"),
        ("boundary recall", "boundary_recall", "{:.3f}"),
        ("boundary F1", "boundary_f1", "{:.3f}"),
        ("speaker_change events", "speaker_changes", "{}"),
        ("  false splits", "false_splits", "{}"),
        ("missed boundaries", "missed_boundaries", "{}"),
        ("segments continuing a voice (bridged)", "segments_continued", "{}"),
        ("first correct decision, median s", "first_correct_median_s", "{:.2f}"),
        ("turns never decided right", "turns_never_right", "{}"),
        ("core-s per audio-s (1 thread)", "core_s_per_audio_s", "{:.4f}"),
        ("decision latency p95 ms (block to decision)", "decision_latency_p95_ms", "{:.1f}"))


def table(results: dict[str, dict], condition: str) -> str:
    labels = list(results)
    first = results[labels[0]]
    lines = [f"{condition}: {first['conversations']} conversations, {first['audio_s']:.0f} s, {first['turns']} turns",
             "| figure | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name, key, fmt in ROWS:
        lines.append(f"| {name} | " + " | ".join("-" if results[l][key] is None else fmt.format(results[l][key]) for l in labels) + " |")
    return "\n".join(lines)


def by_set_table(per_system: dict[str, list[dict]]) -> str:
    """In-turn accuracy per dev set (every room of the run together), systems side by side: urdu
    (another language, emotional speech) beside read English (LibriSpeech) and the others."""
    labels = list(per_system)
    sets = [s for s in mc.SETS if any(p["dev_set"] == s for parts in per_system.values() for p in parts)]
    lines = ["in-turn decision accuracy by dev set (all rooms of this run; decisions in brackets)",
             "| dev set | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for set_name in sets:
        cells = []
        for label in labels:
            t = totals([p for p in per_system[label] if p["dev_set"] == set_name])
            cells.append("-" if t["in_turn_accuracy"] is None else f"{t['in_turn_accuracy']:.3f} ({t['decisions']})")
        lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_table(variants: dict[str, dict], rounds: int = 3, seconds: float = 20.0, realtime_s: float = 10.0) -> str:
    """Capture-to-decision and hop cost of each student variant, side by side: ``rounds`` rounds
    round-robin over the variants (a busy machine slows them alike), medians. Continuous dev
    speech through streamsv.bench's real pipeline; the variant's overrides on its config."""
    import streamsv.bench as sb
    from streamsv.embedder import load_embedder
    from tools.bench import dev_speech

    emb = load_embedder()
    wave, desc = dev_speech(seconds)
    keys = ("rtf", "hop_p95_ms", "latency_p50_ms", "latency_p95_ms")
    runs: dict[str, list[dict]] = {label: [] for label in variants}
    for _ in range(rounds):
        for label, overrides in variants.items():
            runs[label].append(sb.measure(emb, wave, realtime_s, time.process_time, 2.0, overrides))
    lines = [f"{desc}: {seconds:g} s as fast as it goes (CPU time), {realtime_s:g} s at real-time pace; "
             f"median of {rounds} rounds", "| figure | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    for key in keys:
        cells = [f"{np.median([r[key] for r in runs[label]]):.4g}" for label in variants]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse_variant(spec: str) -> tuple[str, dict]:
    """LABEL:key=value,key=value -> (LABEL, overrides); values parsed as YAML scalars."""
    import yaml

    label, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"error: --variant {spec!r}: expected LABEL:key=value,...")
        overrides[key.strip()] = yaml.safe_load(value)
    return label, overrides


def add_room_arguments(p: argparse.ArgumentParser, split: str, per_set: int) -> None:
    """The conversations a run streams: --condition (rooms), --split, --per-set (this tool's and
    tools.sweep_decisions')."""
    p.add_argument("--condition", action="append", choices=mc.CONDITIONS, help="room (repeatable; default: all)")
    p.add_argument("--split", default=split, choices=mc.SPLITS)
    p.add_argument("--per-set", type=int, default=per_set, help="households per dev set and condition (4 sets)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_room_arguments(p, split="reporting", per_set=1)
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:key=value,...",
                   help="a student pipeline with config overrides (repeatable; default: before, student, student-silero)")
    p.add_argument("--no-teacher", action="store_true")
    p.add_argument("--teacher-threshold", type=float, help="instead of calibrating it")
    p.add_argument("--teacher-overrides", default="", metavar="key=value,...",
                   help="config overrides for the teacher's pipeline (e.g. its own change.threshold)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH[:key=value,...]",
                   help="another student model (step .onnx), with its own calibrated threshold unless set (repeatable)")
    p.add_argument("--latency", action="store_true",
                   help="instead: capture-to-decision and CPU of the student variants on continuous speech (streamsv.bench)")
    a = p.parse_args(argv)
    mc.require_data()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from streamsv.embedder import load_embedder

    student = load_embedder()
    variants = dict(_parse_variant(v) for v in a.variant) if a.variant else dict(VARIANTS)
    if a.latency:
        print(latency_table(variants))
        return 0
    systems = [(label, student, overrides) for label, overrides in variants.items()]
    for spec in a.model:
        label, eq, rest = spec.partition("=")
        path, _, settings = rest.partition(":")
        if not eq or not label or not path:
            raise SystemExit(f"error: --model {spec!r}: expected LABEL=PATH[:key=value,...]")
        model, overrides = load_embedder(path), _parse_variant(f"{label}:{settings}")[1]
        if "scoring.threshold" not in overrides:
            overrides["scoring.threshold"] = float(calibrate_threshold(model))
            print(f"{label} ({model.fingerprint}) threshold {overrides['scoring.threshold']:.4f} "
                  f"(EER on tuning speakers of {mc.DEFAULT_SET})", file=sys.stderr)
        systems.append((label, model, overrides))
    if not a.no_teacher:
        from training import teacher as teacher_mod

        if teacher_mod.available():
            import torch

            torch.set_num_threads(1)
            teacher = teacher_mod.Teacher()
            thr = a.teacher_threshold if a.teacher_threshold is not None else calibrate_threshold(teacher)
            print(f"teacher threshold {thr:.4f} (EER on tuning speakers of {mc.DEFAULT_SET})", file=sys.stderr)
            systems.append(("teacher", teacher, {"scoring.threshold": float(thr),
                                                 **_parse_variant("teacher:" + a.teacher_overrides)[1]}))
        else:
            print("teacher: not installed (bash tools/install-train-deps.sh); student only", file=sys.stderr)

    print(f"model {student.fingerprint}, split {a.split}, {a.per_set} household(s) per dev set ({', '.join(mc.SETS)})")
    everything: dict[str, dict] = {}
    per_system: dict[str, list[dict]] = {label: [] for label, _, _ in systems}
    profiles = Profiles()
    for condition in a.condition or DEFAULT_CONDITIONS:
        convs = mc.conversations(condition, a.split, a.per_set)
        results = {}
        for label, system, overrides in systems:
            parts = [run_conversation(system, audio, conv, overrides, profiles.of(system, conv)) for audio, conv in convs]
            for household, part in enumerate(parts):  # every room holds the same households, in order
                part["household"] = household
            per_system[label] += parts
            results[label] = totals(parts)
        everything[condition] = results
        print(table(results, condition), flush=True)
        print()
    if len(everything) > 1:
        overall = {label: totals(parts) for label, parts in per_system.items()}
        everything["all"] = overall
        print(table(overall, "all conditions"))
        print()
    print(by_set_table(per_system))
    everything["spread"] = household_spread(per_system)
    print()
    print(spread_table(everything["spread"]))
    everything["by_dev_set"] = {label: {s: totals([p for p in parts if p["dev_set"] == s])["in_turn_accuracy"]
                                        for s in mc.SETS} for label, parts in per_system.items()}
    if a.json:
        Path(a.json).write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    from streamsv.errors import run_tool

    run_tool(main)  # a bad option value: one error line, not a traceback
