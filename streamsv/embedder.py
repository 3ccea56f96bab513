"""The public embedding API: whole utterances with ``embed``, live audio with ``stream``.

Shipped weights are a plain ``.npz`` (no pickle) that the numpy runtime runs without importing
torch; training checkpoints (``.pt``, from tools/train.py) load too, through torch's
``weights_only`` loader. torch (optional: ``pip install 'streamsv[torch]'``) is imported only for
those, for counting MACs, and for the Transformer ablation, which the numpy runtime does not run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import StreamsvError
from .features import FILTERBANK_MACS_PER_FRAME, HOP, SAMPLE_RATE, StreamingLogMel, log_mel
from .runtime import FRAMES_PER_SECOND, Encoder

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "student.npz"
CHECKPOINT_FORMAT = 1
MIN_AUDIO_S = 0.1  # below this an embedding is mostly noise
MODEL_PREFIX = "model."
BUFFERS = ("stem.mel_mean", "stem.mel_std")  # feature statistics in the weights, not learnt parameters


class EmbeddingStream:
    """Streaming state for one speech segment: push audio, read the rolling embedding.

    Each push runs the encoder on the new audio only (its convolution context, chunk history
    and running statistics are carried), so the cost per second of audio is constant. The
    embedding pools the most recent ``window_s`` seconds of encoder frames.
    """

    def __init__(self, embedder: "Embedder", window_s: float):
        self._embedder = embedder
        self._encoder = embedder.encoder
        self._max_frames = max(1, round(window_s * FRAMES_PER_SECOND))
        self.compute_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        self._mel = StreamingLogMel()
        self._state = self._encoder.new_state()
        self._features: deque[np.ndarray] = deque()
        self._logits: deque[np.ndarray] = deque()
        self._frames = 0

    @property
    def seconds(self) -> float:
        return min(self._frames, self._max_frames) / FRAMES_PER_SECOND

    def push(self, audio: np.ndarray) -> None:
        started = time.perf_counter()
        mel = self._mel.push(audio)
        if len(mel):
            features, logits = self._encoder.encode(mel, self._state)
            if len(features):
                self._append(features, logits)
        self.compute_seconds += time.perf_counter() - started

    def _append(self, features: np.ndarray, logits: np.ndarray) -> None:
        self._features.append(features)
        self._logits.append(logits)
        self._frames += len(features)
        while self._frames - len(self._features[0]) >= self._max_frames:
            self._frames -= len(self._features.popleft())
            self._logits.popleft()

    def embedding(self) -> np.ndarray | None:
        if self._frames < MIN_AUDIO_S * FRAMES_PER_SECOND:
            return None
        started = time.perf_counter()
        features = np.concatenate(self._features)[-self._max_frames:]
        logits = np.concatenate(self._logits)[-self._max_frames:]
        vector = self._embedder.finish(self._encoder.pool(features, logits))
        self.compute_seconds += time.perf_counter() - started
        return vector


class TorchEncoder:
    """A torch SpeakerEncoder behind the runtime Encoder's interface (numpy in, numpy out):
    the Transformer ablation, which the numpy runtime does not run, and torch speed variants."""

    def __init__(self, network: Any):
        self.network = network

    def new_state(self) -> list:
        return [None]

    def encode(self, mel: np.ndarray, state: list) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            features, logits, state[0] = self.network.encode(torch.from_numpy(mel)[None], state[0])
        return features[0].numpy(), logits[0].numpy()

    def pool(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.network.head.pool(torch.from_numpy(features)[None], torch.from_numpy(logits)[None])[0].numpy()


class Embedder:
    """Trained weights, the encoder that runs them, and the scoring backend.

    The backend (optional) centres unit embeddings on the training speakers' mean and
    whitens their within-speaker scatter, both fitted on training speakers only
    (tools/fit_backend.py). Cosine scoring then weighs the directions that separate voices.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, config: dict, weights: Mapping[str, np.ndarray], backend: Mapping[str, np.ndarray] | None = None,
                 fingerprint: str | None = None):
        self.config = dict(config)
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self.backend = None if backend is None else {k: np.asarray(v, np.float32) for k, v in backend.items()}
        self.fingerprint = fingerprint or weights_fingerprint(self.config, self.weights)
        self.dim = int(self.config["embedding_dim"])
        if self.config.get("arch", "mixer") == "mixer":
            self.encoder: Encoder | TorchEncoder = Encoder(self.weights, self.config)
        else:
            from .model import fuse_for_inference

            self.encoder = TorchEncoder(fuse_for_inference(self.to_torch()))

    @classmethod
    def from_model(cls, model: Any, backend: Mapping[str, np.ndarray] | None = None, fingerprint: str | None = None) -> "Embedder":
        """From a torch SpeakerEncoder (training, tests)."""
        from dataclasses import asdict

        weights = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
        return cls(asdict(model.cfg), weights, backend, fingerprint)

    @classmethod
    def untrained(cls, seed: int = 0, config: Any = None) -> "Embedder":
        """Randomly initialised: carries the plumbing in tests, identifies nobody."""
        import torch

        from .model import ModelConfig, SpeakerEncoder

        torch.manual_seed(seed)
        return cls.from_model(SpeakerEncoder(config or ModelConfig()), fingerprint=f"untrained-seed{seed}")

    def to_torch(self) -> Any:
        """The weights as a torch SpeakerEncoder in eval mode (counting, training tools, tests)."""
        import torch

        from .model import ModelConfig, SpeakerEncoder

        model = SpeakerEncoder(ModelConfig(**self.config))
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.weights.items()})
        return model.eval()

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """Raw pooled output -> the unit-norm embedding that is scored."""
        vector = raw / max(float(np.linalg.norm(raw)), 1e-12)
        if self.backend is not None:
            vector = (vector - self.backend["center"]) @ self.backend["whiten"]
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return vector.astype(np.float32)

    @property
    def num_parameters(self) -> int:
        return sum(v.size for k, v in self.weights.items() if k not in BUFFERS)

    @property
    def macs_per_second(self) -> float:
        """Counted on the torch model (needs torch)."""
        return count_macs_per_second(self.to_torch())

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
        features, logits = self.encoder.encode(log_mel(wave), self.encoder.new_state())
        return self.finish(self.encoder.pool(features, logits))

    def stream(self, window_s: float = 3.0) -> EmbeddingStream:
        return EmbeddingStream(self, window_s)


def weights_fingerprint(config: dict, weights: Mapping[str, np.ndarray]) -> str:
    """The fingerprint of weights made in memory: a hash of the config and arrays. Profiles record
    the fingerprint of the model that made them, so a profile is never scored against another
    model's embeddings. A training checkpoint's is the SHA-256 of its file; exporting it to .npz
    keeps it, so profiles stay valid across the export."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], dtype="<f4").tobytes())
    return h.hexdigest()[:16]


def count_macs_per_second(model: Any, seconds: float = 10.0) -> float:
    """Multiply-accumulates per second of audio: the torch model's matmuls, convolutions and
    einsums over an offline pass, counted by torch's FLOP counter (2 FLOPs = 1 MAC), plus the
    log-mel filterbank projection counted from its shape (the FFT is not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mel = torch.from_numpy(log_mel(np.zeros(int(seconds * SAMPLE_RATE) + HOP, np.float32)))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(mel[None])
    return (counter.get_total_flops() / 2 + len(mel) * FILTERBANK_MACS_PER_FRAME) / seconds


def save_checkpoint(path: Path, model: Any, meta: dict, backend: Mapping[str, Any] | None = None) -> None:
    """A training checkpoint (.pt): torch tensors, loadable with weights_only."""
    import torch
    from dataclasses import asdict

    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "backend": None if backend is None else {k: torch.as_tensor(v) for k, v in backend.items()},
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def save_weights(path: Path, embedder: Embedder, meta: dict | None = None) -> None:
    """Runtime weights (.npz): float32 arrays and JSON, no pickle; written atomically."""
    arrays = {MODEL_PREFIX + k: v for k, v in embedder.weights.items()}
    arrays.update({f"backend.{k}": v for k, v in (embedder.backend or {}).items()})
    arrays["format"] = np.array(CHECKPOINT_FORMAT)
    arrays["config"] = np.array(json.dumps(embedder.config))
    arrays["meta"] = np.array(json.dumps(meta or {}))
    arrays["fingerprint"] = np.array(embedder.fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _read_npz(path: Path) -> tuple[dict, dict, dict | None, str | None]:
    with np.load(path, allow_pickle=False) as data:
        if int(data["format"]) != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported weights format {int(data['format'])}")
        config = json.loads(str(data["config"]))
        weights = {k[len(MODEL_PREFIX):]: data[k] for k in data.files if k.startswith(MODEL_PREFIX)}
        backend = {k[len("backend."):]: data[k] for k in data.files if k.startswith("backend.")} or None
        fingerprint = str(data["fingerprint"]) if "fingerprint" in data.files else None
    return config, weights, backend, fingerprint


def _read_pt(path: Path) -> tuple[dict, dict, dict | None, str | None]:
    import torch

    raw = path.read_bytes()
    payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"unsupported checkpoint format {payload.get('format')!r}")
    weights = {k: v.float().numpy() for k, v in payload["state_dict"].items()}
    backend = payload.get("backend")
    backend = None if backend is None else {k: v.numpy() for k, v in backend.items()}
    return payload["config"], weights, backend, hashlib.sha256(raw).hexdigest()[:16]


def load_embedder(path: str | Path | None = None) -> Embedder:
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise StreamsvError(f"model weights not found: {path}")
    try:
        config, weights, backend, fingerprint = (_read_pt if path.suffix == ".pt" else _read_npz)(path)
        embedder = Embedder(config, weights, backend, fingerprint)
        if backend is not None and (backend["center"].shape != (embedder.dim,) or backend["whiten"].shape != (embedder.dim,) * 2):
            raise ValueError("backend does not match the embedding size")
    except ModuleNotFoundError as exc:
        raise StreamsvError(f"cannot load model weights {path}: it needs {exc.name}, which is not installed "
                            "(pip install torch; or export a .pt checkpoint with tools/export_weights.py)") from None
    except Exception as exc:  # any unreadable weights file is the user's file problem
        raise StreamsvError(f"cannot load model weights {path}: {exc}") from None
    return embedder
