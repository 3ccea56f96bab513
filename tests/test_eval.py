"""training/eval.py: metrics on hand-worked trials, protocols, deterministic conditions, and the
README's reference figures reproduced on real data (skipped without data / resemblyzer)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")    # training/eval.py runs the torch teacher and student: training-side tooling
pytestmark = pytest.mark.torch
from training import datasets  # noqa: E402
from training import eval as ev  # noqa: E402
from training import teacher  # noqa: E402

HAVE_DATA = datasets.data_root(required=False) is not None
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="shared data (../shared/data or $STREAMSV_DATA) not present")
needs_teacher = pytest.mark.skipif(not teacher.available(), reason="resemblyzer/librosa not installed (tools/install-train-deps.sh)")


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


# ------------------------------------------------------------ metrics


def test_eer_separable_is_zero_and_inverted_is_one():
    labels = np.array([1, 1, 1, 0, 0, 0], bool)
    assert ev.eer(np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), labels) == 0.0
    assert ev.eer(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), labels) == 1.0


def test_eer_hand_worked():
    # One target (0.3) below one non-target (0.5): at any threshold between them 1 of 3
    # targets is missed and 0 of 3 non-targets accepted, or vice versa; the curves meet at 1/3.
    scores = np.array([0.9, 0.8, 0.3, 0.5, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0], bool)
    assert ev.eer(scores, labels) == pytest.approx(1 / 3)


def test_eer_is_order_invariant_and_matches_random_chance():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(20000)
    labels = rng.random(20000) < 0.3
    assert ev.eer(scores, labels) == pytest.approx(0.5, abs=0.02)
    perm = rng.permutation(20000)
    assert ev.eer(scores[perm], labels[perm]) == ev.eer(scores, labels)


def test_eer_gaussian_matches_theory():
    # Targets N(+d/2, 1), non-targets N(-d/2, 1): EER = Phi(-d/2).
    from math import erf, sqrt

    rng = np.random.default_rng(1)
    d = 2.0
    scores = np.concatenate([rng.normal(d / 2, 1, 50000), rng.normal(-d / 2, 1, 50000)])
    labels = np.concatenate([np.ones(50000, bool), np.zeros(50000, bool)])
    expected = 0.5 * (1 + erf((-d / 2) / sqrt(2)))
    assert ev.eer(scores, labels) == pytest.approx(expected, abs=0.005)


def test_min_dcf_hand_worked():
    labels = np.array([1, 1, 1, 0, 0, 0], bool)
    assert ev.min_dcf(np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), labels) == 0.0
    # Fully inverted: the best is a trivial system (reject all) whose normalised cost is 1.
    assert ev.min_dcf(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), labels) == pytest.approx(1.0)
    # A non-target on top: accepting it costs 0.99 * 1/3 / 0.01 = 33, so rejecting all (1.0) wins.
    scores = np.array([0.9, 0.8, 0.3, 0.95, 0.2, 0.1])
    assert ev.min_dcf(scores, labels) == pytest.approx(1.0)
    # A target above it: accepting only that one misses 2/3 of targets, cost 0.01 * 2/3 / 0.01.
    scores = np.array([0.99, 0.8, 0.3, 0.95, 0.2, 0.1])
    assert ev.min_dcf(scores, labels) == pytest.approx(2 / 3)


def test_metrics_need_both_kinds_of_trial():
    with pytest.raises(ValueError):
        ev.eer(np.array([0.1, 0.2]), np.array([True, True]))


# ------------------------------------------------------------ protocols


def _toy(n_spk=4, per=5, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_spk, dim)) * 3
    emb = np.concatenate([centres[s] + rng.standard_normal((per, dim)) for s in range(n_spk)])
    speakers = [f"s{s}" for s in range(n_spk) for _ in range(per)]
    names = [f"u{k:02d}.wav" for _ in range(n_spk) for k in range(per)]
    return emb, speakers, names


def test_pairs_protocol_counts():
    emb, speakers, _ = _toy()
    scores, labels = ev.pairs_trials(emb, speakers)
    n = len(emb)
    assert len(scores) == n * (n - 1) // 2
    assert labels.sum() == 4 * (5 * 4 // 2)
    assert np.all(np.abs(scores) <= 1 + 1e-6)


def test_enroll_protocol_uses_first_three_by_name_regardless_of_order():
    emb, speakers, names = _toy()
    scores, labels = ev.enroll_trials(emb, speakers, names)
    assert len(scores) == 4 * (5 - 3) * 4  # tests x profiles
    assert labels.sum() == 4 * (5 - 3)
    perm = np.random.default_rng(3).permutation(len(emb))
    s2, l2 = ev.enroll_trials(emb[perm], [speakers[i] for i in perm], [names[i] for i in perm])
    assert sorted(zip(s2.round(6), l2)) == sorted(zip(scores.round(6), labels))


def test_enroll_profile_is_renormalised_mean_of_unit_vectors():
    # Speaker a enrolls on three vectors of very different norms; the profile must weigh them equally.
    emb = np.array([[100.0, 0], [0, 1.0], [0, 1.0], [1.0, 1.0], [-1.0, 0], [-1.0, 0], [-1.0, 0], [-1.0, 0.1]])
    speakers = ["a"] * 4 + ["b"] * 4
    names = ["1", "2", "3", "4"] * 2
    scores, labels = ev.enroll_trials(emb, speakers, names)
    profile = np.array([1.0, 2.0]) / np.linalg.norm([1.0, 2.0])
    test = np.array([1.0, 1.0]) / np.sqrt(2)
    assert scores[0] == pytest.approx(profile @ test)  # test "a/4" against profile a
    assert labels.tolist() == [True, False, False, True]


# ------------------------------------------------------------ conditions


def test_mix_at_snr_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    speech = rng.standard_normal(16000)
    noise = rng.standard_normal(4000) * 7
    mixed = ev.mix_at_snr(speech, noise, 5.0, np.random.default_rng(1))
    added = mixed - speech
    assert 10 * np.log10(np.mean(speech**2) / np.mean(added**2)) == pytest.approx(5.0, abs=1e-6)


def test_crop_and_reverb_shapes():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal(5 * 16000)
    assert len(ev.crop(wave, 2.0, rng)) == 32000
    assert len(ev.crop(wave[:8000], 2.0, rng)) == 8000  # shorter clips are kept whole
    wet = ev.reverberate(wave, rng)
    assert len(wet) == len(wave)
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(wave**2)), rel=1e-6)
    assert not np.allclose(wet, wave)


class _FakeNoise:
    clips = [np.random.default_rng(5).standard_normal(16000).astype(np.float32)]

    def pick(self, rng):
        return self.clips[0]


def test_prepare_is_deterministic_and_seeded_per_clip():
    wave = (np.random.default_rng(0).standard_normal(3 * 16000) * 0.1).astype(np.float32)
    a = ev.prepare(wave, "x/1.opus", "noisy5", "2s", _FakeNoise())
    b = ev.prepare(wave, "x/1.opus", "noisy5", "2s", _FakeNoise())
    c = ev.prepare(wave, "x/2.opus", "noisy5", "2s", _FakeNoise())
    assert a.dtype == np.float32 and len(a) == 32000
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(ev.prepare(wave, "x/1.opus", "clean", "full", None), wave)


def _tone(freq: float, seconds: float = 1.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _power_above(wave: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / 16000)
    return float(spectrum[freqs > hz].sum() / spectrum.sum())


def test_telephone_keeps_the_band_and_removes_the_rest_deterministically():
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(2 * 16000) * 0.1).astype(np.float32)
    out = ev.telephone(wave)
    assert out.shape == wave.shape and np.isfinite(out).all()
    assert _power_above(wave, 3800) > 0.4  # white noise: half its power is above 4 kHz
    assert _power_above(out, 3800) < 0.01
    assert np.array_equal(out, ev.telephone(wave))
    speech_band = ev.telephone(_tone(1000))
    assert np.sqrt(np.mean(speech_band ** 2)) > 0.5 * np.sqrt(np.mean(_tone(1000) ** 2))  # in-band tone passes


def test_far_field_drr_falls_with_distance():
    assert ev.far_field_drr_db(1.0, 0.5, 50.0) == pytest.approx(20 * np.log10(0.057 * 10), abs=1e-9)
    assert ev.far_field_drr_db(3.0, 0.5, 50.0) == pytest.approx(ev.far_field_drr_db(1.0, 0.5, 50.0) - 20 * np.log10(3))
    assert ev.far_field_drr_db(2.0, 0.8, 30.0) < ev.far_field_drr_db(2.0, 0.3, 80.0)  # more reverberant room


def test_pitch_condition_moves_the_pitch_by_1_to_3_semitones():
    wave = _tone(200, seconds=2.0)
    for seed in range(3):
        out = ev.shift_pitch_and_tempo(wave, np.random.default_rng(seed))
        assert 2 * 16000 / 1.16 <= len(out) <= 2 * 16000 / 0.84  # tempo within +-15%
        spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
        peak_hz = np.fft.rfftfreq(len(out), 1 / 16000)[np.argmax(spectrum)]
        semitones = abs(12 * np.log2(peak_hz / 200))
        assert 0.9 <= semitones <= 3.1


@pytest.mark.parametrize("condition", ["telephone", "far", "pitch"])
def test_new_conditions_are_deterministic_and_seeded_per_clip(condition):
    wave = (np.random.default_rng(0).standard_normal(3 * 16000) * 0.1).astype(np.float32)
    a = ev.prepare(wave, "x/1.opus", condition, "2s", None)
    b = ev.prepare(wave, "x/1.opus", condition, "2s", None)
    c = ev.prepare(wave, "x/2.opus", condition, "2s", None)
    assert a.dtype == np.float32 and np.abs(a).max() <= 1.0
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    if condition != "pitch":  # pitch changes the tempo, hence the length
        assert len(a) == 32000


def test_unknown_condition_is_refused():
    with pytest.raises(ValueError, match="unknown condition"):
        ev.prepare(np.zeros(16000, np.float32), "x", "underwater", "full", None)
    with pytest.raises(SystemExit, match="error: unknown underwater"):
        ev.main(["--conditions", "clean,underwater"])


def test_enroll_speakers_with_three_clips_or_fewer_are_impostor_profiles_only():
    rng = np.random.default_rng(0)
    speakers = ["a"] * 5 + ["b"] * 2  # b: too few clips to test, enough for a profile
    emb = rng.standard_normal((7, 8))
    scores, labels = ev.enroll_trials(emb, speakers, [f"{i}.opus" for i in range(7)])
    assert len(scores) == 2 * 2  # a's 2 test clips x 2 profiles (a, b)
    assert labels.sum() == 2  # each of a's test clips against a's profile


def _row(system, set_name, condition, enroll, pairs):
    return {"system": system, "set": set_name, "condition": condition, "duration": "full",
            "enroll_eer": enroll, "pairs_eer": pairs}


def test_ratio_summary_worst_case_mean_and_cells_without_a_ratio():
    rows = [_row("teacher", "s1", "clean", 4.0, 8.0), _row("st", "s1", "clean", 2.0, 8.0),
            _row("teacher", "s1", "pitch", 5.0, 10.0), _row("st", "s1", "pitch", 15.0, 5.0),
            _row("teacher", "s2", "clean", 0.0, 1.0), _row("st", "s2", "clean", 1.5, 1.0)]
    summary = {s["protocol"]: s for s in ev.ratio_summary(rows)}
    enroll, pairs = summary["enroll"], summary["pairs"]
    assert enroll["worst"] == pytest.approx(3.0) and enroll["worst_cell"] == "s1 pitch full"
    assert enroll["mean"] == pytest.approx((0.5 + 3.0) / 2) and enroll["cells"] == 2
    assert enroll["undefined"] == [("s2 clean full", 1.5)]
    assert pairs["worst"] == pytest.approx(1.0) and pairs["mean"] == pytest.approx((1 + 0.5 + 1) / 3)
    line = ev.summary_lines([enroll])[0]
    assert "worst 3.00 (s1 pitch full), mean 1.75 over 2 cells" in line and "s2 clean full at 1.50%" in line


def test_run_prepares_each_clip_once_per_cell_for_all_systems(monkeypatch, tmp_path):
    utts = [datasets.Utterance(f"s/{i % 2}", tmp_path / f"{i % 2}" / f"{i}.opus", "s") for i in range(8)]
    calls = []
    monkeypatch.setattr(datasets, "dev_set", lambda name: utts)
    monkeypatch.setattr(datasets, "data_root", lambda required=True: tmp_path)
    monkeypatch.setattr(datasets, "read_audio", lambda path: np.full(1600, 0.01 * int(path.stem), np.float32))
    monkeypatch.setattr(ev, "prepare", lambda wave, key, c, d, noise: calls.append(key) or wave)
    rng = np.random.default_rng(0)
    fake = [ev.System(name, None, _embed_many=lambda waves: rng.standard_normal((len(waves), 4))) for name in ("a", "b")]
    rows = ev.run(fake, ["x"], ["clean", "far"], ["full"], use_cache=False, log=lambda *a: None)
    assert len(rows) == 4 and len(calls) == 2 * len(utts)  # two cells, each clip prepared once per cell


def test_degraded_audio_is_cached_once_and_read_back_the_same(monkeypatch, tmp_path):
    utts = [datasets.Utterance("s/0", tmp_path / "0" / f"{i}.opus", "s") for i in range(1, 4)]
    calls = []
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(datasets, "data_root", lambda required=True: tmp_path)
    monkeypatch.setattr(datasets, "read_audio", lambda path: np.arange(1000 * int(path.stem), dtype=np.float32))
    monkeypatch.setattr(ev, "prepare", lambda wave, key, c, d, noise: calls.append(key) or wave * 0.5)
    first = ev.prepared_waves(utts, "far", "full", None, use_cache=True)
    again = ev.prepared_waves(utts, "far", "full", None, use_cache=True)
    assert len(calls) == 3  # the second call read the cache
    assert [len(w) for w in again] == [1000, 2000, 3000]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    ev.prepared_waves(utts[:2], "far", "full", None, use_cache=True)  # another clip list: its own entry
    ev.prepared_waves(utts, "clean", "full", None, use_cache=True)  # clean audio is not cached
    ev.prepared_waves(utts, "clean", "full", None, use_cache=True)
    assert len(calls) == 3 + 2 + 6


# ------------------------------------------------------------ real data


def _figures(system, set_name, monkeypatch, tmp_path):
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path)
    rows = ev.run([system], [set_name], ["clean"], ["full"], use_cache=False, log=lambda *a: None)
    return round(rows[0]["pairs_eer"], 2), round(rows[0]["enroll_eer"], 2)


@needs_data
@needs_teacher
def test_mfcc_reproduces_reference_on_asc_test(monkeypatch, tmp_path):
    # shared/data/README.md: MFCC ASC test pairs 21.03% / enroll 14.41%.
    assert _figures(ev.mfcc_system(), "asc-test", monkeypatch, tmp_path) == (21.03, 14.41)


@needs_data
@needs_teacher
def test_teacher_reproduces_reference_on_asc_test(monkeypatch, tmp_path):
    # shared/data/README.md: teacher ASC test pairs 10.77% / enroll 8.96%.
    assert _figures(ev.teacher_system(), "asc-test", monkeypatch, tmp_path) == (10.77, 8.96)


@needs_teacher
def test_teacher_batch_equals_embed_utterance():
    t = teacher.Teacher()
    rng = np.random.default_rng(0)
    waves = [(rng.standard_normal(n) * 0.05).astype(np.float32) for n in (8000, 16000 * 3, 16000 * 5 + 123)]
    batch = t.embed_batch(waves)
    for w, b in zip(waves, batch):
        np.testing.assert_allclose(b, t.embed(w), atol=1e-5)


@needs_teacher
def test_teacher_windows_average_to_the_utterance_embedding():
    # training/train.py's per-window targets: the windows' mean is embed_utterance, and each
    # window's span is where it reads the clip (0.77 s apart, 1.6 s long, clipped to the clip).
    t = teacher.Teacher()
    rng = np.random.default_rng(1)
    waves = [(rng.standard_normal(n) * 0.05).astype(np.float32) for n in (8000, 16000 * 4 + 321)]
    emb, spans, first = t.embed_windows(waves)
    assert first.tolist()[0] == 0 and first[-1] == len(emb) == len(spans)
    for i, w in enumerate(waves):
        own = emb[first[i]:first[i + 1]]
        mean = own.mean(axis=0)
        np.testing.assert_allclose(mean / np.linalg.norm(mean), t.embed(w), atol=1e-5)
        own_spans = spans[first[i]:first[i + 1]]
        assert own_spans[:, 1].max() <= len(w) and (np.diff(own_spans[:, 0]) == 12320).all()
    assert spans[0].tolist() == [0, 8000]  # shorter than a window: the one window is the clip


@needs_teacher
def test_teacher_macs_counted_from_shapes():
    # 3 LSTM layers, hidden 256, 40 mels in: 4*256*(40+256) + 2 * 4*256*(256+256) MACs per frame,
    # 1.3 windows of 160 frames per second, plus a 256x256 Linear per window.
    per_frame = 4 * 256 * (40 + 256) + 2 * 4 * 256 * 512
    assert teacher.teacher_macs_per_second() == round(1.3 * 160 * per_frame + 1.3 * 256 * 256)
