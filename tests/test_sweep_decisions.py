"""tools/sweep_decisions.py: a recorded pipeline run replays to the same decisions with the
pipeline's own scoring, and re-decides with another policy. Shipped model, no shared data needed."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import with_pauses
from streamsv.config import Config
from streamsv.scoring import unit
from tools import sweep_decisions as sd

RECORDED = {"scoring.smoothing_hops": 3, "scoring.min_margin": 0.05, "scoring.threshold": 0.3}


@pytest.fixture(scope="module")
def recording(untrained, speech_clips):
    audio, _ = with_pauses(speech_clips, pause_s=0.4)
    profiles = {"first": untrained.embed(speech_clips[0]), "other": untrained.embed(speech_clips[1][::-1].copy())}
    return sd.record(untrained, audio, None, RECORDED, profiles)


def decisions(events):
    return [(e["speaker"], e["accepted"]) for e in events if e["event"] == "decision"]


def test_replay_with_the_pipelines_scoring_gives_its_decisions_back(recording):
    scoring = Config().with_overrides(**RECORDED).scoring
    assert len(decisions(recording.events)) >= 5
    assert decisions(sd.replay(recording, scoring, {})) == decisions(recording.events)
    sd.check_replay([recording], scoring)   # does not stop


def test_replay_re_decides_and_the_check_catches_a_wrong_replay(recording):
    scoring = Config().with_overrides(**RECORDED).scoring
    none = sd.replay(recording, dataclasses.replace(scoring, threshold=1.0), {})
    assert all(not accepted for _, accepted in decisions(none))
    every = sd.replay(recording, dataclasses.replace(scoring, threshold=-1.0, min_margin=0.0), {})
    assert all(accepted for _, accepted in decisions(every))
    # A replay that does not reset where the pipeline resets (or scores other windows) disagrees.
    shuffled = dataclasses.replace(recording, embeddings=[np.roll(e, 7) for e in recording.embeddings])
    with pytest.raises(SystemExit, match="disagrees"):
        sd.check_replay([shuffled], scoring)


def test_policy_keys_are_checked():
    assert sd.split_policy({"threshold": 0.5, "alpha": 0.6}) == ({"threshold": 0.5}, {"alpha": 0.6})
    with pytest.raises(SystemExit, match="unknown policy key"):
        sd.split_policy({"thresold": 0.5})


def test_compare_counts_cells_won_tied_and_lost():
    def part(room, right):
        return {"room": room, "dev_set": "asc", "right": right, "decisions": 10}

    text = sd.compare_cells(("old", [part("quiet", 5), part("tv", 5), part("babble", 7)]),
                            ("new", [part("quiet", 6), part("tv", 5), part("babble", 4)]))
    assert "3 cells): better 1, equal 1, worse 1" in text
    assert "worse: babble, asc: 0.700 -> 0.400 (10 decisions)" in text
    assert "lowest cell: old 0.500, new 0.400" in text


def test_closeness_raises_the_bar_of_a_voice_near_another_profile(recording):
    scoring = dataclasses.replace(Config().with_overrides(**RECORDED).scoring, smoothing_hops=1, min_margin=0.0)
    plain = decisions(sd.replay(recording, scoring, {}))
    near = float(recording.centroids["first"] @ recording.centroids["other"]
                 / np.linalg.norm(recording.centroids["first"]) / np.linalg.norm(recording.centroids["other"]))
    assert any(accepted for _, accepted in plain)
    # The profiles' own cosine at or under `near`: no change. Far above it: no name is said.
    assert decisions(sd.replay(recording, scoring, {"closeness": 5.0, "near": near + 1e-6})) == plain
    silenced = decisions(sd.replay(recording, scoring, {"closeness": 5.0, "near": near - 1.0}))
    assert not any(accepted for _, accepted in silenced) and len(silenced) == len(plain)


def test_cohort_weight_takes_each_sides_cohort_mean_off_the_scores(recording):
    """A cohort of the two profiles themselves, top 1: a window's cohort mean is its best raw score
    and each profile's is 1, so a name is said exactly where score - w * (best + 1) / 2 clears the bar."""
    scoring = dataclasses.replace(Config().with_overrides(**RECORDED).scoring, smoothing_hops=1, min_margin=0.0,
                                  threshold=-0.2, duration_slope=0.0)
    cohort = np.stack(list(recording.centroids.values()))
    weight = 0.8
    got = decisions(sd.replay(recording, scoring, {"cohort_weight": weight, "top_k": 1, "_cohort": cohort}))
    want = []
    for emb in recording.embeddings:
        raw = {n: float(unit(emb) @ unit(c)) for n, c in recording.centroids.items()}
        best = max(raw, key=raw.get)
        ok = raw[best] - weight * (raw[best] + 1) / 2 >= scoring.threshold
        want.append((best if ok else None, ok))
    assert got == want
    assert len(set(got)) > 1   # some named, some not: the bar sits inside the shifted scores


def test_center_takes_the_cohorts_mean_off_both_sides_before_the_cosine(recording):
    scoring = dataclasses.replace(Config().with_overrides(**RECORDED).scoring, smoothing_hops=1, min_margin=0.0,
                                  duration_slope=0.0)
    cohort = np.stack([unit(c) for c in recording.centroids.values()])
    mean = cohort.mean(axis=0)
    want = []
    for emb in recording.embeddings:
        raw = {n: float(unit(unit(emb) - mean) @ unit(unit(c) - mean)) for n, c in recording.centroids.items()}
        best = max(raw, key=raw.get)
        want.append((best if raw[best] >= scoring.threshold else None, raw[best] >= scoring.threshold))
    got = decisions(sd.replay(recording, scoring, {"center": 1.0, "_cohort": cohort}))
    assert got == want
    assert got != decisions(sd.replay(recording, scoring, {}))   # centring changed some decision
