import numpy as np
import pytest

from streamsv.scoring import Smoother, calibrate, cosine_scores, decide


def test_cosine_scores_are_cosines():
    c = {"a": np.array([1.0, 0, 0]), "b": np.array([0, 2.0, 0])}
    s = cosine_scores(np.array([1.0, 1.0, 0]), c)
    assert s["a"] == pytest.approx(np.sqrt(0.5)) and s["b"] == pytest.approx(np.sqrt(0.5))


def test_decide_threshold_and_margin():
    d = decide({"a": 0.8, "b": 0.5}, threshold=0.7, min_margin=0.05)
    assert d.accepted and d.speaker == "a" and d.score == 0.8
    d = decide({"a": 0.65, "b": 0.5}, threshold=0.7, min_margin=0.05)
    assert not d.accepted and d.speaker is None and d.best == "a"
    d = decide({"a": 0.80, "b": 0.78}, threshold=0.7, min_margin=0.05)   # too close to call
    assert not d.accepted and d.speaker is None
    d = decide({"a": 0.71}, threshold=0.7, min_margin=0.05)              # single profile: no runner-up
    assert d.accepted
    d = decide({}, threshold=0.7)
    assert not d.accepted and np.isnan(d.score)


def test_smoother_averages_recent_hops_and_resets():
    s = Smoother(hops=3)
    assert s.push({"a": 0.9, "b": 0.1}) == {"a": 0.9, "b": 0.1}
    out = s.push({"a": 0.3, "b": 0.7})        # one contrary hop does not flip the label
    assert out["a"] > out["b"]
    s.push({"a": 0.3, "b": 0.7})
    out = s.push({"a": 0.3, "b": 0.7})        # ...but a sustained change does
    assert out == pytest.approx({"a": 0.3, "b": 0.7})
    s.reset()
    assert s.push({"a": 0.2}) == {"a": 0.2}


def test_by_default_the_best_profile_is_named_at_the_bar_however_close_the_runner_up():
    # min_margin 0 (docs/live-rooms.md, fifth pass): a margin left more voices unknown than it saved confusions
    d = decide({"a": 0.80, "b": 0.79}, threshold=0.7)
    assert d.accepted and d.speaker == "a"
    assert not decide({"a": 0.69, "b": 0.2}, threshold=0.7).accepted


def test_the_default_smoother_passes_each_hop_through():
    s = Smoother()
    assert s.push({"a": 0.9, "b": 0.1}) == {"a": 0.9, "b": 0.1}
    assert s.push({"a": 0.3, "b": 0.7}) == {"a": 0.3, "b": 0.7}   # the latest window alone decides


def test_calibrate_eer_and_target_far():
    rng = np.random.default_rng(0)
    gen = rng.normal(0.8, 0.05, 2000)
    imp = rng.normal(0.5, 0.05, 20000)
    c = calibrate(gen, imp)
    assert 0.62 < c.threshold < 0.68             # midway between equal-variance classes
    assert c.eer < 0.01 and abs(c.far - c.frr) < 0.01
    strict = calibrate(gen, imp, target_far=0.0001)
    assert strict.threshold > c.threshold and strict.far <= 0.0001
    # Overlapping classes: EER is where FAR and FRR meet.
    c2 = calibrate(rng.normal(0.6, 0.1, 5000), rng.normal(0.5, 0.1, 5000))
    assert 0.25 < c2.eer < 0.35 and abs(c2.far - c2.frr) < 0.02
    with pytest.raises(ValueError):
        calibrate(np.array([]), imp)


def test_threshold_is_lowered_for_short_windows():
    from streamsv.scoring import threshold_for

    assert threshold_for(0.7, 3.0, 3.0, slope=0.08) == pytest.approx(0.7)
    assert threshold_for(0.7, 1.0, 3.0, slope=0.08) == pytest.approx(0.54)
    assert threshold_for(0.7, 5.0, 3.0, slope=0.08) == pytest.approx(0.7)   # never raised above the full-window bar


def test_the_bar_comes_down_as_the_window_stands_less_above_the_noise():
    from streamsv.scoring import MAX_SNR_SHIFT, snr_shift

    assert snr_shift(30.0, 0.005, 30.0) == 0.0 and snr_shift(45.0, 0.005, 30.0) == 0.0   # at or over the reference
    assert snr_shift(20.0, 0.005, 30.0) == pytest.approx(0.05)
    assert snr_shift(-10.0, 0.005, 30.0) == MAX_SNR_SHIFT                                 # bounded however noisy
    assert snr_shift(10.0, 0.0, 30.0) == 0.0                                              # slope 0: off
    for unknown in (None, float("nan"), float("inf"), float("-inf")):
        assert snr_shift(unknown, 0.005, 30.0) == 0.0


def test_mean_is_numpys_bit_for_bit():
    """The smoother's mean skips numpy's call overhead, not its arithmetic: the same float64 bits
    (signed zeros too) for every count, across the switch to numpy's pairwise sum."""
    from streamsv.scoring import PAIRWISE_MIN, mean

    rng = np.random.default_rng(7)
    for n in range(1, 2 * PAIRWISE_MIN):
        for _ in range(2000):
            values = [float(x) for x in rng.uniform(-1, 1, n) * 10.0 ** rng.integers(-8, 3, n)]
            if rng.random() < 0.1:
                values[int(rng.integers(n))] = -0.0
            got, want = mean(values), float(np.mean(values))
            assert got == want and np.signbit(got) == np.signbit(want), values
    assert mean([np.float32(0.1), np.float32(0.2)]) == float(np.mean([np.float32(0.1), np.float32(0.2)]))
    assert mean([-0.0]) == 0.0 and not np.signbit(mean([-0.0]))


def test_unit_is_the_norm_division_bit_for_bit():
    from streamsv.scoring import unit

    rng = np.random.default_rng(8)
    for shape in [(1,), (3,), (256,), (4, 5)]:
        for _ in range(500):
            v = rng.standard_normal(shape).astype(np.float32) * np.float32(10.0 ** rng.integers(-6, 6))
            assert np.array_equal(unit(v), v / float(np.linalg.norm(v)))
    zero = np.zeros(8, np.float32)
    assert np.array_equal(unit(zero), zero)
