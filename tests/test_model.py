"""The student: streaming equals offline, sizes within budget, checkpoints load safely."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamsv import StreamsvError, load_embedder
from streamsv.embedder import DEFAULT_WEIGHTS, Embedder, save_checkpoint
from streamsv.features import HOP, StreamingLogMel, log_mel
from streamsv.model import ModelConfig, SpeakerEncoder

torch.set_num_threads(1)
TEACHER_MACS_PER_SECOND = 270e6  # LSTM 3x256 over 40 mels, 1.3x partial overlap (tools/teacher.py counts it)


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise shaped by a slow random envelope: enough structure to exercise every state."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    envelope = np.repeat(rng.uniform(0, 1, n // 800 + 1), 800)[:n]
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


def _stream(embedder: Embedder, wave: np.ndarray, window_s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stream = embedder.stream(window_s=window_s)
    i = 0
    while i < len(wave):
        n = int(rng.integers(1, 5000))  # odd sizes: partial mel windows, frame pairs and chunks
        stream.push(wave[i:i + n])
        i += n
    return stream.embedding()


def test_streaming_log_mel_equals_offline():
    wave = torch.from_numpy(_speechlike(1.3))
    stream, frames = StreamingLogMel(), []
    for start in range(0, len(wave), 777):
        frames.append(stream.push(wave[start:start + 777]))
    assert torch.allclose(torch.cat(frames), log_mel(wave), atol=1e-5)


@pytest.mark.parametrize("arch", ["mixer", "transformer"])
def test_streaming_equals_offline(arch):
    embedder = Embedder.untrained(seed=3, config=ModelConfig(arch=arch))
    wave = _speechlike(2.7, seed=1)
    offline = embedder.embed(wave)
    streamed = _stream(embedder, wave, window_s=3.0, seed=2)
    assert float(offline @ streamed) >= 0.9999


def test_rolling_window_pools_only_recent_frames():
    """Past the window, the stream's embedding is the pool of the last window_s of frames of
    the whole (causal) encoding, not of the whole segment."""
    embedder = Embedder.untrained(seed=5)
    wave = _speechlike(5.0, seed=4)
    streamed = _stream(embedder, wave, window_s=2.0, seed=6)
    with torch.inference_mode():
        features, logits, _ = embedder.model.encode(log_mel(torch.from_numpy(wave))[None])
        last = embedder.model.head.pool(features[:, -100:], logits[:, -100:])[0]
        everything = embedder.model.head.pool(features, logits)[0]
    last, everything = (torch.nn.functional.normalize(v, dim=0).numpy() for v in (last, everything))
    assert float(last @ streamed) >= 0.9999
    assert float(everything @ streamed) < 0.9999


@pytest.mark.parametrize("first", [160, 400, 480, 560, 720])
def test_tiny_first_pushes_carry_state(first):
    """Pushes that complete a mel frame but not a 20 ms model frame must only advance the stem."""
    embedder = Embedder.untrained(seed=0)
    wave = _speechlike(1.2, seed=9)
    stream = embedder.stream()
    stream.push(wave[:first])
    stream.push(wave[first:first + 80])
    stream.push(wave[first + 80:])
    assert float(stream.embedding() @ embedder.embed(wave)) >= 0.9999


def test_stream_reset_starts_a_new_segment():
    embedder = Embedder.untrained(seed=0)
    first, second = _speechlike(1.5, seed=7), _speechlike(1.5, seed=8)
    stream = embedder.stream()
    stream.push(first)
    stream.reset()
    assert stream.embedding() is None
    stream.push(second)
    assert float(stream.embedding() @ embedder.embed(second)) >= 0.9999


def test_size_and_compute_budget():
    embedder = Embedder.untrained()
    assert embedder.num_parameters <= 2_500_000
    assert embedder.macs_per_second <= TEACHER_MACS_PER_SECOND / 2


def test_embed_rejects_bad_audio():
    embedder = Embedder.untrained()
    with pytest.raises(StreamsvError, match="too short"):
        embedder.embed(np.zeros(100, np.float32))
    with pytest.raises(StreamsvError, match="NaN"):
        embedder.embed(np.full(16000, np.nan, np.float32))
    with pytest.raises(StreamsvError, match="mono"):
        embedder.embed(np.zeros((2, 16000), np.float32))


def test_embed_resamples_other_rates():
    embedder = Embedder.untrained()
    wave = _speechlike(2.0)
    import soxr

    at_48k = soxr.resample(wave, 16000, 48000)
    assert float(embedder.embed(at_48k, sample_rate=48000) @ embedder.embed(wave)) > 0.99


def test_checkpoint_round_trip_and_fingerprint(tmp_path):
    torch.manual_seed(0)
    model = SpeakerEncoder(ModelConfig(width=64, n_blocks=2))
    path = tmp_path / "student.pt"
    save_checkpoint(path, model, {"note": "test"})
    loaded = load_embedder(path)
    wave = _speechlike(1.0)
    reference = Embedder(model, "x").embed(wave)
    assert np.allclose(loaded.embed(wave), reference, atol=1e-6)
    assert loaded.fingerprint == load_embedder(path).fingerprint
    save_checkpoint(path, SpeakerEncoder(ModelConfig(width=64, n_blocks=2)), {"note": "other"})
    assert load_embedder(path).fingerprint != loaded.fingerprint


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(StreamsvError, match="not found"):
        load_embedder(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(StreamsvError, match="cannot load"):
        load_embedder(garbage)
    # A pickle smuggling code is refused by weights_only loading.
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": {}, "state_dict": {}, "meta": Evil()}, evil)
    with pytest.raises(StreamsvError, match="cannot load"):
        load_embedder(evil)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="no shipped weights yet")
def test_shipped_weights_load():
    embedder = load_embedder()
    assert embedder.dim == 256 and embedder.sample_rate == 16000
    assert embedder.num_parameters <= 2_500_000
    vector = embedder.embed(_speechlike(1.5))
    assert vector.dtype == np.float32 and abs(np.linalg.norm(vector) - 1) < 1e-5
