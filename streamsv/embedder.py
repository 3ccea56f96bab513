"""The public embedding API: whole utterances with ``embed``, live audio with ``stream``."""
from __future__ import annotations

import hashlib
import io
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import StreamsvError
from .features import HOP, SAMPLE_RATE, StreamingLogMel, log_mel
from .model import FRAMES_PER_SECOND, ModelConfig, SpeakerEncoder, count_parameters, fuse_for_inference

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "student.pt"
CHECKPOINT_FORMAT = 1
MIN_AUDIO_S = 0.1  # below this an embedding is mostly noise


class EmbeddingStream:
    """Streaming state for one speech segment: push audio, read the rolling embedding.

    Each push runs the model on the new audio only (its convolution context, chunk history
    and running statistics are carried), so the cost per second of audio is constant. The
    embedding pools the most recent ``window_s`` seconds of encoder frames.
    """

    def __init__(self, model: SpeakerEncoder, window_s: float, finish: Callable[[torch.Tensor], np.ndarray]):
        self._model = model
        self._finish = finish
        self._max_frames = max(1, round(window_s * FRAMES_PER_SECOND))
        self.compute_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        self._mel = StreamingLogMel()
        self._state = None
        self._features: deque[torch.Tensor] = deque()
        self._logits: deque[torch.Tensor] = deque()
        self._frames = 0

    @property
    def seconds(self) -> float:
        return min(self._frames, self._max_frames) / FRAMES_PER_SECOND

    def push(self, audio: np.ndarray) -> None:
        started = time.perf_counter()
        with torch.inference_mode():
            mel = self._mel.push(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)))
            if mel.shape[0]:
                features, logits, self._state = self._model.encode(mel[None], self._state)
                if features.shape[1]:
                    self._append(features[0], logits[0])
        self.compute_seconds += time.perf_counter() - started

    def _append(self, features: torch.Tensor, logits: torch.Tensor) -> None:
        self._features.append(features)
        self._logits.append(logits)
        self._frames += features.shape[0]
        while self._frames - self._features[0].shape[0] >= self._max_frames:
            self._frames -= self._features.popleft().shape[0]
            self._logits.popleft()

    def embedding(self) -> np.ndarray | None:
        if self._frames < MIN_AUDIO_S * FRAMES_PER_SECOND:
            return None
        started = time.perf_counter()
        with torch.inference_mode():
            features = torch.cat(list(self._features))[-self._max_frames:]
            logits = torch.cat(list(self._logits))[-self._max_frames:]
            vector = self._finish(self._model.head.pool(features[None], logits[None])[0])
        self.compute_seconds += time.perf_counter() - started
        return vector


class Embedder:
    """A speaker encoder plus its scoring backend.

    The backend (optional) centres unit embeddings on the training speakers' mean and
    whitens their within-speaker scatter, both fitted on training speakers only
    (tools/fit_backend.py). Cosine scoring then weighs the directions that separate voices.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, model: SpeakerEncoder, fingerprint: str, backend: dict[str, torch.Tensor] | None = None):
        self.model = model.eval()  # as trained: parameters and MACs are counted on this one
        self.network = fuse_for_inference(model)  # the same function, fewer ops per streaming step
        self.fingerprint = fingerprint
        self.dim = model.cfg.embedding_dim
        self.backend = backend

    def finish(self, raw: torch.Tensor) -> np.ndarray:
        """Raw pooled output -> the unit-norm embedding that is scored."""
        vector = torch.nn.functional.normalize(raw, dim=-1)
        if self.backend is not None:
            vector = torch.nn.functional.normalize((vector - self.backend["center"]) @ self.backend["whiten"], dim=-1)
        return vector.numpy().astype(np.float32)

    @classmethod
    def untrained(cls, seed: int = 0, config: ModelConfig | None = None) -> "Embedder":
        """Randomly initialised: carries the plumbing in tests, identifies nobody."""
        torch.manual_seed(seed)
        return cls(SpeakerEncoder(config or ModelConfig()), fingerprint=f"untrained-seed{seed}")

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    @property
    def macs_per_second(self) -> float:
        return count_macs_per_second(self.model)

    def embed(self, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise StreamsvError(f"expected mono audio, got an array of shape {wave.shape}")
        if sample_rate != SAMPLE_RATE:
            import soxr

            wave = soxr.resample(wave, sample_rate, SAMPLE_RATE).astype(np.float32)
        if not np.isfinite(wave).all():
            raise StreamsvError("audio contains NaN or infinite samples")
        if wave.size < MIN_AUDIO_S * SAMPLE_RATE:
            raise StreamsvError(f"audio too short: {wave.size / SAMPLE_RATE:.2f} s (need at least {MIN_AUDIO_S} s)")
        with torch.inference_mode():
            return self.finish(self.network(log_mel(torch.from_numpy(wave))[None])[0])

    def stream(self, window_s: float = 3.0) -> EmbeddingStream:
        return EmbeddingStream(self.network, window_s, self.finish)


def count_macs_per_second(model: torch.nn.Module, seconds: float = 10.0) -> float:
    """Multiply-accumulates per second of audio, counted by torch's FLOP counter (2 FLOPs = 1 MAC)
    over an offline pass; it counts matmuls, convolutions and einsums, including the
    log-mel projection."""
    from torch.utils.flop_counter import FlopCounterMode

    wave = torch.zeros(int(seconds * SAMPLE_RATE) + HOP)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(log_mel(wave)[None])
    return counter.get_total_flops() / 2 / seconds


def save_checkpoint(path: Path, model: SpeakerEncoder, meta: dict, backend: dict[str, torch.Tensor] | None = None) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "backend": backend,
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_embedder(path: str | Path | None = None) -> Embedder:
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise StreamsvError(f"model weights not found: {path}")
    raw = path.read_bytes()
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported checkpoint format {payload.get('format')!r}")
        model = SpeakerEncoder(ModelConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
        backend = payload.get("backend")
        if backend is not None and (backend["center"].shape != (model.cfg.embedding_dim,)
                                    or backend["whiten"].shape != (model.cfg.embedding_dim,) * 2):
            raise ValueError("backend does not match the embedding size")
    except Exception as exc:  # any unreadable checkpoint is the user's file problem
        raise StreamsvError(f"cannot load model weights {path}: {exc}") from None
    return Embedder(model, fingerprint=hashlib.sha256(raw).hexdigest()[:16], backend=backend)
