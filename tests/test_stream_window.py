"""EmbeddingStream's frame window: whatever the push sizes, the pooling graph gets exactly the
last window of encoder frames, in order (checked with a stand-in encoder whose frames carry
their own index, so a lost, repeated or shifted frame shows)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from streamsv.embedder import FRAMES_PER_SECOND, MIN_AUDIO_S, Embedder
from streamsv.features import SAMPLE_RATE

WIDTH = 3


@dataclass
class _Position:
    frames: int = 0


class IndexEncoder:
    """Frame i of a stream is [i, i, i] (logits its negative); pooling returns what it was given."""

    def __init__(self) -> None:
        self.pooled: list[tuple[np.ndarray, np.ndarray]] = []

    def new_state(self) -> _Position:
        return _Position()

    def encode(self, mel: np.ndarray, state: _Position) -> tuple[np.ndarray, np.ndarray]:
        n = len(mel) // 2
        index = np.arange(state.frames, state.frames + n, dtype=np.float32)
        state.frames += n
        features = np.repeat(index[:, None], WIDTH, axis=1)
        return features, -features

    def embed_window(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        assert features.flags.c_contiguous and logits.flags.c_contiguous  # what ONNX Runtime reads as is
        self.pooled.append((features.copy(), logits.copy()))
        return features[:, 0].copy()


def _embedder() -> tuple[Embedder, IndexEncoder]:
    encoder = IndexEncoder()
    return Embedder(encoder, "index", {"embedding_dim": WIDTH}), encoder


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_window_is_the_last_frames_whatever_the_pushes(seed):
    embedder, encoder = _embedder()
    window_s = 1.0
    max_frames = round(window_s * FRAMES_PER_SECOND)
    stream = embedder.stream(window_s=window_s)
    rng = np.random.default_rng(seed)
    for _ in range(120):
        # mostly hop-sized pushes, sometimes a block, sometimes more than a whole window
        samples = int(rng.choice([480, 8000, 8000, 8000, 40000])) + int(rng.integers(0, 400))
        stream.push(np.zeros(samples, np.float32))
        total = encoder_frames(stream)
        assert stream.seconds == min(total, max_frames) / FRAMES_PER_SECOND
        for seconds, wanted in ((None, max_frames), (0.5, round(0.5 * FRAMES_PER_SECOND)), (9.0, max_frames)):
            got = stream.embedding() if seconds is None else stream.recent_embedding(seconds)
            n = min(wanted, total)
            if n < MIN_AUDIO_S * FRAMES_PER_SECOND:
                assert got is None
                continue
            assert np.array_equal(got, np.arange(total - n, total, dtype=np.float32))
            features, logits = encoder.pooled[-1]
            assert np.array_equal(logits, -features)


def encoder_frames(stream) -> int:
    return stream._state.frames


def test_reset_starts_an_empty_window():
    embedder, _ = _embedder()
    stream = embedder.stream(window_s=1.0)
    stream.push(np.zeros(3 * SAMPLE_RATE, np.float32))
    assert stream.seconds == 1.0
    stream.reset()
    assert stream.seconds == 0.0 and stream.embedding() is None
    stream.push(np.zeros(SAMPLE_RATE // 2, np.float32))
    frames = encoder_frames(stream)
    assert np.array_equal(stream.embedding(), np.arange(frames, dtype=np.float32))
