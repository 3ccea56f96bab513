"""The public embedding API: whole utterances with ``embed``, live audio with ``stream``.

The network runs as ONNX graphs on ONNX Runtime, exported from the one torch definition
(training/model.py) by training/export_weights.py: the streaming step (new log-mel frames and the
stream state in, per-frame head inputs and the new state out) and the pooling head (a window of
those frames in, the unit embedding that is scored out). This module imports neither torch nor
onnx: only onnxruntime and numpy.

A model is a step graph, ``NAME.onnx`` (fp32) or ``NAME.int8.onnx`` (int8 weights), and the
pooling graph beside it, ``NAME.pool.onnx``. The step graph's metadata holds the model config,
the training metadata, the counted parameters and MACs, and the fingerprint that profiles record.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StreamsvError
from .features import SAMPLE_RATE, StreamingLogMel, log_mel

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_NAME = "student"
VARIANT_SUFFIXES = {"fp32": ".onnx", "int8": ".int8.onnx"}
DEFAULT_VARIANT = "fp32"
POOL_SUFFIX = ".pool.onnx"
DEFAULT_WEIGHTS = WEIGHTS_DIR / (MODEL_NAME + VARIANT_SUFFIXES[DEFAULT_VARIANT])
MODEL_FORMAT = 2  # 1 was the .npz of the numpy runtime
DEFAULT_THREADS = 1  # a Pi runs other things; a push's matrices are too small for more to pay
FRAMES_PER_SECOND = 50  # encoder frames (20 ms) per second of audio
MEL_FRAMES_PER_FRAME = 2  # the stem stacks pairs of 10 ms log-mel frames
MAX_STEP_FRAMES = 64  # longer pushes run as several steps: token mixing grows with a step squared
MIN_AUDIO_S = 0.1  # below this an embedding is mostly noise
STEP_INPUTS = ("mel", "position", "state")   # the graphs' inputs, as training/model.py exports them
POOL_INPUTS = ("features", "logits")
WINDOW_BUFFER_WINDOWS = 2  # a stream's frame buffer holds this many windows: one shift per window of pushes
ORT_LOG_ERRORS_ONLY = 3  # onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
# The model's graphs come pre-optimised from training/export_weights.py (its portable fusions and
# constant folding), so a load optimises nothing more: on the shipped fp32 and int8 steps
# ORT_ENABLE_ALL and ORT_DISABLE_ALL give identical outputs and the same step time, and the
# optimiser's passes cost ~7 ms of CPU per start (session 20.7 -> 13.7 ms, x86-64; docs/performance.md).
# A graph that was not pre-optimised still runs right, only slower.
MODEL_GRAPH_OPTIMIZATION = "ORT_DISABLE_ALL"


@dataclass
class StreamState:
    """One stream's place in the encoder: the graph's state tensor, the 20 ms frames encoded
    so far, and a 10 ms log-mel frame waiting for its pair."""

    tensor: np.ndarray
    position: int
    mel_pending: np.ndarray


def session_options(threads: int = DEFAULT_THREADS, optimization: str = "ORT_ENABLE_ALL") -> Any:
    """ONNX Runtime settings for a small streaming step: ``threads`` intra-op threads and one
    inter-op thread (the graph is a chain), sequential execution, the graph optimisation level
    named by ``optimization`` (every one by default; MODEL_GRAPH_OPTIMIZATION for the model's
    pre-optimised graphs), and no spinning worker threads burning a core between pushes."""
    import onnxruntime as ort

    # The process-wide logger too, not only the session's: its warnings (a HOME it cannot write
    # telemetry to, the host's CPU) come on stderr in colour and spoil the one-line error contract.
    ort.set_default_logger_severity(ORT_LOG_ERRORS_ONLY)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = ORT_LOG_ERRORS_ONLY
    return opts


class OnnxEncoder:
    """The two graphs in sessions. ``encode`` maps log-mel frames to per-frame head inputs,
    advancing a stream's state; ``embed_window`` pools a window of them into the unit embedding."""

    def __init__(self, step: bytes | str, pool: bytes | str, threads: int = DEFAULT_THREADS):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        options = session_options(threads, MODEL_GRAPH_OPTIMIZATION)
        self.step = ort.InferenceSession(step, options, providers=providers)
        self.pool = ort.InferenceSession(pool, options, providers=providers)
        inputs = {i.name: i for i in self.step.get_inputs()}
        for session, names, what in ((self.step, STEP_INPUTS, "step"), (self.pool, POOL_INPUTS, "pooling")):
            given = {i.name for i in session.get_inputs()}
            if not set(names) <= given:
                raise ValueError(f"not a streamsv {what} graph (its inputs are {', '.join(sorted(given))}, "
                                 f"expected {', '.join(names)})")
        self.state_shape = tuple(inputs["state"].shape)
        self.n_mels = int(inputs["mel"].shape[1])
        self.metadata = dict(self.step.get_modelmeta().custom_metadata_map)

    def new_state(self) -> StreamState:
        return StreamState(np.zeros(self.state_shape, np.float32), 0, np.zeros((0, self.n_mels), np.float32))

    def encode(self, mel: np.ndarray, state: StreamState) -> tuple[np.ndarray, np.ndarray]:
        """Log-mels (frames, n_mels) -> (features, attention logits), both (frames/2, width)."""
        mel = np.concatenate([state.mel_pending, np.asarray(mel, np.float32)]) if len(state.mel_pending) else mel
        usable = len(mel) - len(mel) % MEL_FRAMES_PER_FRAME
        state.mel_pending = mel[usable:]
        features, logits = [], []
        for start in range(0, usable, MAX_STEP_FRAMES * MEL_FRAMES_PER_FRAME):
            piece = np.ascontiguousarray(mel[start:min(usable, start + MAX_STEP_FRAMES * MEL_FRAMES_PER_FRAME)], np.float32)
            f, lg, state.tensor = self.step.run(None, {"mel": piece, "position": np.array(state.position, np.int64),
                                                       "state": state.tensor})
            state.position += len(f)
            features.append(f)
            logits.append(lg)
        if not features:
            empty = np.zeros((0, self.state_shape[1]), np.float32)
            return empty, empty
        return (features[0], logits[0]) if len(features) == 1 else (np.concatenate(features), np.concatenate(logits))

    def embed_window(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return self.pool.run(None, {"features": features, "logits": logits})[0]


class EmbeddingStream:
    """Streaming state for one speech segment: push audio, read the rolling embedding.

    Each push runs the encoder on the new audio only (its convolution context, chunk history
    and running statistics are carried), so the cost per second of audio is constant. The
    embedding pools the most recent ``window_s`` seconds of encoder frames.

    The frames live in one preallocated buffer per output, filled from the front: a window is a
    contiguous slice handed to the pooling graph as it is (no joining of pushes per hop), and the
    last window's frames move to the front only when the buffer is full.
    """

    def __init__(self, embedder: "Embedder", window_s: float):
        self._encoder = embedder.encoder
        self._max_frames = max(1, round(window_s * FRAMES_PER_SECOND))
        self._capacity = WINDOW_BUFFER_WINDOWS * self._max_frames
        self._features_buf: np.ndarray | None = None   # (capacity, width): allocated at the first frames
        self._logits_buf: np.ndarray | None = None
        self.compute_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        self._mel = StreamingLogMel()
        self._state = self._encoder.new_state()
        self._frames = 0   # frames held, buffer[:_frames]: at least the window's worth once streamed

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
        if self._features_buf is None:
            self._features_buf = np.empty((self._capacity, *features.shape[1:]), np.float32)
            self._logits_buf = np.empty((self._capacity, *logits.shape[1:]), np.float32)
        new = len(features)
        if new >= self._max_frames:  # a push of a window or more: the window is its last frames
            features, logits, new, self._frames = features[-self._max_frames:], logits[-self._max_frames:], self._max_frames, 0
        elif self._frames + new > self._capacity:  # full: the frames the window still needs go to the front
            keep = min(self._frames, self._max_frames - new)
            start = self._frames - keep
            self._features_buf[:keep] = self._features_buf[start:self._frames]
            self._logits_buf[:keep] = self._logits_buf[start:self._frames]
            self._frames = keep
        self._features_buf[self._frames:self._frames + new] = features
        self._logits_buf[self._frames:self._frames + new] = logits
        self._frames += new

    def embedding(self) -> np.ndarray | None:
        return self._pool(self._max_frames)

    def recent_embedding(self, seconds: float) -> np.ndarray | None:
        """The embedding of the stream's last ``seconds`` (at most its window), pooled from the
        frames already encoded: one pooling and no model step, where ``Embedder.embed`` on that
        audio costs a step over all of it. Not the same function: these frames carry the context
        of the segment before them (the running mean, the chunk and convolution history)."""
        return self._pool(min(self._max_frames, max(1, round(seconds * FRAMES_PER_SECOND))))

    def _pool(self, frames: int) -> np.ndarray | None:
        if min(frames, self._frames) < MIN_AUDIO_S * FRAMES_PER_SECOND:
            return None
        started = time.perf_counter()
        first = max(0, self._frames - frames)
        vector = self._encoder.embed_window(self._features_buf[first:self._frames], self._logits_buf[first:self._frames])
        self.compute_seconds += time.perf_counter() - started
        return vector


class Embedder:
    """A model's encoder and what profiles need to know about it (fingerprint, dimension)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: Any, fingerprint: str, config: dict, info: dict | None = None):
        self.encoder = encoder
        self.fingerprint = fingerprint
        self.config = dict(config)
        self.info = dict(info or {})  # counted figures, variant, training metadata
        self.dim = int(self.config["embedding_dim"])

    @classmethod
    def from_onnx(cls, step: bytes | str, pool: bytes | str, threads: int = DEFAULT_THREADS) -> "Embedder":
        encoder = OnnxEncoder(step, pool, threads)
        meta = encoder.metadata
        if int(meta.get("format", -1)) != MODEL_FORMAT:
            raise ValueError(f"unsupported model format {meta.get('format')!r} (expected {MODEL_FORMAT})")
        info = json.loads(meta.get("info", "{}"))
        return cls(encoder, meta["fingerprint"], json.loads(meta["config"]), info)

    @property
    def num_parameters(self) -> int | None:
        return self.info.get("parameters")

    @property
    def macs_per_second(self) -> float | None:
        """Counted at export by torch's FLOP counter on the trained model (the function's arithmetic)."""
        return self.info.get("macs_per_second")

    @property
    def variant(self) -> str:
        return self.info.get("variant", DEFAULT_VARIANT)

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
        return self.encoder.embed_window(features, logits)

    def stream(self, window_s: float = 3.0) -> EmbeddingStream:
        return EmbeddingStream(self, window_s)


def model_paths(path: str | Path | None = None, variant: str | None = None) -> tuple[Path, Path]:
    """(step graph, pooling graph) of a model: the shipped one in ``variant`` when ``path`` is
    None; else ``path`` (a step graph) and the ``.pool.onnx`` beside it."""
    if path is None:
        variant = variant or DEFAULT_VARIANT
        if variant not in VARIANT_SUFFIXES:
            raise StreamsvError(f"unknown model variant {variant!r}; expected one of {', '.join(VARIANT_SUFFIXES)}")
        step = WEIGHTS_DIR / (MODEL_NAME + VARIANT_SUFFIXES[variant])
    else:
        step = Path(path)
    if step.suffix in (".pt", ".npz"):
        raise StreamsvError(f"{step}: a training checkpoint, not a model streamsv runs; export it first: "
                            f"python -m training.export_weights {step} OUT_DIR")
    return step, step.with_name(step.name.split(".")[0] + POOL_SUFFIX)


def load_embedder(path: str | Path | None = None, variant: str | None = None, threads: int = DEFAULT_THREADS) -> Embedder:
    """The shipped model (``variant`` fp32 or int8), or the step graph at ``path``."""
    step, pool = model_paths(path, variant)
    for p in (step, pool):
        if p.is_dir():
            raise StreamsvError(f"{p}: a folder, not a model file (give the step graph, NAME.onnx)")
        if not p.is_file():
            raise StreamsvError(f"model file not found: {p}")
    try:
        return Embedder.from_onnx(str(step), str(pool), threads)
    except ModuleNotFoundError as exc:
        raise StreamsvError(f"cannot load model {step}: it needs {exc.name}, which is not installed") from None
    except Exception as exc:  # any unreadable model file is the user's file problem
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StreamsvError(f"cannot load model {step}: {message}") from None
