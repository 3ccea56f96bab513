"""Speaker changes inside a segment (streamsv/change.py) and the pipeline's split of the turn."""
import numpy as np
import pytest

from conftest import SR, data_dir, dev_speakers, dev_utterances
from streamsv.change import ChangeDetector
from streamsv.config import ChangeConfig, Config

DIM = 8


def vec(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    v = np.zeros(DIM)
    v[i] = 1.0
    return v + noise * np.random.default_rng(seed).standard_normal(DIM)


def feed(det: ChangeDetector, voices: list[int], hop: float = 0.5, noise: float = 0.1):
    """Hop by hop: the window is voice ``voices[k]``; return the verdicts of each hop."""
    out = []
    for k, who in enumerate(voices):
        t = 1.0 + k * hop
        out.append(det.test(t, vec(who, noise, seed=k)))
        det.remember(t, vec(who, noise, seed=100 + k))
    return out


def test_same_voice_throughout_is_never_a_change():
    verdicts = feed(ChangeDetector(ChangeConfig(threshold=0.5)), [0] * 12)
    assert all(v is None or not v.changed for v in verdicts)
    assert any(v is not None for v in verdicts)


def test_a_new_voice_is_a_change_once_the_reference_is_long_enough():
    det = ChangeDetector(ChangeConfig(threshold=0.5, recent_s=1.0, min_reference_s=1.0))
    verdicts = feed(det, [0] * 5 + [1] * 3)
    # Untestable until 1 s of reference precedes the 1 s recent window (segment time 2 s).
    assert verdicts[0] is None and verdicts[1] is None
    assert [bool(v and v.changed) for v in verdicts].index(True) == 5
    assert verdicts[5].similarity < 0.5 and verdicts[5].lag_s == pytest.approx(0.85)   # the stream's placement
    offline = feed(ChangeDetector(ChangeConfig(threshold=0.5, embedding="offline")), [0] * 5 + [1] * 3)
    assert offline[5].changed and offline[5].lag_s == pytest.approx(0.75)


def test_the_continuous_test_can_have_its_own_threshold():
    # A cosine of 0.6 to the reference: a change at 0.7, none at 0.5 (the pause tests keep threshold).
    def run(continuous_threshold):
        det = ChangeDetector(ChangeConfig(threshold=0.5, continuous_threshold=continuous_threshold))
        det.remember(1.0, vec(0))
        return det.test(2.5, vec(0) + vec(1) * np.sqrt(1 / 0.36 - 1))
    assert run(None).similarity == pytest.approx(0.6) and not run(None).changed
    assert run(0.7).changed and not run(0.5).changed


def test_noise_lowers_every_tests_bar_by_a_bounded_shift():
    # change.snr_slope: a cosine of 0.6 is a change at a bar of 0.615, and none once noise brings
    # the bar down by 0.03 (continuous and pause tests alike); the shift is bounded.
    from streamsv.change import MAX_SNR_SHIFT

    det = ChangeDetector(ChangeConfig(threshold=0.615, snr_slope=0.005))
    assert det.snr_shift(None, 30.0) == 0.0 and det.snr_shift(40.0, 30.0) == 0.0
    assert det.snr_shift(26.0, 30.0) == pytest.approx(0.02)
    assert det.snr_shift(0.0, 30.0) == MAX_SNR_SHIFT == pytest.approx(0.03)
    assert ChangeDetector(ChangeConfig(snr_slope=0.0)).snr_shift(0.0, 30.0) == 0.0
    near = vec(0) + vec(1) * np.sqrt(1 / 0.36 - 1)   # cosine 0.6 to vec(0)
    for shift, changed in ((0.0, True), (0.01, True), (det.snr_shift(0.0, 30.0), False)):
        det.reset()
        det.remember(1.0, vec(0))
        assert det.test(2.5, near, shift).changed == changed
        det.pause(3.0, vec(0))
        assert det.test_pause(4.0, near, shift=shift).changed == changed


def test_confirm_hops_wants_that_many_in_a_row():
    odd_hop = feed(ChangeDetector(ChangeConfig(threshold=0.5, confirm_hops=2)), [0] * 5 + [1] + [0] * 4)
    assert not any(v and v.changed for v in odd_hop)      # a single odd hop is not enough
    changed = [bool(v and v.changed) for v in feed(ChangeDetector(ChangeConfig(threshold=0.5, confirm_hops=2)),
                                                   [0] * 5 + [1] * 4)]
    assert changed.index(True) == 6


def test_disabled_never_tests():
    det = ChangeDetector(ChangeConfig(enabled=False))
    assert all(v is None for v in feed(det, [0] * 4 + [1] * 4))


def test_reset_forgets_the_reference():
    det = ChangeDetector(ChangeConfig())
    feed(det, [0] * 6)
    det.reset(0.0)
    assert det.test(1.5, vec(1)) is None


def test_continuous_off_leaves_only_the_pause_test():
    det = ChangeDetector(ChangeConfig(threshold=0.5, continuous=False))
    assert all(v is None for v in feed(det, [0] * 5 + [1] * 4))


def test_a_pause_is_a_candidate_when_long_enough_with_reference_before_it():
    det = ChangeDetector(ChangeConfig(min_pause_s=0.15, min_reference_s=1.0))
    assert not det.wants_pause(2.0, 0.1)            # too short
    assert not det.wants_pause(1.1, 0.3)            # 0.8 s of segment before it
    assert det.wants_pause(2.0, 0.3)
    assert not ChangeDetector(ChangeConfig(min_pause_s=0.0)).wants_pause(2.0, 0.5)        # off
    assert not ChangeDetector(ChangeConfig(enabled=False, min_pause_s=0.1)).wants_pause(2.0, 0.5)


def test_the_audio_after_a_pause_is_judged_against_the_segment_before_it():
    det = ChangeDetector(ChangeConfig(threshold=0.5, recent_s=1.0, min_pause_s=0.15))
    det.pause(2.0, vec(0))
    det.pause(3.5, vec(0))
    assert det.pause_due(2.9) is None               # under recent_s of audio after it yet
    assert det.pause_due(3.03) == 2.0
    same = det.test_pause(3.03, vec(0, 0.1))
    assert not same.changed and same.similarity > 0.9
    assert det.pause_due(3.6) is None and det.pause_due(4.52) == 3.5
    other = det.test_pause(4.52, vec(1, 0.1))
    assert other.changed and other.lag_s == pytest.approx(1.02)   # the change lies at the pause's end
    assert np.allclose(other.reference, vec(0) / np.linalg.norm(vec(0)))   # what it was judged against
    assert det.pause_due(10.0) is None


def test_reset_forgets_pending_pauses():
    det = ChangeDetector(ChangeConfig(min_pause_s=0.15))
    det.pause(2.0, vec(0))
    det.reset(3.0)
    assert det.pause_due(10.0) is None


def test_a_bridged_gap_is_a_candidate_with_reference_before_it():
    det = ChangeDetector(ChangeConfig(min_pause_s=0.1, min_reference_s=1.0))
    assert not det.wants_gap(0.8)                    # 0.8 s of the voice before the gap
    assert det.wants_gap(1.2)
    det.reset(2.0)                                   # a new voice from segment time 2.0
    assert not det.wants_gap(2.5) and det.wants_gap(3.0)
    assert not ChangeDetector(ChangeConfig(min_pause_s=0.0)).wants_gap(5.0)       # the pause test is off
    assert not ChangeDetector(ChangeConfig(enabled=False)).wants_gap(5.0)


def test_a_pause_can_carry_its_own_threshold():
    # A bridged gap is judged at change.bridge_threshold, an ordinary pause at change.threshold.
    det = ChangeDetector(ChangeConfig(threshold=0.45, recent_s=1.0))
    between = vec(0) + 1.2 * vec(1)                  # cosine to vec(0): 0.64
    det.pause(2.0, vec(0), threshold=0.7)
    det.pause(4.0, vec(0))
    gap = det.test_pause(3.0, between)
    assert gap.changed and 0.6 < gap.similarity < 0.7
    assert not det.test_pause(5.0, between).changed


def test_a_gap_judged_on_a_short_segment_uses_the_short_gap_threshold():
    # The segment after a bridged gap closed before recent_s of it: less speech scores lower against
    # the same voice, so that test is not held to the gap's own (bridge) bar.
    between = vec(0) + 1.2 * vec(1)                  # cosine to vec(0): 0.64
    for short_gap_threshold, changed in ((None, False), (0.5, False), (0.7, True)):
        det = ChangeDetector(ChangeConfig(threshold=0.45, short_gap_threshold=short_gap_threshold))
        det.gap(2.0, vec(0), threshold=0.7)
        assert det.test_pause(2.6, between, short_gap=True).changed is changed
    det = ChangeDetector(ChangeConfig(threshold=0.45))
    det.gap(2.0, vec(0), threshold=0.7)
    assert det.test_pause(3.0, between).changed      # heard in full: the gap's own bar


def test_change_settings_are_validated():
    from streamsv.errors import StreamsvError

    assert Config().with_overrides(**{"change.threshold": 0.3}).change.threshold == 0.3
    assert Config().with_overrides(**{"change.bridge_s": 0.8}).change.bridge_s == 0.8
    for key, bad in (("change.recent_s", 0), ("change.confirm_hops", 0), ("change.threshold", 2), ("change.enabled", "yes"),
                     ("change.min_pause_s", -0.1), ("change.continuous", "no"), ("change.bridge_s", -0.5),
                     ("change.bridge_s", 11), ("change.bridge_hold", "maybe"), ("change.bridge_threshold", 1.5),
                     ("change.pause_embedding", "online")):
        with pytest.raises(StreamsvError, match=key):
            Config().with_overrides(**{key: bad})


# ------------------------------------------------------------ the pipeline on two real voices


def _voice(speaker: str, seconds: float) -> np.ndarray:
    from streamsv.sources import load_audio

    out, n = [], 0
    for p in dev_utterances(speaker)[3:]:
        wave = load_audio(p)
        loud = np.flatnonzero(np.abs(wave) > 0.05 * np.abs(wave).max())
        wave = wave[loud[0]:loud[-1]]   # no leading or trailing silence: the voices abut
        out.append(wave / np.sqrt(np.mean(wave ** 2)) * 0.05)
        n += len(wave)
        if n >= seconds * SR:
            break
    return np.concatenate(out)[: int(seconds * SR)].astype(np.float32)


def _run(embedder, audio: np.ndarray, **overrides) -> list[dict]:
    from streamsv.bench import TimedSource
    from streamsv.pipeline import Pipeline

    cfg = Config().with_overrides(**{"output.stats_interval_s": 86400, **overrides})
    return list(Pipeline(embedder, TimedSource(audio), cfg, {}).run())


@pytest.mark.skipif(len(dev_speakers()) < 2 or data_dir() is None, reason="needs ../shared/data")
def test_pipeline_splits_a_turn_where_the_voice_changes(embedder):
    a, b = dev_speakers()[:2]
    first, second = _voice(a, 5.0), _voice(b, 5.0)
    audio = np.concatenate([np.zeros(SR // 2, np.float32), first, second, np.zeros(SR, np.float32)])
    events = _run(embedder, audio)
    changes = [e for e in events if e["event"] == "speaker_change"]
    boundary = 0.5 + len(first) / SR
    assert changes, "no speaker_change where one voice follows another without a pause"
    assert any(abs(e["at"] - boundary) < 1.0 for e in changes)
    # The window restarted: the decision after the change holds only audio since the change.
    after = [e for e in events if e["event"] == "decision" and e["t"] >= changes[0]["t"]]
    assert after and after[0]["speech_s"] <= Config().scoring.min_speech_s + 0.1
    stats = [e for e in events if e["event"] == "stats" and e["final"]][0]
    assert stats["speaker_changes"] == len(changes)
    # The same audio with the test off: no event, one window across both voices.
    assert not [e for e in _run(embedder, audio, **{"change.enabled": False}) if e["event"] == "speaker_change"]


def _false_boundaries(events: list[dict]) -> tuple[int, int]:
    """In a monologue: (speaker changes inside segments, every boundary after the first start:
    new-voice segment starts and changes, those at a bridged gap included)."""
    bridged = [e["t"] for e in events if e["event"] == "speech_start" and e.get("continues")]
    changes = [e for e in events if e["event"] == "speaker_change"]
    inside = [c for c in changes if not any(abs(c["at"] - t) < 0.002 for t in bridged)]
    starts = [e for e in events if e["event"] == "speech_start" and not e.get("continues")]
    return len(inside), len(starts) - 1 + len(changes)


@pytest.mark.skipif(len(dev_speakers()) < 6 or data_dir() is None, reason="needs ../shared/data")
def test_pipeline_rarely_splits_one_voice(embedder):
    # Six 9 s monologues, ~14 change tests each: the shipped model and threshold split them inside
    # segments 4 times when this was written (about one test in twenty); more than one a monologue
    # fails. Bridging the VAD's gaps (change.bridge_s) must not add boundaries: 12 without it, 8
    # with it when this was written (the gaps' tests split 4 of the 7 segment starts it removed).
    inside = bridged_total = unbridged_total = 0
    for speaker in dev_speakers()[:6]:
        audio = np.concatenate([np.zeros(SR // 2, np.float32), _voice(speaker, 9.0), np.zeros(SR, np.float32)])
        n_inside, bridged_total_one = _false_boundaries(_run(embedder, audio))
        inside += n_inside
        bridged_total += bridged_total_one
        unbridged_total += _false_boundaries(_run(embedder, audio, **{"change.bridge_s": 0.0}))[1]
    assert inside <= 6
    assert bridged_total <= unbridged_total


def test_turns_filter_passes_the_change_and_names_the_new_voice():
    from streamsv.events import TurnFilter

    f = TurnFilter()
    stream = [{"event": "speech_start", "t": 0.0},
              {"event": "decision", "t": 1.0, "speaker": "alice", "accepted": True},
              {"event": "speaker_change", "t": 3.0, "at": 2.3, "similarity": 0.2},
              {"event": "decision", "t": 3.0, "speaker": "alice", "accepted": True}]
    kept = [f.keep(e) for e in stream]
    assert kept[2]["at"] == 2.3
    assert kept[3] is not None and kept[3]["speaker"] == "alice"   # the new turn's first label, even if the same


def test_a_test_at_a_hop_finds_the_reference_a_block_late():
    # Hops land on 30 ms blocks: the window of recent_s before a test at a hop may end a block after
    # t - recent_s. It is still the reference (50 ms of overlap in 1 s), not the window a hop older.
    det = ChangeDetector(ChangeConfig(threshold=0.5, recent_s=1.0, min_reference_s=1.0))
    det.remember(1.02, vec(0))
    det.remember(2.01, vec(1))
    det.remember(2.52, vec(2))
    verdict = det.test(3.0, vec(1))        # cutoff 2.0: the window at 2.01, the same voice
    assert verdict is not None and verdict.similarity == pytest.approx(1.0) and not verdict.changed


class _CountingEmbedder:
    """The embedder with its offline ``embed`` counted (the change test's model steps of its own)."""

    def __init__(self, embedder):
        self._embedder, self.offline_calls = embedder, 0

    def __getattr__(self, name):
        return getattr(self._embedder, name)

    def embed(self, *args, **kwargs):
        self.offline_calls += 1
        return self._embedder.embed(*args, **kwargs)


@pytest.mark.skipif(len(dev_speakers()) < 2 or data_dir() is None, reason="needs ../shared/data")
def test_the_stream_test_splits_a_turn_without_an_offline_embed(embedder):
    # Pause tests off (min_pause_s 0, so no bridging either): only the continuous test runs. On the
    # stream's frames it makes no model step of its own, and still finds the second voice.
    a, b = dev_speakers()[:2]
    first, second = _voice(a, 5.0), _voice(b, 5.0)
    audio = np.concatenate([np.zeros(SR // 2, np.float32), first, second, np.zeros(SR, np.float32)])
    boundary = 0.5 + len(first) / SR
    counted = _CountingEmbedder(embedder)
    events = _run(counted, audio, **{"change.embedding": "stream", "change.min_pause_s": 0.0})
    assert counted.offline_calls == 0
    changes = [e for e in events if e["event"] == "speaker_change"]
    assert any(abs(e["at"] - boundary) < 1.0 for e in changes), changes
    after = [e for e in events if e["event"] == "decision" and e["t"] >= changes[0]["t"]]
    assert after and after[0]["speech_s"] <= Config().scoring.min_speech_s + 0.1
    # Offline, the same run embeds the recent audio at every test.
    counted = _CountingEmbedder(embedder)
    _run(counted, audio, **{"change.embedding": "offline", "change.min_pause_s": 0.0})
    assert counted.offline_calls >= 10


@pytest.mark.skipif(len(dev_speakers()) < 2 or data_dir() is None, reason="needs ../shared/data")
def test_the_pause_test_on_the_stream_splits_at_the_pause_without_an_offline_embed(embedder):
    # The continuous test off: only the pause test (here at a bridged gap) can find the second voice, who
    # answers after 0.3 s. On the stream's frames it makes no model step of its own.
    a, b = dev_speakers()[:2]
    first, second = _voice(a, 4.0), _voice(b, 4.0)
    pause = np.zeros(int(0.3 * SR), np.float32)
    audio = np.concatenate([np.zeros(SR // 2, np.float32), first, pause, second, np.zeros(SR, np.float32)])
    answer = 0.5 + (len(first) + len(pause)) / SR
    for where, offline_calls in (("stream", lambda n: n == 0), ("offline", lambda n: n >= 1)):
        counted = _CountingEmbedder(embedder)
        events = _run(counted, audio, **{"change.continuous": False, "change.pause_embedding": where})
        assert offline_calls(counted.offline_calls), (where, counted.offline_calls)
        # The VAD's segments close in the pause and the next one continues the voice (a bridged gap):
        # the gap's test splits it there.
        assert any(e["event"] == "speech_start" and e.get("continues") for e in events)
        changes = [e for e in events if e["event"] == "speaker_change"]
        assert any(abs(e["at"] - answer) < 0.3 for e in changes), (where, changes)
