import io
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from streamsv.errors import StreamsvError
from streamsv.sources import FileSource, StdinSource, load_audio, open_source

SR = 16000


def tone(seconds: float, rate: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def test_load_audio_resamples_and_downmixes(tmp_path):
    p = tmp_path / "a.flac"
    sf.write(p, tone(1.0, 44100, 2), 44100)
    x = load_audio(p)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SR) <= 2
    assert 0.25 < np.abs(x).max() < 0.35


@pytest.mark.parametrize("content,expect", [
    (None, "no such file"),
    (b"", "cannot read audio"),
    (b"this is not audio at all" * 10, "cannot read audio"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "cannot read audio"),
])
def test_load_audio_failures_are_one_liners(tmp_path, content, expect):
    p = tmp_path / "x.wav"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(StreamsvError, match=expect) as e:
        load_audio(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_load_audio_empty_and_nonfinite(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    with pytest.raises(StreamsvError, match="empty"):
        load_audio(empty)
    bad = tmp_path / "nan.wav"
    x = tone(0.5)
    x[100] = np.nan
    sf.write(bad, x, SR, subtype="FLOAT")
    with pytest.raises(StreamsvError, match="NaN"):
        load_audio(bad)
    with pytest.raises(StreamsvError, match="directory"):
        load_audio(tmp_path)


def test_file_source_chunks_match_offline(tmp_path):
    p = tmp_path / "a.ogg"
    sf.write(p, tone(2.0, 22050, 2), 22050, format="OGG")
    ref = load_audio(p)
    src = FileSource(p)
    chunks = list(src.chunks())
    got = np.concatenate([c for c, _ in chunks])
    assert all(len(c) == 480 for c, _ in chunks[:-1])
    assert abs(len(got) - len(ref)) <= 16
    n = min(len(got), len(ref))
    assert np.corrcoef(got[:n], ref[:n])[0, 1] > 0.99
    assert src.stats.chunks == len(chunks)
    times = [t for _, t in chunks]
    assert times == sorted(times)


def test_file_source_realtime_paces_to_wall_clock(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, tone(0.6), SR)
    t0 = time.monotonic()
    chunks = list(FileSource(p, realtime=True).chunks())
    elapsed = time.monotonic() - t0
    assert 0.55 <= elapsed < 1.5
    # Capture stamps are spaced like the audio: 30 ms apart.
    gaps = np.diff([t for _, t in chunks])
    assert np.allclose(gaps[:-1], 0.03, atol=1e-6)


def test_file_source_stops_on_event(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, tone(5.0), SR)
    stop = threading.Event()
    n = 0
    for _ in FileSource(p, realtime=True).chunks(stop):
        n += 1
        if n == 5:
            stop.set()
    assert n == 5


def test_stdin_source_reads_s16le():
    x = (tone(1.0) * 32767).astype("<i2")
    src = StdinSource(io.BytesIO(x.tobytes() + b"\x01"))   # a stray odd byte at EOF is ignored
    got = np.concatenate([c for c, _ in src.chunks()])
    assert len(got) == len(x)
    assert np.allclose(got, x / 32768.0, atol=1e-6)


def dominant_hz(x: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


@pytest.mark.parametrize("rate", [48000, 8000])
def test_stdin_at_another_rate_is_resampled_to_16k(rate):
    # audio.sample_rate says what rate the raw samples on stdin are: 1 s of a 220 Hz tone at
    # ``rate`` comes out as 1 s at 16 kHz, still 220 Hz (read as 16 kHz it would be 1/3 or 2 s long).
    x = (tone(1.0, rate) * 32767).astype("<i2")
    got = np.concatenate([c for c, _ in StdinSource(io.BytesIO(x.tobytes()), rate=rate).chunks()])
    assert abs(len(got) - SR) <= 2
    assert abs(dominant_hz(got) - 220) < 2
    assert 0.25 < np.abs(got[SR // 10:-SR // 10]).max() < 0.35


def test_listen_opens_its_source_at_the_configured_rate(monkeypatch, tmp_path):
    # The setting reaches the source: run_listen passes audio.sample_rate to open_source.
    from streamsv import app, sources
    from streamsv.config import Config

    seen = {}

    def fake_open(spec, device=None, realtime=False, block_ms=30, queue_s=2.0, rate=SR):
        seen["rate"] = rate
        raise StreamsvError("stop here")

    monkeypatch.setattr(sources, "open_source", fake_open)
    cfg = Config().with_overrides(**{"audio.sample_rate": 48000, "audio.source": "-",
                                     "profiles.dir": str(tmp_path)})
    with pytest.raises(StreamsvError, match="stop here"):
        app.run_listen(cfg, emb=None)
    assert seen == {"rate": 48000}


def test_open_source_dispatch(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, tone(0.1), SR)
    assert isinstance(open_source(str(p)), FileSource)
    assert isinstance(open_source("-"), StdinSource)
    with pytest.raises(StreamsvError, match="no such file"):
        open_source(str(tmp_path / "missing.wav"))
