import numpy as np
import pytest

from conftest import with_pauses
from streamsv.vad import FRAME, Segmenter, SpeechAudio, SpeechEnd, SpeechStart, VadSettings, voiced

SR = 16000


def run(seg: Segmenter, audio: np.ndarray, chunk: int):
    events = []
    for i in range(0, len(audio), chunk):
        events += seg.process(audio[i:i + chunk], capture_time=i / SR)
    return events + seg.flush()


def segments(events):
    out, cur = [], None
    for ev in events:
        if isinstance(ev, SpeechStart):
            assert cur is None, "nested segment"
            cur = [ev.t, None, 0]
        elif isinstance(ev, SpeechAudio):
            assert cur is not None, "audio outside a segment"
            cur[2] += len(ev.audio)
        elif isinstance(ev, SpeechEnd):
            cur[1] = ev.t
            out.append(tuple(cur))
            cur = None
    assert cur is None
    return out


def test_silence_gives_no_segments():
    seg = Segmenter()
    noise = np.random.default_rng(0).normal(0, 1e-4, SR * 3).astype(np.float32)
    assert run(seg, noise, 1000) == []


@pytest.mark.parametrize("chunk", [480, 333, 4000])
def test_turns_separated_by_pauses_are_separate_segments(speech_clips, chunk):
    audio, spans = with_pauses(speech_clips[:2], pause_s=1.5)
    segs = segments(run(Segmenter(), audio, chunk))
    # Every segment lies around one turn; each turn is covered by segments starting no later than the
    # speech (pre-roll keeps the first syllable) and none bridges the pause.
    assert len(segs) >= 2
    for start, end, _ in segs:
        owners = [i for i, (a, b) in enumerate(spans) if start < b + 0.5 and end > a - 0.5]
        assert len(owners) == 1, (start, end, spans)
    for a, b in spans:
        mine = [s for s in segs if s[0] < b and s[1] > a]
        assert mine, f"turn {a:.2f}-{b:.2f} not detected"
        covered = sum(min(e, b) - max(s, a) for s, e, _ in mine)
        assert covered > 0.6 * (b - a)


def test_segment_times_are_consistent_with_audio(speech_clips):
    audio, spans = with_pauses(speech_clips[:1], pause_s=1.0)
    events = run(Segmenter(VadSettings(padding_ms=150)), audio, 480)
    for start, end, n in segments(events):
        assert n % FRAME == 0
        # Kept audio never exceeds the segment span (pauses inside are kept, so equality is common).
        assert n / SR <= end - start + 1e-6
    first = next(e for e in events if isinstance(e, SpeechStart))
    assert first.t <= spans[0][0] + 0.3


def test_capture_time_of_frames_tracks_chunks(speech_clips):
    audio, _ = with_pauses(speech_clips[:1], pause_s=0.5)
    seg = Segmenter()
    for i in range(0, len(audio), 4000):
        chunk = audio[i:i + 4000]
        # Stamp: the instant the chunk's last sample was captured (stream time here).
        for ev in seg.process(chunk, capture_time=(i + len(chunk)) / SR):
            if isinstance(ev, SpeechAudio):
                assert ev.capture_time == pytest.approx(ev.t_end, abs=1e-6)


def test_voiced_helper_trims_silence(speech_clips):
    audio, _ = with_pauses(speech_clips[:1], pause_s=2.0)
    segs = voiced(audio)
    total = sum(len(s) for s in segs) / SR
    assert 0.5 * len(speech_clips[0]) / SR < total < len(audio) / SR - 3.0


def test_bad_aggressiveness():
    with pytest.raises(ValueError):
        Segmenter(VadSettings(aggressiveness=4))
