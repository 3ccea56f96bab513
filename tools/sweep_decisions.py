"""Decision policies side by side on the live-room conversations, from ONE pipeline run.

The live decision (scores -> smoothing -> threshold + margin) feeds nothing back into the rest of
the pipeline: the VAD, the change tests, bridging and the window are the same whatever is
decided. So each conversation is streamed once through the real listen pipeline (the variant's
change/VAD settings), every hop's embedding is recorded with the window's seconds, and each
policy is replayed on them with streamsv's own Smoother and DecisionRule (reset where the
pipeline resets them: a new voice's speech_start and a speaker_change). The replayed events are
scored with tools.bench_detection's own scorer, so the figures are bench_detection's.

Before any figure is printed, the pipeline's own scoring settings are replayed and must give
every recorded decision back exactly (else the tool stops: the replay would not be the pipeline).

    taskset -c 0 python -m tools.sweep_decisions --split tuning --per-set 3 --condition floor-50 \
        --condition quiet --policy default: --policy m0:min_margin=0 --policy m0s1:min_margin=0,smoothing_hops=1

Policy keys: the ScoringConfig's (threshold, min_margin, duration_slope, smoothing_hops, snr_slope,
snr_ref_db: the window's SNR is the one its decision event reports), replayed
with the daemon's own code, and prototypes measured here and not in the daemon (docs/live-rooms.md,
fifth pass): ``alpha`` (an exponential average of the scores), ``excess=1`` (average each hop's
score minus its own duration bar), ``pool=embedding`` (average the last smoothing_hops windows'
embeddings, then score), ``confirm=N`` (a name is said only once it has led N hops in a row;
``switch_only=1``: only a name that replaces another in the voice), ``stay=D`` (the voice's
current name stays accepted down to D below the bar), ``closeness=K,near=C`` (a profile's bar rises
by K per unit of its centroid's cosine to the nearest other profile above C), ``cohort_weight=W``
(and ``top_k``, default 100: every score less W times the mean of the window's and the profile's
top_k cosines to training/cohort.py's clean cohort, the mean half of AS-norm; needs the shared data),
``center=C`` (both sides less C times that cohort's mean before the cosine), ``adapt=W,adapt_bar=B``
(and ``adapt_max``, default 20: each turn's most confident accepted window, raw score at least B,
joins its profile's centroid with weight W), ``shift=W`` (and ``shift_after``, default 10: every
window less W times how far the mean of the conversation's windows so far lies from the mean of
the enrolled centroids).

Every run ends with the spread over households (tools.bench_detection's: paired bootstrap 95%
intervals of each policy's figures and of its difference from the first policy).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from tools import bench_detection as bd
from tools import make_conversations as mc
from training import datasets

SUMMARY_ROWS = (("in-turn", "in_turn_accuracy", "{:.3f}"),
                ("stranger acc.", "stranger_accepted_share", "{:.3f}"),
                ("enrolled unk.", "enrolled_unknown_share", "{:.3f}"),
                ("confused", "enrolled_confused_share", "{:.3f}"),
                ("early", "wrong_early_share", "{:.3f}"),
                ("DA %", "detection_accuracy", "{:.2f}"),
                ("DER %", "detection_error_rate", "{:.2f}"),
                ("first ok s", "first_correct_median_s", "{:.2f}"),
                ("never ok", "turns_never_right", "{}"))


@dataclasses.dataclass
class Recording:
    """One conversation through the pipeline: its events and, per decision event, the hop's
    embedding and the window's seconds."""

    conv: mc.Conversation
    events: list[dict]
    embeddings: list[np.ndarray]
    seconds: list[float]
    centroids: dict[str, np.ndarray]


def record(system, audio: np.ndarray, conv: mc.Conversation, overrides: dict,
           profiles: dict[str, np.ndarray]) -> Recording:
    from streamsv.bench import TimedSource
    from streamsv.config import Config
    from streamsv.pipeline import Pipeline

    class RecordingPipeline(Pipeline):
        def _hop(self, ev):
            d = super()._hop(ev)
            if d is not None:
                hops.append((self.voice.embeddings[-1], self.stream.seconds))
            return d

    hops: list[tuple[np.ndarray, float]] = []
    cfg = Config().with_overrides(**{"output.stats_interval_s": 86400, **overrides})
    pipeline = RecordingPipeline(system, TimedSource(audio), cfg, profiles)
    events = list(pipeline.run())
    n = sum(e["event"] == "decision" for e in events)
    assert n == len(hops), (n, len(hops))
    return Recording(conv, events, [h[0] for h in hops], [h[1] for h in hops], dict(pipeline.centroids))


def scoring_config(base, policy: dict):
    """The ScoringConfig of a policy: ``base`` with the policy's scoring keys."""
    keys = {f.name for f in dataclasses.fields(base)}
    return dataclasses.replace(base, **{k: v for k, v in policy.items() if k in keys})


def replay(rec: Recording, scoring, extras: dict) -> list[dict]:
    """The recording's events with each decision re-made by ``scoring`` (and the prototype
    ``extras``, below), the smoothing reset where the pipeline resets its own."""
    from streamsv.pipeline import DecisionRule
    from streamsv.scoring import Smoother, cosine_scores, decide, unit

    rule = DecisionRule(scoring, None)
    smoother = Smoother(scoring.smoothing_hops)
    alpha = extras.get("alpha")            # exponential average of the scores instead of a flat one
    excess = bool(extras.get("excess"))    # average each hop's score minus its own bar
    pool = extras.get("pool") == "embedding"   # average the hops' embeddings, then score
    confirm = int(extras.get("confirm", 1))    # hops a new name must lead before it is said
    stay = float(extras.get("stay", 0.0))      # the voice's current name keeps its place this far below the bar
    switch_only = bool(extras.get("switch_only"))   # confirm only a name that replaces another in the voice
    # A bar that rises for a voice close to another enrolled one: by ``closeness`` per unit of the
    # centroids' cosine above ``near``.
    closeness, near = float(extras.get("closeness", 0.0)), float(extras.get("near", 0.0))
    if closeness:
        nearest = {n: max((float(unit(c) @ unit(o)) for m, o in rec.centroids.items() if m != n), default=-1.0)
                   for n, c in rec.centroids.items()}
    # Scores less the mean of each side's top_k cosines to a cohort of training speakers (the
    # mean half of AS-norm, in cosine units): a window like everyone scores lower against anyone.
    cohort_weight, cohort = float(extras.get("cohort_weight", 0.0)), extras.get("_cohort")
    if cohort_weight:
        from training.cohort import top_k_stats

        top_k = int(extras.get("top_k", 100))
        profile_mu = dict(zip(rec.centroids, top_k_stats(np.stack(list(rec.centroids.values())), cohort, top_k)[0]))
    # Embeddings and centroids less ``center`` times the cohort's mean before the cosine.
    center = float(extras.get("center", 0.0))
    centroids = dict(rec.centroids)
    if center:
        shift = center * np.mean([unit(c) for c in cohort], axis=0)
        centroids = {n: unit(c) - shift for n, c in rec.centroids.items()}
    # Profiles that follow the voice as this room hears it: a turn's most confident accepted
    # window (raw score at least ``adapt_bar``) joins its profile's centroid with weight ``adapt``
    # (the enrolled centroid weighs 1), at most ``adapt_max`` windows a profile.
    adapt, adapt_bar = float(extras.get("adapt", 0.0)), float(extras.get("adapt_bar", 1.0))
    adapt_max = int(extras.get("adapt_max", 20))
    enrolled = {n: unit(c) for n, c in centroids.items()}
    # The room's channel taken out of every window: its embedding less ``shift`` times how far the
    # mean of the room's windows so far (every voice) lies from the mean of the enrolled centroids,
    # once ``shift_after`` windows are in.
    shift_w, shift_after = float(extras.get("shift", 0.0)), int(extras.get("shift_after", 10))
    room_sum, room_n = np.zeros_like(next(iter(enrolled.values()))), 0
    household = np.mean(list(enrolled.values()), axis=0)
    absorbed: dict[str, list[np.ndarray]] = {n: [] for n in centroids}
    out, k = [], 0
    state: dict = {}

    def commit():
        best = state.get("confident")
        if adapt and best is not None:
            name, emb = best[1], best[2]
            absorbed[name] = (absorbed[name] + [unit(emb)])[-adapt_max:]
            centroids[name] = unit(enrolled[name] + adapt * np.sum(absorbed[name], axis=0))

    def reset():
        commit()
        state["confident"] = None
        smoother.reset()
        state.clear()
        state.update(ema=None, recent=[], named=None, run_name=None, run=0, confident=None)

    reset()
    for e in rec.events:
        kind = e["event"]
        if (kind == "speech_start" and not e.get("continues")) or kind == "speaker_change":
            reset()
        if kind == "speech_end":
            commit()
            state["confident"] = None
        if kind == "decision":
            emb, seconds = rec.embeddings[k], rec.seconds[k]
            k += 1
            bar = rule.threshold_at(seconds, e.get("snr_db"))
            if pool:
                state["recent"] = (state["recent"] + [unit(emb)])[-scoring.smoothing_hops:]
                smoothed = cosine_scores(np.mean(state["recent"], axis=0), rec.centroids)
            else:
                room_sum, room_n = room_sum + unit(emb), room_n + 1
                if shift_w and room_n >= shift_after:
                    emb = unit(emb) - shift_w * (room_sum / room_n - household)
                raw = cosine_scores(unit(emb) - shift if center else emb, centroids)
                raw_scores = raw
                if cohort_weight:
                    mu = float(top_k_stats(emb[None, :], cohort, top_k)[0][0])
                    raw = {n: v - cohort_weight * 0.5 * (mu + float(profile_mu[n])) for n, v in raw.items()}
                if excess:
                    raw = {n: s - bar for n, s in raw.items()}
                if alpha is not None:
                    prev = state["ema"]
                    smoothed = raw if prev is None else {n: alpha * s + (1 - alpha) * prev.get(n, s) for n, s in raw.items()}
                    state["ema"] = smoothed
                else:
                    smoothed = smoother.push(raw)
            d = decide(smoothed, 0.0 if excess else bar, scoring.min_margin)
            named = state["named"]
            if not d.accepted and stay > 0 and named is not None and d.best == named:
                d = decide(smoothed, (0.0 if excess else bar) - stay, scoring.min_margin)
            speaker = d.speaker
            if speaker is not None and closeness and d.score < bar + closeness * max(0.0, nearest[speaker] - near):
                speaker = None
            if confirm > 1:
                state["run"] = state["run"] + 1 if speaker is not None and speaker == state["run_name"] else (1 if speaker else 0)
                state["run_name"] = speaker
                if (speaker is not None and speaker != named and state["run"] < confirm
                        and not (switch_only and named is None)):
                    speaker = None
            if speaker is not None:
                state["named"] = speaker
                if adapt and raw_scores[speaker] >= adapt_bar and (state["confident"] is None or raw_scores[speaker] > state["confident"][0]):
                    state["confident"] = (raw_scores[speaker], speaker, emb)
            e = {**e, "speaker": speaker, "accepted": speaker is not None}
        out.append(e)
    return out


def split_policy(policy: dict) -> tuple[dict, dict]:
    from streamsv.config import ScoringConfig

    keys = {f.name for f in dataclasses.fields(ScoringConfig)}
    unknown = [k for k in policy if k not in keys and k not in SMOOTHER_KEYS]
    if unknown:
        raise SystemExit(f"error: unknown policy key(s): {', '.join(unknown)}")
    return ({k: v for k, v in policy.items() if k in keys},
            {k: v for k, v in policy.items() if k in SMOOTHER_KEYS})


SMOOTHER_KEYS = ("alpha", "excess", "pool", "confirm", "stay", "switch_only", "closeness", "near", "cohort_weight", "top_k", "center",
                 "adapt", "adapt_bar", "adapt_max", "shift", "shift_after")


def check_replay(recs: list[Recording], scoring) -> None:
    """The pipeline's own settings, replayed, must give back every decision it made."""
    mismatches = 0
    for rec in recs:
        again = replay(rec, scoring, {})
        mismatches += sum(a["speaker"] != b["speaker"] or a["accepted"] != b["accepted"]
                          for a, b in zip(rec.events, again) if a["event"] == "decision")
    if mismatches:
        raise SystemExit(f"error: the replay disagrees with the pipeline on {mismatches} decisions")


def summary(results: dict[str, dict], title: str) -> str:
    lines = [title, "| policy | " + " | ".join(name for name, _, _ in SUMMARY_ROWS) + " |",
             "|---|" + "---:|" * len(SUMMARY_ROWS)]
    for label, t in results.items():
        cells = ["-" if t[key] is None else fmt.format(t[key]) for _, key, fmt in SUMMARY_ROWS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_cells(first: tuple[str, list[dict]], second: tuple[str, list[dict]], worst: int = 3) -> str:
    """In-turn accuracy of two policies in each recorded conversation (a room x household): how many
    cells the second wins, ties and loses, its worst losses and each policy's worst cell."""
    (label_a, parts_a), (label_b, parts_b) = first, second
    cells = [(p["room"], p["dev_set"], p["right"] / p["decisions"], q["right"] / q["decisions"], p["decisions"])
             for p, q in zip(parts_a, parts_b) if p["decisions"]]
    wins = sum(b > a for _, _, a, b, _ in cells)
    losses = sorted((b - a, room, dev_set, a, b, n) for room, dev_set, a, b, n in cells if b < a)
    lines = [f"{label_b} against {label_a}, in-turn accuracy per room x household ({len(cells)} cells): "
             f"better {wins}, equal {len(cells) - wins - len(losses)}, worse {len(losses)}"]
    lines += [f"  worse: {room}, {dev_set}: {a:.3f} -> {b:.3f} ({n} decisions)" for _, room, dev_set, a, b, n in losses[:worst]]
    lines.append(f"  lowest cell: {label_a} {min(c[2] for c in cells):.3f}, {label_b} {min(c[3] for c in cells):.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bd.add_room_arguments(p, split="tuning", per_set=3)
    p.add_argument("--pipeline", default="", metavar="key=value,...",
                   help="config overrides of the recorded pipeline (its scoring is replayed as the check)")
    p.add_argument("--policy", action="append", default=[], metavar="LABEL:key=value,...",
                   help="a decision policy (repeatable; keys: scoring.* names without the prefix, and the prototypes': "
                        + ", ".join(SMOOTHER_KEYS) + ")")
    p.add_argument("--json", metavar="PATH", help="also write every figure: per room, all rooms and by dev set")
    p.add_argument("--model", metavar="STEP.onnx", help="the student's step graph (default: the shipped model)")
    p.add_argument("--compare", action="store_true",
                   help="also: the second policy against the first in every room x household (better / equal / worse)")
    a = p.parse_args(argv)
    mc.require_data()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from streamsv.config import Config
    from streamsv.embedder import DEFAULT_WEIGHTS, load_embedder

    student = load_embedder(a.model)
    pipeline_overrides = bd._parse_variant("pipeline:" + a.pipeline)[1]
    base = Config().with_overrides(**pipeline_overrides).scoring
    policies = {label: split_policy(pol) for label, pol in (bd._parse_variant(s) for s in a.policy or ["default:"])}
    if any("cohort_weight" in kwargs or "center" in kwargs for _, kwargs in policies.values()):
        from training.cohort import cohort_embeddings
        from training.eval import student_system

        cohort = cohort_embeddings(student_system(a.model or str(DEFAULT_WEIGHTS)), "clean")
        for _, kwargs in policies.values():
            kwargs["_cohort"] = cohort
    profiles = bd.Profiles()
    per_policy: dict[str, list[dict]] = {label: [] for label in policies}
    everything: dict[str, dict] = {}
    print(f"model {student.fingerprint}, split {a.split}, {a.per_set} household(s) per dev set; pipeline {pipeline_overrides or 'default'}")
    for condition in a.condition or mc.CONDITIONS:
        recs = [record(student, audio, conv, pipeline_overrides, profiles.of(student, conv))
                for audio, conv in mc.conversations(condition, a.split, a.per_set)]
        check_replay(recs, base)
        results = {}
        for label, (scoring_keys, smoother_kwargs) in policies.items():
            scoring = scoring_config(base, scoring_keys)
            parts = [{**bd.score_conversation(replay(rec, scoring, smoother_kwargs), rec.conv),
                      "cpu_s": 0.0, "audio_s": rec.conv.seconds, "room": condition, "household": household}
                     for household, rec in enumerate(recs)]  # every room holds the same households, in order
            per_policy[label] += parts
            results[label] = bd.totals(parts)
        everything[condition] = results
        print(summary(results, f"{condition}: {len(recs)} conversations"), flush=True)
        print()
    if len(a.condition or mc.CONDITIONS) > 1:
        overall = {label: bd.totals(parts) for label, parts in per_policy.items()}
        print(summary(overall, "all conditions"))
        print()
        print(bd.by_set_table(per_policy))
        everything["all"] = overall
    everything["spread"] = bd.household_spread(per_policy)
    print()
    print(bd.spread_table(everything["spread"]))
    everything["by_dev_set"] = {label: {s: bd.totals([p for p in parts if p["dev_set"] == s])["in_turn_accuracy"]
                                        for s in mc.SETS} for label, parts in per_policy.items()}
    if a.compare and len(per_policy) > 1:
        print()
        print(compare_cells(*list(per_policy.items())[:2]))
    if a.json:
        Path(a.json).write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    from streamsv.errors import run_tool

    run_tool(main)  # a bad option value: one error line, not a traceback
