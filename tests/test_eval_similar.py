"""training/voices.py and eval's similar-voice protocols: the F0 estimator on signals of known pitch,
the pitch filter on trials (every target kept, only impostors of close pitch), and the scores."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from training import eval as ev
from training import voices

# Training-side tooling (scipy, librosa, the eval): not in the daemon's torch-free test run.
pytestmark = pytest.mark.torch

SR = 16000


def harmonic_tone(f0: float, seconds: float = 1.0, harmonics: int = 6) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, harmonics + 1))).astype(np.float32)


def glottal_pulses(f0: float, seconds: float = 1.0) -> np.ndarray:
    """A pulse train at `f0` (periods not a whole number of samples), low-passed like a voice source."""
    from scipy.signal import butter, sosfilt

    pulses = np.zeros(int(seconds * SR))
    pulses[(np.arange(0, seconds, 1 / f0) * SR).astype(int)] = 1.0
    return sosfilt(butter(4, 3000, fs=SR, output="sos"), pulses).astype(np.float32)


# ------------------------------------------------------------ F0


@pytest.mark.parametrize("f0", [75.0, 110.0, 150.0, 220.0, 330.0, 450.0])
def test_f0_of_harmonic_tone_and_pulse_train(f0):
    assert voices.median_f0([harmonic_tone(f0)]) == pytest.approx(f0, rel=0.005)
    assert voices.median_f0([glottal_pulses(f0)]) == pytest.approx(f0, rel=0.005)
    # Every frame of a steady periodic signal is voiced.
    assert not np.isnan(voices.frame_f0(harmonic_tone(f0))).any()


def test_f0_not_fooled_by_octave_or_a_missing_fundamental():
    # Harmonics 2-6 only: the period is still 1/f0, not 1/(2 f0).
    t = np.arange(SR) / SR
    no_fundamental = sum(np.sin(2 * np.pi * 120 * k * t) for k in range(2, 7))
    assert voices.median_f0([no_fundamental]) == pytest.approx(120, rel=0.01)


def test_noise_and_silence_have_no_f0():
    rng = np.random.default_rng(0)
    assert np.isnan(voices.median_f0([rng.standard_normal(SR).astype(np.float32) * 0.1]))
    assert np.isnan(voices.median_f0([np.zeros(SR, np.float32)]))
    assert voices.frame_f0(np.zeros(100, np.float32)).shape == (0,)  # shorter than one frame
    assert np.isnan(voices.median_f0([]))


def test_mains_hum_is_not_a_voice():
    # 50 and 60 Hz hum with harmonics (a recording's pauses): below F0_MIN_HZ, never taken as F0.
    for mains in (50.0, 60.0):
        assert np.isnan(voices.median_f0([harmonic_tone(mains, harmonics=4)]))


def test_median_over_clips_and_quiet_frames_unvoiced():
    # Two clips at 200 Hz and one at 100 Hz: the median over voiced frames is 200 Hz.
    assert voices.median_f0([harmonic_tone(200), harmonic_tone(200), harmonic_tone(100)]) == pytest.approx(200, rel=0.01)
    # A tone 50 dB below the loudest part of its clip is not counted.
    clip = np.concatenate([harmonic_tone(200), harmonic_tone(100) * 10 ** (-50 / 20)])
    f0 = voices.frame_f0(clip)
    assert np.nanmax(f0) == pytest.approx(200, rel=0.01) and np.isnan(f0[-50:]).all()


def test_semitones():
    assert voices.semitones_apart(100.0, 200.0) == pytest.approx(12.0)
    assert voices.semitones_apart(200.0, 100.0) == pytest.approx(12.0)
    assert voices.semitones_apart(100.0, 100 * 2 ** (2 / 12)) == pytest.approx(2.0)


@dataclass(frozen=True)
class _Utt:
    speaker: str
    path: Path


def test_speaker_f0_uses_each_speakers_first_clips_by_name():
    tones = {"a/1.wav": 100, "a/2.wav": 100, "a/3.wav": 100, "a/4.wav": 300, "b/1.wav": 220}
    utts = [_Utt(p.split("/")[0], Path(p)) for p in reversed(list(tones))]
    f0 = voices.speaker_f0(utts, lambda path: harmonic_tone(tones[str(path)], 0.5), clips=3)
    assert f0 == {"a": pytest.approx(100, rel=0.01), "b": pytest.approx(220, rel=0.01)}


# ------------------------------------------------------------ the trial filter

F0 = {"lo1": 100.0, "lo2": 110.0, "mid": 150.0, "hi": 300.0, "mute": float("nan")}  # lo1/lo2: 1.65 semitones


def test_close_voices_and_similar_pairs():
    close = voices.close_voices(F0, 2.0)
    got = close(np.array(["lo1", "lo1", "lo1", "lo2", "mute", "hi"]), np.array(["lo2", "mid", "hi", "lo1", "mute", "hi"]))
    assert got.tolist() == [True, False, False, True, False, True]
    assert [(a, b) for a, b, _ in voices.similar_speaker_pairs(F0, 2.0)] == [("lo1", "lo2")]
    assert len(voices.similar_speaker_pairs(F0, 7.1)) == 3  # lo1-lo2, lo1-mid (7.02), lo2-mid (5.37)


def _clustered(speakers: list[str], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = {s: rng.standard_normal(16) for s in dict.fromkeys(speakers)}
    return np.stack([centre[s] + 0.3 * rng.standard_normal(16) for s in speakers])


def test_pairs_filter_keeps_targets_and_only_close_impostors():
    speakers = [s for s in F0 for _ in range(3)]
    emb = _clustered(speakers)
    close = voices.close_voices(F0, 2.0)
    all_s, all_l = ev.pairs_trials(emb, speakers)
    s, l = ev.pairs_trials(emb, speakers, impostors=close)
    assert l.sum() == all_l.sum() == 5 * 3  # every target pair kept
    assert (~l).sum() == 3 * 3  # the lo1 x lo2 clip pairs, nothing else
    kept_targets = np.sort(s[l]) == np.sort(all_s[all_l])
    assert kept_targets.all()
    # The kept impostor scores are exactly the lo1 x lo2 ones.
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    lo = e[0:3] @ e[3:6].T
    assert np.allclose(np.sort(s[~l]), np.sort(lo.ravel()))


def test_enroll_filter_keeps_targets_and_only_close_impostors():
    speakers = [s for s in F0 for _ in range(5)]  # 3 enrollment + 2 test clips each
    names = [f"{i % 5}.wav" for i in range(len(speakers))]
    emb = _clustered(speakers, seed=1)
    all_s, all_l = ev.enroll_trials(emb, speakers, names)
    s, l = ev.enroll_trials(emb, speakers, names, impostors=voices.close_voices(F0, 2.0))
    assert len(all_s) == 10 * 5 and all_l.sum() == 10
    assert l.sum() == 10  # every target trial
    assert (~l).sum() == 2 + 2  # lo1's 2 tests vs lo2's profile and lo2's 2 tests vs lo1's
    assert np.allclose(np.sort(s[l]), np.sort(all_s[all_l]))


def test_score_set_similar_protocols_and_counts():
    speakers = [s for s in F0 for _ in range(5)]
    utts = [_Utt(spk, Path(f"{spk}/{i % 5}.wav")) for i, spk in enumerate(speakers)]
    system = ev.System("x", None)
    emb = _clustered(speakers, seed=2)
    plain = ev.score_set(system, emb, utts)
    row = ev.score_set(system, emb, utts, impostors=voices.close_voices(F0, 2.0))
    assert row["pairs_eer"] == plain["pairs_eer"] and row["enroll_eer"] == plain["enroll_eer"]
    assert row["pairs_impostors"] == 300 - 50 and row["pairs_similar_impostors"] == 25
    assert row["enroll_impostors"] == 40 and row["enroll_similar_impostors"] == 4
    # No two speakers within 0.1 semitone: the similar protocols have no impostor, EER undefined.
    none = ev.score_set(system, emb, utts, impostors=voices.close_voices(F0, 0.1))
    assert np.isnan(none["pairs_similar_eer"]) and np.isnan(none["enroll_similar_eer"])
    assert none["pairs_similar_impostors"] == 0


def test_similar_protocols_catch_a_model_that_merges_close_voices():
    # A "model" that maps lo1 and lo2 to the same point: the normal EER barely notices (their
    # impostor trials are few among all), the similar-voice EER does.
    speakers = [s for s in F0 for _ in range(5)]
    rng = np.random.default_rng(3)
    centre = {s: rng.standard_normal(16) for s in F0}
    centre["lo2"] = centre["lo1"]
    emb = np.stack([centre[s] + 0.3 * rng.standard_normal(16) for s in speakers])
    utts = [_Utt(spk, Path(f"{spk}/{i % 5}.wav")) for i, spk in enumerate(speakers)]
    row = ev.score_set(ev.System("x", None), emb, utts, impostors=voices.close_voices(F0, 2.0))
    assert row["enroll_similar_eer"] > 3 * max(row["enroll_eer"], 1.0)


def test_ratio_summary_similar_protocols_skip_undefined_cells():
    rows = []
    for system, e in (("student", 2.0), ("teacher", 1.0)):
        for cell, sim in (("a", 4.0 if system == "student" else 2.0), ("b", float("nan"))):
            rows.append({"system": system, "set": cell, "condition": "clean", "duration": "full",
                         "pairs_eer": e, "enroll_eer": e, "pairs_similar_eer": sim, "enroll_similar_eer": sim})
    summary = {s["protocol"]: s for s in ev.ratio_summary(rows)}
    assert set(summary) == {"enroll", "pairs", "enroll_similar", "pairs_similar"}
    assert summary["enroll_similar"]["cells"] == 1 and summary["enroll_similar"]["mean"] == pytest.approx(2.0)
    assert summary["enroll_similar"]["undefined"] == []
    assert summary["enroll"]["cells"] == 2


def test_markdown_similar_shows_counts_and_both_eers():
    row = {"system": "s", "set": "x", "condition": "clean", "duration": "full", "pairs_eer": 1.0, "enroll_eer": 2.0,
           "pairs_similar_eer": 3.0, "enroll_similar_eer": 4.0, "pairs_impostors": 100, "pairs_similar_impostors": 10,
           "enroll_impostors": 50, "enroll_similar_impostors": 5}
    table = ev.markdown_similar([row])
    assert "| x | clean | full | 10 of 100 / 5 of 50 | 1.00 / 3.00 | 2.00 / 4.00 |" in table


@pytest.mark.parametrize("value", ["0", "-1", "30"])
def test_eval_similar_option_refuses_bad_semitones(value, capsys):
    pytest.importorskip("torch")
    with pytest.raises(SystemExit) as exc:
        ev.main(["--systems", "mfcc", "--similar", value])
    assert str(exc.value).startswith("error: --similar")


def test_similar_summary_lines_mean_ratio_and_left_out_cells():
    rows = [{"system": "s", "set": k, "condition": "clean", "duration": "full", "pairs_eer": e, "enroll_eer": e,
             "pairs_similar_eer": sim, "enroll_similar_eer": sim}
            for k, e, sim in (("a", 2.0, 4.0), ("b", 1.0, 1.0), ("c", 0.0, 1.0), ("d", 3.0, float("nan")))]
    lines = ev.similar_summary_lines(rows)
    assert lines[0].startswith("s enroll: similar-voice EER / all-impostor EER, mean 1.50 (median 1.50, max 2.00) over 2 cells")
    assert lines[0].endswith("2 left out (EER 0 or no similar pair)")


def test_eer_threshold_is_the_eer_operating_point():
    scores = np.array([0.9, 0.8, 0.3, 0.5, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0], bool)
    threshold = ev.eer_threshold(scores, labels)
    # Accepting >= it: one of three targets missed (0.3), no impostor accepted; the mean is eer().
    miss = np.mean(scores[labels] < threshold)
    false_alarm = np.mean(scores[~labels] >= threshold)
    assert (miss + false_alarm) / 2 == pytest.approx(ev.eer(scores, labels))
    assert ev.eer_threshold(np.array([0.9, 0.1]), np.array([True, False])) == 0.9  # separable: the lowest target


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed")
def test_demo_voices_pitch_and_cosines_with_the_shipped_model(tmp_path):
    from streamsv.embedder import load_embedder

    pitch, cos = voices.demo_voice_cosines(load_embedder(), tmp_path)
    assert set(cos) == {("ada", "bob"), ("ada", "stranger"), ("bob", "stranger")}
    assert all(-1.0 <= c <= 1.0 for c in cos.values())
    # espeak-ng's settings: ada a high voice (-p 65), bob the lowest (-p 30), the stranger between.
    assert pitch["ada"] > pitch["stranger"] > pitch["bob"]
    assert voices.semitones_apart(pitch["ada"], pitch["bob"]) > 12


# ------------------------------------------------------------ resampled self (real data)

needs_data = pytest.mark.skipif(__import__("training.datasets", fromlist=["x"]).data_root(required=False) is None,
                                reason="shared data not present")


@needs_data
def test_resample_tests_never_take_a_profile_clip():
    from training import datasets

    utts = datasets.dev_set("librispeech-test-other")
    tests = voices.resample_tests("librispeech-test-other", 2)
    assert len(tests) == 2 * len({u.speaker for u in utts})
    for i in tests:
        same = [u.path.name for u in utts if u.speaker == utts[i].speaker]
        assert utts[i].path.name not in sorted(same)[: ev.ENROLL_UTTERANCES]


@needs_data
def test_resampled_self_clean_acceptance_matches_the_enroll_protocol(monkeypatch, tmp_path):
    from training import datasets

    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path)  # the MFCC statistics of 100 clips: seconds
    set_name = "librispeech-test-other"
    utts = datasets.dev_set(set_name)
    tests = voices.resample_tests(set_name, 2)
    system = ev.mfcc_system()
    shifted = {3.0: [datasets.read_audio(utts[i].path)[: 3 * SR] for i in tests]}
    got = voices.resampled_self(system, set_name, shifted, tests)
    # The clean entry is the enroll protocol's own target trials for those clips, at its EER threshold.
    emb = ev.embeddings(system, set_name, "clean", "full", utts, None, use_cache=True)
    scores, labels = ev.enroll_trials(emb, [u.speaker for u in utts], [u.path.name for u in utts])
    assert got["threshold"] == pytest.approx(ev.eer_threshold(scores, labels))
    profiles = sorted({u.speaker for u in utts})
    tested = [i for i in range(len(utts)) if i not in
              {j for s in profiles for j in [k for k, u in enumerate(utts) if u.speaker == s][: ev.ENROLL_UTTERANCES]}]
    target_scores = scores.reshape(len(tested), len(profiles))[
        [tested.index(i) for i in tests], [profiles.index(utts[i].speaker) for i in tests]]
    assert got[0.0][0] == pytest.approx(np.mean(target_scores >= got["threshold"]))
    assert got[0.0][1] == pytest.approx(np.mean(target_scores), abs=1e-5)
    assert 0.0 <= got[3.0][0] <= 1.0 and -1.0 <= got[3.0][1] <= 1.0


def test_resampled_whole_moves_the_pitch_by_the_semitones():
    from training.train import resample_by

    t = np.arange(2 * 16000) / 16000
    out = voices.resampled_whole(np.sin(2 * np.pi * 200 * t), 12.0, resample_by)
    assert abs(len(out) - 16000) <= 2
    peak = np.fft.rfftfreq(len(out), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(out)))]
    assert peak == pytest.approx(400, abs=3)
