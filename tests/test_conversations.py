"""The live-room conversation benchmark's bookkeeping (tools/make_conversations.py, tools/bench_detection.py):
its rooms' levels and its scoring, on synthetic input (no shared data needed)."""

import numpy as np
import pytest

from tools import bench_detection as bd
from tools import make_conversations as mc

SR = 16000


def rms_dbfs(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("colour", ["white", "brown", "hum"])
@pytest.mark.parametrize("dbfs", [-60, -50, -40])
def test_noise_floors_are_at_their_level(colour, dbfs):
    rng = np.random.default_rng(0)
    floor = mc.noise_floor(SR * 4, dbfs, colour, rng)
    assert rms_dbfs(floor) == pytest.approx(dbfs, abs=0.1)


def test_brown_noise_is_low_heavy_and_hum_sits_on_the_mains():
    rng = np.random.default_rng(0)
    freqs = np.fft.rfftfreq(SR * 2, 1 / SR)
    brown = np.abs(np.fft.rfft(mc.coloured_noise("brown", SR * 2, rng))) ** 2
    assert brown[(freqs > 20) & (freqs < 500)].sum() > 10 * brown[freqs > 2000].sum()
    hum = np.abs(np.fft.rfft(mc.coloured_noise("hum", SR * 2, rng))) ** 2
    assert freqs[np.argmax(hum)] == pytest.approx(mc.MAINS_HZ, abs=1)


def assert_cut_to_speech(out: np.ndarray, speech: np.ndarray) -> None:
    """The trimmed clip holds the speech and no more than the trim's margins and a frame each side."""
    assert len(speech) <= len(out) <= len(speech) + 2 * mc.TRIM_MARGIN_S * SR + 2 * mc.TRIM_FRAME_S * SR


def test_trim_cuts_the_silence_around_a_clip():
    rng = np.random.default_rng(0)
    speech = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    padded = np.concatenate([np.zeros(SR // 2, np.float32), speech, np.zeros(SR, np.float32)])
    out = mc.trim(padded)
    assert_cut_to_speech(out, speech)


def test_trim_cuts_a_recordings_own_hiss_and_click_before_the_voice():
    # A read clip as speechocean762 has them: hiss 30 dB under the voice (inside the old
    # peak-relative bar), a record button's click, half a second of hiss, then the voice.
    rng = np.random.default_rng(0)

    def hiss(n: int) -> np.ndarray:
        return (0.001 * rng.standard_normal(n)).astype(np.float32)

    click = (0.02 * rng.standard_normal(int(0.02 * SR))).astype(np.float32)
    speech = (0.03 * rng.standard_normal(SR)).astype(np.float32)
    lead = np.concatenate([hiss(SR // 10), click, hiss(SR // 2)])
    out = mc.trim(np.concatenate([lead, speech, hiss(SR // 2)]))
    assert_cut_to_speech(out, speech)


def conv():
    turns = [mc.Turn("alice", 0.5, 3.0, ""), mc.Turn("stranger", 3.2, 6.0, ""), mc.Turn("bob", 5.8, 9.0, "")]
    return mc.Conversation("c", "alice", [], turns, 10.0, "quiet", "reporting", {"alice": [], "bob": []})


def test_boundaries_pair_one_to_one_within_the_tolerance():
    assert bd.match_boundaries([0.5, 0.55, 3.0], [0.5, 3.2]) == 2     # 0.55 has no partner left
    assert bd.match_boundaries([1.0], [0.5]) == 0
    assert bd.match_boundaries([], [0.5]) == 0


def test_decisions_are_judged_inside_one_turn_only():
    c = conv()
    assert bd.owner(c, 1.0).speaker == "alice"
    assert bd.owner(c, 5.9) is None          # bob talks over the stranger
    assert bd.owner(c, 3.1) is None          # the gap
    enrolled = {"alice", "bob"}
    assert bd.right({"accepted": True, "speaker": "alice"}, c.turns[0], enrolled)
    assert not bd.right({"accepted": True, "speaker": "bob"}, c.turns[0], enrolled)
    assert not bd.right({"accepted": False, "speaker": None}, c.turns[0], enrolled)
    assert bd.right({"accepted": False, "speaker": None}, c.turns[1], enrolled)
    assert not bd.right({"accepted": True, "speaker": "alice"}, c.turns[1], enrolled)


def test_score_of_a_conversation():
    events = [
        {"event": "speech_start", "t": 0.45},
        {"event": "decision", "t": 1.5, "accepted": False, "speaker": None},      # wrong (alice)
        {"event": "decision", "t": 2.0, "accepted": True, "speaker": "alice"},    # right, 1.5 s in
        {"event": "speaker_change", "t": 4.0, "at": 3.3, "similarity": 0.1},      # a true boundary
        {"event": "decision", "t": 4.5, "accepted": False, "speaker": None},      # right (stranger)
        {"event": "speaker_change", "t": 5.0, "at": 4.4, "similarity": 0.3},      # a false split
        {"event": "decision", "t": 5.9, "accepted": True, "speaker": "bob"},      # in the overlap: not judged
        {"event": "decision", "t": 7.0, "accepted": True, "speaker": "bob"},      # right, 1.2 s in
        {"event": "speech_end", "t": 9.1},
    ]
    s = bd.score_conversation(events, conv())
    assert (s["decisions"], s["right"]) == (4, 3)
    assert s["first_correct"] == [pytest.approx(1.5), pytest.approx(1.3), pytest.approx(1.2)]
    assert (s["boundaries_true"], s["boundaries_pred"], s["boundaries_hit"]) == (3, 3, 2)
    assert (s["changes"], s["false_splits"]) == (2, 1)
    t = bd.totals([{**s, "cpu_s": 0.1, "audio_s": 10.0}])
    assert t["in_turn_accuracy"] == 0.75
    assert t["boundary_precision"] == pytest.approx(2 / 3, abs=1e-4) and t["boundary_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert t["missed_boundaries"] == 1 and t["first_correct_median_s"] == 1.3
    # Picovoice-style frames: alice detected from 2.0 until the change at 4.0, bob from 5.9 on.
    assert 0 < t["detection_accuracy"] < 100 and t["detection_error_rate"] > 0


def test_variant_specs_parse():
    assert bd._parse_variant("x:change.threshold=0.4,vad.engine=silero") == (
        "x", {"change.threshold": 0.4, "vad.engine": "silero"})
    with pytest.raises(SystemExit):
        bd._parse_variant("x:change.threshold")


@pytest.mark.skipif(bd.datasets.data_root(required=False) is None, reason="shared data not present")
def test_model_spec_needs_a_label_and_a_path_and_an_existing_model():
    from streamsv.errors import StreamsvError

    with pytest.raises(SystemExit, match="^error: --model 'runs/x.onnx': expected LABEL=PATH"):
        bd.main(["--no-teacher", "--model", "runs/x.onnx"])
    with pytest.raises(StreamsvError, match="model file not found"):
        bd.main(["--no-teacher", "--model", "new=runs/does-not-exist/student.onnx"])
