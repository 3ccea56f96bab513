"""tools/bench_detection.py's bookkeeping: the Picovoice-style frame trace, profiles enrolled
once per system and household, and talk composed once for every room. No torch needed."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest

from tools import bench_detection as bd
from tools import make_conversations as mc


def test_detection_trace_holds_decisions_until_the_next_event():
    events = [
        {"event": "speech_start", "t": 0.2},
        {"event": "decision", "t": 1.2, "accepted": True, "speaker": "target"},
        {"event": "decision", "t": 1.7, "accepted": False, "speaker": None},
        {"event": "decision", "t": 2.2, "accepted": True, "speaker": "target"},
        {"event": "speech_end", "t": 2.5},
    ]
    trace = bd.detection_trace(events, 300, frame_s=0.01)
    on = np.flatnonzero(trace)
    assert trace[120:170].all() and trace[220:250].all()
    assert len(on) == 50 + 30
    assert bd.detection_trace(events, 30).sum() == 5 + 4   # the default grid: Picovoice's 96 ms frames (12-16, 22-25)


def test_truth_frames():
    conv = mc.Conversation("c", "a", [], [mc.Turn("a", 0.5, 1.5, ""), mc.Turn("b", 2.0, 3.0, "")], 4.0)
    truth = mc.truth_frames(conv, 0.01)
    assert truth.sum() == 100 and truth[50:150].all()
    assert mc.truth_frames(conv, 0.01, "b")[200:300].all()


def test_profiles_are_enrolled_once_per_system_and_household(monkeypatch):
    calls = []
    monkeypatch.setattr(bd, "enroll_household", lambda system, conv: calls.append((system, conv.name)) or {"a": conv.name})
    first = mc.Conversation("quiet-x", "a", [], [], 1.0, enrolled={"a": ["1.wav"], "b": ["2.wav"]})
    same_in_another_room = mc.Conversation("tv-x", "a", [], [], 1.0, enrolled={"b": ["2.wav"], "a": ["1.wav"]})
    other = mc.Conversation("quiet-y", "a", [], [], 1.0, enrolled={"a": ["3.wav"], "b": ["2.wav"]})
    student, teacher = object(), object()
    profiles = bd.Profiles()
    assert profiles.of(student, first) == profiles.of(student, same_in_another_room) == {"a": "quiet-x"}
    profiles.of(student, other)
    profiles.of(teacher, first)
    assert calls == [(student, "quiet-x"), (student, "quiet-y"), (teacher, "quiet-x")]


def test_latency_variants_reach_the_pipeline_through_the_system_overrides(monkeypatch):
    import streamsv.bench as sb

    seen = []
    monkeypatch.setattr(sb, "measure", lambda emb, wave, rt, clock, warm, overrides: seen.append(overrides) or
                        {"rtf": 0.01, "hop_p95_ms": 1.0, "latency_p50_ms": 2.0, "latency_p95_ms": 3.0})
    monkeypatch.setattr("tools.bench.dev_speech", lambda seconds: (np.zeros(16000, np.float32), "zeros"))
    out = bd.latency_table({"a": {}, "b": {"change.enabled": False}}, rounds=2)
    assert seen == [{}, {"change.enabled": False}] * 2
    assert "| latency_p95_ms | 3 | 3 |" in out


@pytest.mark.skipif(bd.datasets.data_root(required=False) is None, reason="shared data not present")
def test_talk_composed_once_is_the_talk_built_for_each_room():
    mc.talks.cache_clear()
    for condition in ("floor-50", "babble"):
        (audio, conv), *_ = mc.conversations(condition, "tuning", 1)
        set_name, voices, pool, others = mc.households("tuning", 1)[0]
        n_enroll = {v: mc.enroll_count(pool[v]) for v in voices[: mc.ENROLLED]}
        built, truth = mc.build(voices, pool, 0, condition, others, "tuning", n_enroll=n_enroll)
        assert np.array_equal(audio, built) and conv.name == f"{condition}-tuning-0"
        assert conv.dev_set == set_name and conv == dataclasses.replace(truth, dev_set=set_name)
    assert mc.talks.cache_info().misses == 1


def test_decisions_are_scored_per_dev_set_with_urdu_beside_read_english():
    # Issue 9: the live accuracy on urdu households is printed beside the read-English ones.
    def conv(dev_set: str) -> mc.Conversation:
        return mc.Conversation(f"quiet-{dev_set}", "a", [], [mc.Turn("a", 0.0, 2.0, ""), mc.Turn("c", 2.5, 4.5, "")],
                               5.0, enrolled={"a": ["1.wav"]}, dev_set=dev_set)

    def events(right_in_second_turn: bool) -> list[dict]:
        return [{"event": "speech_start", "t": 0.0},
                {"event": "decision", "t": 1.0, "accepted": True, "speaker": "a"},
                {"event": "decision", "t": 3.5, "accepted": right_in_second_turn is False, "speaker": None
                 if right_in_second_turn else "a"}]

    parts = {"student": [dict(bd.score_conversation(events(True), conv("librispeech-test-other")), cpu_s=0, audio_s=5),
                         dict(bd.score_conversation(events(False), conv("urdu")), cpu_s=0, audio_s=5)]}
    text = bd.by_set_table(parts)
    assert "| librispeech-test-other | 1.000 (2) |" in text
    assert "| urdu | 0.500 (2) |" in text
    assert "speechocean-dev" not in text   # sets the run did not hear are left out


def test_a_continuing_speech_start_is_no_boundary_but_a_change_after_it_is():
    conv = mc.Conversation("quiet-x", "a", [], [mc.Turn("a", 0.5, 3.0, ""), mc.Turn("c", 3.4, 6.0, ""),
                                                 mc.Turn("a", 6.3, 8.0, "")], 8.5, enrolled={"a": ["1.wav"]})
    events = [{"event": "speech_start", "t": 0.45},
              {"event": "speech_end", "t": 1.5},
              {"event": "speech_start", "t": 1.9, "continues": True, "gap_s": 0.4},    # a pause inside turn 1
              {"event": "speech_end", "t": 3.1},
              {"event": "speech_start", "t": 3.35, "continues": True, "gap_s": 0.25},  # turn 2, bridged...
              {"event": "speaker_change", "t": 4.4, "at": 3.35, "similarity": 0.1},    # ...and found
              {"event": "speech_end", "t": 6.1},
              {"event": "speech_start", "t": 6.35, "continues": True, "gap_s": 0.25}]  # turn 3, bridged, missed
    part = bd.score_conversation(events, conv)
    assert part["boundaries_pred"] == 2 and part["boundaries_hit"] == 2 and part["continued"] == 3
    assert part["false_splits"] == 0
    t = bd.totals([dict(part, cpu_s=0.0, audio_s=8.5)])
    assert t["boundary_precision"] == 1.0 and t["missed_boundaries"] == 1 and t["segments_continued"] == 3


def test_decision_latency_p95_comes_from_the_decisions_own_latency():
    conv = mc.Conversation("quiet-x", "a", [], [mc.Turn("a", 0.0, 30.0, "")], 30.0, enrolled={"a": ["1.wav"]})
    events = [{"event": "decision", "t": 1.0 + i * 0.5, "accepted": True, "speaker": "a", "latency_ms": float(i)}
              for i in range(1, 21)]
    t = bd.totals([dict(bd.score_conversation(events, conv), cpu_s=0.0, audio_s=30.0)])
    assert t["decision_latency_p95_ms"] == 19.1
    assert bd.totals([dict(bd.score_conversation(events[:0], conv), cpu_s=0.0, audio_s=30.0)])["decision_latency_p95_ms"] is None


def test_wrong_decisions_are_counted_by_kind_and_by_how_early_they_came():
    conv = mc.Conversation("quiet-x", "a", [], [mc.Turn("a", 0.0, 4.0, ""), mc.Turn("c", 4.5, 8.0, "")], 8.5,
                           enrolled={"a": ["1.wav"], "b": ["2.wav"]}, dev_set="urdu")
    decisions = [(1.0, True, "a"),     # right
                 (1.2, False, None),   # a left unknown, early
                 (3.0, True, "b"),     # a named as b, late
                 (5.0, True, "a"),     # the stranger accepted, early
                 (7.0, False, None)]   # the stranger left unknown: right
    events = [{"event": "decision", "t": t, "accepted": ok, "speaker": who} for t, ok, who in decisions]
    part = dict(bd.score_conversation(events, conv), cpu_s=0, audio_s=8.5)
    figures = bd.totals([part])
    assert figures["in_turn_accuracy"] == 0.4
    assert (figures["stranger_accepted_share"], figures["enrolled_unknown_share"],
            figures["enrolled_confused_share"], figures["wrong_early_share"]) == (0.2, 0.2, 0.2, 0.4)


def _household(household: int, right: int, decisions: int = 100, hit: int = 8) -> dict:
    return {"household": household, "right": right, "decisions": decisions,
            "boundaries_hit": hit, "boundaries_pred": 10, "boundaries_true": 10}


def test_household_spread_tells_a_steady_gain_from_household_noise():
    """Paired over households: a variant one decision in a hundred righter in every household gets
    an interval of exactly +0.01, though the households themselves range from 0.5 to 0.9; a
    variant that wins in some households and loses in others gets an interval around 0."""
    base_rights = [50, 90, 60, 80, 70, 55, 85, 65]
    per_system = {
        "base": [_household(h, r) for h, r in enumerate(base_rights)],
        "steady": [_household(h, r + 1) for h, r in enumerate(base_rights)],
        "mixed": [_household(h, r + (5 if h % 2 else -5)) for h, r in enumerate(base_rights)],
    }
    spread = bd.household_spread(per_system, resamples=500)
    value, low, high = spread["base"]["in_turn_accuracy"]
    assert value == pytest.approx(555 / 800, abs=1e-4) and low < 0.62 and high > 0.76          # the households' own spread
    assert spread["steady"]["in_turn_accuracy-"] == (0.01, 0.01, 0.01)
    value, low, high = spread["mixed"]["in_turn_accuracy-"]
    assert value == 0.0 and low < 0 < high
    assert spread["base"]["boundary_f1"][:1] == (0.8,) and "boundary_f1-" not in spread["base"]
    table = bd.spread_table(spread)
    assert "| steady | 0.704 [" in table and "+0.010 [+0.010, +0.010]" in table


def test_a_household_keeps_its_rooms_in_the_spread():
    """Rooms of one household are summed before resampling: two rooms of household 0 count as one draw."""
    sums = bd.household_sums([_household(0, 50), _household(1, 90), _household(0, 70)])
    assert list(sums["right"]) == [120, 90] and list(sums["decisions"]) == [200, 100]
