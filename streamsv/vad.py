"""Speech segmentation: the segment is the unit of context.

Audio of any chunking goes in; out come ``SpeechStart``, ``SpeechAudio`` and
``SpeechEnd`` events. A segment opens after ``start_ms`` of consecutive voiced
frames (with ``padding_ms`` of pre-roll so the first syllable is kept) and
closes after ``hangover_ms`` of unvoiced frames (keeping ``padding_ms`` of the
tail). Pauses shorter than the hangover stay inside the segment.

Whether a 30 ms frame is voiced comes from one of two engines (``vad.engine``):

- ``webrtc``: webrtcvad, then a noise-floor gate. webrtcvad alone calls a large share of a
  steady noise floor speech (white noise at -50 dBFS: ~40% of frames at aggressiveness 2), so a
  segment never closes in a room with a fan. The gate tracks the floor as the minimum frame
  energy over the last ``FLOOR_WINDOW_S`` and passes a frame only if it stands ``snr_db`` above
  it (and above ``ABSOLUTE_FLOOR_DBFS``). 0 turns the gate off.
- ``silero``: the silero-vad ONNX model (MIT, shipped in streamsv/vad_model with its licence),
  on onnxruntime, one 32 ms window at a time, with silero's own hysteresis.

Either way the segmenter keeps the room's noise floor (``noise_floor_dbfs``), from every frame it
hears, and hands each frame's level and the floor to the engine: the webrtc gate's verdict needs
them, and the live decisions lower their bar as a window's speech stands less far above the floor
(pipeline.py, the SNR-aware bar).
"""
from __future__ import annotations

import collections
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union

import numpy as np

from .config import VadConfig
from .features import SAMPLE_RATE

FRAME_MS = 30
FRAME = SAMPLE_RATE * FRAME_MS // 1000   # 480 samples

ENGINES = ("webrtc", "silero")
# Noise-floor gate (webrtc engine).
FLOOR_WINDOW_S = 2.0        # the floor is the quietest frame of this long: speech has a pause (a stop, a breath) within it
FLOOR_BLOCK_FRAMES = 10     # minima are kept per block of frames, so the window costs O(blocks), not O(frames)
ABSOLUTE_FLOOR_DBFS = -70.0  # never speech below this, whatever the floor (digital silence has no floor)
ENERGY_EPS = 1e-12
NO_AUDIO = np.zeros(0, np.float32)
# silero-vad.
SILERO_MODEL = Path(__file__).parent / "vad_model" / "silero_vad.onnx"
SILERO_WINDOW = 512         # samples per call at 16 kHz (the model's fixed input)
SILERO_CONTEXT = 64         # samples of the previous window the model sees first (as silero's own wrapper)
SILERO_STATE_SHAPE = (2, 1, 128)
SILERO_RELEASE = 0.15       # once voiced, a window stays voiced down to threshold - this (silero's hysteresis)
SPEECH_PROBABILITY = 0.5    # speech_share's bar: silero's own default threshold


@dataclass
class SpeechStart:
    t: float                  # stream seconds at the first sample kept (pre-roll included)


@dataclass
class SpeechAudio:
    audio: np.ndarray         # float32, one or more whole frames
    t_end: float              # stream seconds at the last sample
    capture_time: float       # monotonic instant the last sample was captured
    voiced: bool              # False for padding / short pauses inside the segment
    closing: bool = False     # the segment's kept tail, handed over as it closes (a SpeechEnd follows)


@dataclass
class SpeechEnd:
    t: float                  # stream seconds at the end of the kept tail
    duration_s: float         # kept audio seconds in the segment


VadEvent = Union[SpeechStart, SpeechAudio, SpeechEnd]


@dataclass(slots=True)
class _Frame:
    audio: np.ndarray
    t_end: float
    capture_time: float
    voiced: bool


class FrameClassifier(Protocol):
    def is_speech(self, frame: np.ndarray, level_dbfs: float, floor_dbfs: float) -> bool:
        """Whether a 30 ms ``frame`` is speech; its level and the room's floor (which has heard it) come with it."""


def _to_pcm16(audio: np.ndarray) -> bytes:
    # ufuncs, not np.clip: its Python wrapper costs more than the VAD call, 33 times a second.
    scaled = np.minimum(audio, 1.0)
    np.maximum(scaled, -1.0, out=scaled)
    scaled *= 32767.0
    return scaled.astype("<i2").tobytes()


def power_dbfs(energy: float, samples: int) -> float:
    """The mean power of ``samples`` samples whose squares sum to ``energy``, in dB relative to full scale."""
    # math.log10 on the float, not np.log10: numpy's scalar path costs more than the dot, per frame.
    return 10.0 * math.log10(energy / max(samples, 1) + ENERGY_EPS)


def frame_dbfs(frame: np.ndarray) -> float:
    """RMS level of a frame in dB relative to full scale."""
    return power_dbfs(float(np.dot(frame, frame)), len(frame))


class NoiseFloor:
    """The quietest frame level (dBFS) over the last ``window_s``: a running minimum kept per
    block of frames, so a steady fan, hiss or hum is learnt within seconds and followed when it
    changes, while the pauses between words keep speech from being taken for the floor."""

    def __init__(self, window_s: float = FLOOR_WINDOW_S, block_frames: int = FLOOR_BLOCK_FRAMES) -> None:
        n_blocks = max(1, round(window_s * 1000 / FRAME_MS / block_frames))
        self._blocks: collections.deque[float] = collections.deque(maxlen=n_blocks)
        self._block_frames = block_frames
        self._current = np.inf
        self._in_block = 0
        self._blocks_min = np.inf  # min(self._blocks), recomputed once a block, not every frame

    @property
    def level(self) -> float:
        """The floor in dBFS (-inf before the first frame)."""
        lowest = min(self._blocks_min, self._current)
        # math, not numpy: read every frame, and numpy's scalar path costs more than the rest of it
        return lowest if math.isfinite(lowest) else -math.inf

    def hear(self, frame: np.ndarray) -> float:
        """Push ``frame``'s level and return it (dBFS)."""
        level = frame_dbfs(frame)
        self.push(level)
        return level

    def push(self, dbfs: float) -> None:
        self._current = min(self._current, dbfs)
        self._in_block += 1
        if self._in_block >= self._block_frames:
            self._blocks.append(self._current)
            self._blocks_min = min(self._blocks)
            self._current = np.inf
            self._in_block = 0


class WebrtcGated:
    """webrtcvad's verdict, passed only for frames ``snr_db`` above the running noise floor."""

    def __init__(self, aggressiveness: int, snr_db: float) -> None:
        # webrtcvad's C engine, called as its wrapper webrtcvad.Vad calls it: the wrapper module
        # looks its own version up through importlib.metadata when imported, 15-35 ms of CPU in a
        # daemon's ~0.25 s start to READY (docs/performance.md), for a version string.
        import _webrtcvad

        self._engine = _webrtcvad
        self._vad = _webrtcvad.create()
        _webrtcvad.init(self._vad)
        _webrtcvad.set_mode(self._vad, int(aggressiveness))
        self._snr_db = float(snr_db)
        # A frame's int16 conversion through buffers made once, with the bounds as arrays: numpy
        # converts a Python scalar argument on every call, and at 33 frames a second those calls
        # cost more than webrtcvad itself (the same samples as _to_pcm16).
        self._scaled = np.empty(FRAME, np.float32)
        self._full_scale = np.full(FRAME, 32767.0, np.float32)
        self._negative_full_scale = -self._full_scale

    def _pcm16(self, frame: np.ndarray) -> np.ndarray | bytes:
        if len(frame) != FRAME:
            return _to_pcm16(frame)
        scaled = self._scaled
        np.multiply(frame, self._full_scale, out=scaled)
        np.minimum(scaled, self._full_scale, out=scaled)
        np.maximum(scaled, self._negative_full_scale, out=scaled)
        return scaled.astype("<i2")

    def is_speech(self, frame: np.ndarray, level_dbfs: float, floor_dbfs: float) -> bool:
        # webrtcvad hears every frame, gated or not: its own noise model adapts to what it hears.
        pcm = self._pcm16(frame)
        voiced = bool(self._engine.process(self._vad, SAMPLE_RATE, pcm, len(frame)))
        if self._snr_db > 0 and (level_dbfs < ABSOLUTE_FLOOR_DBFS or level_dbfs < floor_dbfs + self._snr_db):
            return False
        return voiced


class Silero:
    """silero-vad on onnxruntime. It needs 512-sample windows; a 30 ms frame takes the verdict
    of the latest complete window (at most 32 ms old), so decisions keep the 30 ms frame grid."""

    def __init__(self, threshold: float, model: Path = SILERO_MODEL) -> None:
        import onnxruntime as ort

        from .embedder import session_options

        if not model.is_file():
            raise FileNotFoundError(f"silero-vad model not found: {model}")
        self._session = ort.InferenceSession(str(model), session_options(1), providers=["CPUExecutionProvider"])
        self._threshold = float(threshold)
        self._state = np.zeros(SILERO_STATE_SHAPE, np.float32)
        self._context = np.zeros(SILERO_CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._sr = np.array(SAMPLE_RATE, np.int64)
        self._voiced = False
        self.probability = 0.0

    def is_speech(self, frame: np.ndarray, level_dbfs: float, floor_dbfs: float) -> bool:
        """silero's own verdict: the level and the floor play no part in it."""
        self._pending = np.concatenate([self._pending, frame])
        while len(self._pending) >= SILERO_WINDOW:
            window, self._pending = self._pending[:SILERO_WINDOW], self._pending[SILERO_WINDOW:]
            self.probability = self._window_probability(window)
            bar = self._threshold - SILERO_RELEASE if self._voiced else self._threshold
            self._voiced = self.probability >= bar
        return self._voiced

    def _window_probability(self, window: np.ndarray) -> float:
        x = np.concatenate([self._context, window])[None, :].astype(np.float32)
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = window[-SILERO_CONTEXT:]
        return float(out[0, 0])

    def probabilities(self, wave: np.ndarray) -> np.ndarray:
        """The speech probability of each whole SILERO_WINDOW of ``wave``, heard from a fresh state
        (the stream's state is left as it was)."""
        kept = self._state, self._context
        self._state, self._context = np.zeros(SILERO_STATE_SHAPE, np.float32), np.zeros(SILERO_CONTEXT, np.float32)
        wave = np.asarray(wave, np.float32)
        try:
            return np.array([self._window_probability(wave[i:i + SILERO_WINDOW])
                             for i in range(0, len(wave) - SILERO_WINDOW + 1, SILERO_WINDOW)], np.float32)
        finally:
            self._state, self._context = kept


@functools.lru_cache(maxsize=1)
def _speech_detector() -> Silero:
    return Silero(SPEECH_PROBABILITY)


def speech_share(pieces: list[np.ndarray]) -> float | None:
    """The share of the 32 ms windows of ``pieces`` (each heard from a fresh state) that
    silero-vad calls speech (probability >= SPEECH_PROBABILITY); None when there is no window.
    A classifier of speech against everything else, where the segmenter only asks what stands
    out of the room: enrollment refuses a recording with too little speech in it."""
    detector = _speech_detector()
    probabilities = [detector.probabilities(p) for p in pieces]
    heard = np.concatenate(probabilities) if probabilities else np.zeros(0, np.float32)
    return float(np.mean(heard >= SPEECH_PROBABILITY)) if len(heard) else None


def frame_classifier(settings: VadConfig) -> FrameClassifier:
    """The engine ``settings.engine`` names, set up from the rest of ``settings``."""
    if settings.engine == "silero":
        return Silero(settings.silero_threshold)
    if settings.engine == "webrtc":
        return WebrtcGated(settings.aggressiveness, settings.snr_db)
    raise ValueError(f"vad engine must be one of {', '.join(ENGINES)}, got {settings.engine!r}")


class Segmenter:
    """Stateful VAD segmenter; feed ``process(chunk, capture_time)``, then ``flush()`` at EOF."""

    def __init__(self, settings: VadConfig = VadConfig()) -> None:
        if not 0 <= settings.aggressiveness <= 3:
            raise ValueError("vad aggressiveness must be 0..3")
        self.settings = settings
        self._classifier = frame_classifier(settings)
        self._floor = NoiseFloor()
        self._start_frames = max(1, -(-settings.start_ms // FRAME_MS))
        self._hang_frames = max(1, -(-settings.hangover_ms // FRAME_MS))
        self._pad_frames = max(0, settings.padding_ms // FRAME_MS)
        self._pending = NO_AUDIO
        self._samples = 0                # frames' samples consumed so far
        self.in_speech = False
        self._history: collections.deque[_Frame] = collections.deque(maxlen=self._pad_frames + self._start_frames)
        self._voiced_run = 0             # voiced frames in a row at the end of _history
        self._tail: list[_Frame] = []    # unvoiced frames since the last voiced one, inside speech
        self._seg_s = 0.0

    @property
    def noise_floor_dbfs(self) -> float:
        """The room's noise floor now (dBFS; -inf before the first frame): the quietest 30 ms frame
        of the last FLOOR_WINDOW_S, whichever engine decides."""
        return self._floor.level

    def process(self, chunk: np.ndarray, capture_time: float) -> list[VadEvent]:
        chunk = np.asarray(chunk, dtype=np.float32)
        buf = np.concatenate([self._pending, chunk]) if len(self._pending) else chunk
        n_frames = len(buf) // FRAME
        events: list[VadEvent] = []
        for i in range(n_frames):
            audio = buf[i * FRAME:(i + 1) * FRAME]
            self._samples += FRAME
            # Samples after this frame in the chunk were captured later than it.
            behind = (len(buf) - (i + 1) * FRAME) / SAMPLE_RATE
            level = self._floor.hear(audio)
            voiced = self._classifier.is_speech(audio, level, self._floor.level)
            frame = _Frame(audio, self._samples / SAMPLE_RATE, capture_time - behind, voiced)
            self._step(frame, events)
        rest = buf[n_frames * FRAME:]
        self._pending = rest.copy() if len(rest) else NO_AUDIO
        return events

    def _step(self, f: _Frame, out: list[VadEvent]) -> None:
        if not self.in_speech:
            self._history.append(f)
            self._voiced_run = self._voiced_run + 1 if f.voiced else 0
            if self._voiced_run >= self._start_frames:
                self.in_speech = True
                self._voiced_run = 0
                kept = list(self._history)
                self._history.clear()
                self._tail = []
                self._seg_s = 0.0
                out.append(SpeechStart(t=kept[0].t_end - FRAME / SAMPLE_RATE))
                self._emit(kept, out)
            return
        if f.voiced:
            if self._tail:
                self._emit(self._tail, out)   # a short pause: keep it, same speaker turn
                self._tail = []
            self._emit([f], out)
            return
        self._tail.append(f)
        if len(self._tail) >= self._hang_frames:
            self._close(out)

    def _emit(self, frames: list[_Frame], out: list[VadEvent], closing: bool = False) -> None:
        if not frames:
            return
        audio = frames[0].audio if len(frames) == 1 else np.concatenate([x.audio for x in frames])
        self._seg_s += len(audio) / SAMPLE_RATE
        last = frames[-1]
        out.append(SpeechAudio(audio, last.t_end, last.capture_time, any(x.voiced for x in frames), closing))

    def _close(self, out: list[VadEvent]) -> None:
        pad = self._tail[: self._pad_frames]
        rest = self._tail[self._pad_frames:]
        self._emit(pad, out, closing=True)
        end_t = pad[-1].t_end if pad else (self._tail[0].t_end - FRAME / SAMPLE_RATE if self._tail else self._samples / SAMPLE_RATE)
        out.append(SpeechEnd(t=end_t, duration_s=self._seg_s))
        self.in_speech = False
        self._tail = []
        self._history.clear()
        # Frames after the kept tail may be the pre-roll of the next segment (unvoiced, as the
        # whole tail is: the voiced run starts again at 0).
        for x in rest[-self._history.maxlen:] if self._history.maxlen else []:
            self._history.append(x)
        self._voiced_run = 0

    def flush(self) -> list[VadEvent]:
        """End of stream: close an open segment (trailing partial frame is dropped)."""
        out: list[VadEvent] = []
        if self.in_speech:
            self._close(out)
        self._pending = NO_AUDIO
        return out


def voiced(wave: np.ndarray, settings: VadConfig = VadConfig()) -> list[np.ndarray]:
    """The speech segments of a whole recording (with padding), in order."""
    seg = Segmenter(settings)
    out: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    for ev in seg.process(np.asarray(wave, dtype=np.float32), 0.0) + seg.flush():
        if isinstance(ev, SpeechAudio):
            cur.append(ev.audio)
        elif isinstance(ev, SpeechEnd) and cur:
            out.append(np.concatenate(cur))
            cur = []
    return out


def voiced_speech(wave: np.ndarray, settings: VadConfig = VadConfig()) -> np.ndarray:
    """A whole recording's speech segments joined into one waveform (empty when there is none):
    what verify scores, calibrate and enroll embed."""
    segments = voiced(wave, settings)
    return np.concatenate(segments) if segments else np.zeros(0, np.float32)


def cost_ms_per_s(wave: np.ndarray, settings: VadConfig = VadConfig(), repeats: int = 3) -> float:
    """Process CPU milliseconds the segmenter spends per second of ``wave`` fed in 30 ms blocks
    (median of ``repeats`` passes, each on a fresh segmenter): what `streamsv bench` prints."""
    import time

    wave = np.asarray(wave, dtype=np.float32)
    costs = []
    for _ in range(max(1, repeats)):
        seg = Segmenter(settings)
        began = time.process_time()
        for i in range(0, len(wave) - FRAME + 1, FRAME):
            seg.process(wave[i:i + FRAME], 0.0)
        costs.append((time.process_time() - began) * 1000.0)
    return float(np.median(costs)) / (len(wave) / SAMPLE_RATE)
