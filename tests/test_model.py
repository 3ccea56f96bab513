"""The student: streaming equals offline, sizes within budget, checkpoints load safely."""
from __future__ import annotations

import math
import subprocess
from hashlib import sha256
import sys

import numpy as np
import pytest
import torch

from streamsv import StreamsvError, load_embedder
from streamsv.embedder import DEFAULT_WEIGHTS, Embedder, save_checkpoint, save_weights
from streamsv.features import HOP, StreamingLogMel, log_mel
from streamsv.model import ModelConfig, SpeakerEncoder, count_parameters
from streamsv.runtime import gelu, gelu_tanh

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
    wave = _speechlike(1.3)
    stream, frames = StreamingLogMel(), []
    for start in range(0, len(wave), 777):
        frames.append(stream.push(wave[start:start + 777]))
    assert np.allclose(np.concatenate(frames), log_mel(wave), atol=1e-5)


def test_gelu_is_the_exact_erf_gelu():
    x = np.linspace(-9, 9, 20001, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.abs(gelu(x) - exact).max() < 1e-6
    assert np.abs(gelu_tanh(x) - exact).max() < 5e-4  # the approximation, as documented


@pytest.mark.parametrize("config", [ModelConfig(), ModelConfig(width=64, n_blocks=2, groups=2, chunk_frames=8, conv_kernel=5)])
def test_runtime_computes_the_torch_model(config):
    """The numpy runtime and the torch model (what training optimised) give the same embedding."""
    torch.manual_seed(1)
    model = SpeakerEncoder(config).eval()
    for p in model.parameters():  # untrained biases are zero: make every term count
        p.data.add_(0.05 * torch.randn_like(p))
    embedder = Embedder.from_model(model)
    wave = _speechlike(2.3, seed=3)
    with torch.inference_mode():
        reference = model(torch.from_numpy(log_mel(wave))[None])[0].numpy()
    assert float(embedder.embed(wave) @ (reference / np.linalg.norm(reference))) >= 0.9999


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
    encoder = embedder.encoder
    features, logits = encoder.encode(log_mel(wave), encoder.new_state())
    last = embedder.finish(encoder.pool(features[-100:], logits[-100:]))
    everything = embedder.finish(encoder.pool(features, logits))
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
    assert embedder.num_parameters == count_parameters(embedder.to_torch())  # counted from the arrays
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
    checkpoint, weights = tmp_path / "student.pt", tmp_path / "student.npz"
    save_checkpoint(checkpoint, model, {"note": "test"})
    save_weights(weights, load_embedder(checkpoint))
    wave = _speechlike(1.0)
    reference = Embedder.from_model(model).embed(wave)
    for path in (checkpoint, weights):
        assert np.allclose(load_embedder(path).embed(wave), reference, atol=1e-6)
    # A checkpoint's fingerprint is its file's hash, and the export keeps it (profiles stay valid).
    assert load_embedder(checkpoint).fingerprint == load_embedder(weights).fingerprint == sha256(checkpoint.read_bytes()).hexdigest()[:16]
    in_memory = tmp_path / "in-memory.npz"
    save_weights(in_memory, Embedder.from_model(model))
    assert load_embedder(in_memory).fingerprint == Embedder.from_model(model).fingerprint  # a hash of the weights
    save_checkpoint(checkpoint, SpeakerEncoder(ModelConfig(width=64, n_blocks=2)), {"note": "other"})
    assert load_embedder(checkpoint).fingerprint != load_embedder(weights).fingerprint
    other = SpeakerEncoder(ModelConfig(width=64, n_blocks=2))
    assert Embedder.from_model(other).fingerprint != Embedder.from_model(model).fingerprint


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(StreamsvError, match="not found"):
        load_embedder(missing)
    for name in ("garbage.pt", "garbage.npz"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
        with pytest.raises(StreamsvError, match="cannot load"):
            load_embedder(tmp_path / name)
    # A pickle smuggling code is refused by weights_only loading.
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": {}, "state_dict": {}, "meta": Evil()}, evil)
    with pytest.raises(StreamsvError, match="cannot load"):
        load_embedder(evil)
    # .npz object arrays would need pickle: refused (allow_pickle=False).
    evil_npz = tmp_path / "evil.npz"
    np.savez(evil_npz, format=np.array(1), config=np.array([Evil()], dtype=object))
    with pytest.raises(StreamsvError, match="cannot load"):
        load_embedder(evil_npz)
    # Well-formed but missing a layer.
    good = tmp_path / "good.npz"
    save_weights(good, Embedder.untrained(config=ModelConfig(width=64, n_blocks=2)))
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files if k != "model.head.proj.weight"}
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(StreamsvError, match="cannot load"):
        load_embedder(tmp_path / "partial.npz")


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="no shipped weights yet")
def test_shipped_weights_load():
    embedder = load_embedder()
    assert embedder.dim == 256 and embedder.sample_rate == 16000
    assert embedder.num_parameters <= 2_500_000
    vector = embedder.embed(_speechlike(1.5))
    assert vector.dtype == np.float32 and abs(np.linalg.norm(vector) - 1) < 1e-5
    with torch.inference_mode():
        reference = embedder.to_torch()(torch.from_numpy(log_mel(_speechlike(1.5)))[None])[0].numpy()
    assert float(vector @ reference) / np.linalg.norm(reference) >= 0.9999


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="no shipped weights yet")
def test_runtime_never_imports_torch():
    """Listening, enrolling and verifying run on numpy alone: torch's import is slower than the
    whole start-up budget."""
    code = ("import sys, numpy as np, streamsv; e = streamsv.load_embedder(); s = e.stream(); "
            "s.push(np.zeros(16000, np.float32)); s.embedding(); e.embed(np.zeros(8000, np.float32)); "
            "import streamsv.cli, streamsv.pipeline, streamsv.service; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_without_torch_npz_runs_and_pt_says_what_is_missing(tmp_path, monkeypatch):
    """On a device installed without torch: .npz weights load and embed, a .pt checkpoint gets
    a one-line error naming torch, and the bench counts parameters but not MACs."""
    from streamsv import bench

    checkpoint, weights = tmp_path / "s.pt", tmp_path / "s.npz"
    model = SpeakerEncoder(ModelConfig(width=64, n_blocks=2))
    save_checkpoint(checkpoint, model, {})
    save_weights(weights, Embedder.from_model(model))
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    embedder = load_embedder(weights)
    assert embedder.embed(_speechlike(1.0)).shape == (256,)
    with pytest.raises(StreamsvError, match="needs torch"):
        load_embedder(checkpoint)
    counts = bench.counted("student", embedder)
    assert counts["params"] == embedder.num_parameters and counts["macs_per_s"] is None
