"""Speech segmentation with webrtcvad: the segment is the unit of context.

Audio of any chunking goes in; out come ``SpeechStart``, ``SpeechAudio`` and
``SpeechEnd`` events. A segment opens after ``start_ms`` of consecutive voiced
frames (with ``padding_ms`` of pre-roll so the first syllable is kept) and
closes after ``hangover_ms`` of unvoiced frames (keeping ``padding_ms`` of the
tail). Pauses shorter than the hangover stay inside the segment.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Union

import numpy as np

from .config import VadConfig

SAMPLE_RATE = 16000
# The settings are the [vad] section of the config: one definition of the fields.
VadSettings = VadConfig

FRAME_MS = 30
FRAME = SAMPLE_RATE * FRAME_MS // 1000   # 480 samples


@dataclass
class SpeechStart:
    t: float                  # stream seconds at the first sample kept (pre-roll included)


@dataclass
class SpeechAudio:
    audio: np.ndarray         # float32, one or more whole frames
    t_end: float              # stream seconds at the last sample
    capture_time: float       # monotonic instant the last sample was captured
    voiced: bool              # False for padding / short pauses inside the segment


@dataclass
class SpeechEnd:
    t: float                  # stream seconds at the end of the kept tail
    duration_s: float         # kept audio seconds in the segment


VadEvent = Union[SpeechStart, SpeechAudio, SpeechEnd]


@dataclass
class _Frame:
    audio: np.ndarray
    t_end: float
    capture_time: float
    voiced: bool


def _to_pcm16(audio: np.ndarray) -> bytes:
    # ufuncs, not np.clip: its Python wrapper costs more than the VAD call, 33 times a second.
    scaled = np.minimum(audio, 1.0)
    np.maximum(scaled, -1.0, out=scaled)
    scaled *= 32767.0
    return scaled.astype("<i2").tobytes()


class Segmenter:
    """Stateful VAD segmenter; feed ``process(chunk, capture_time)``, then ``flush()`` at EOF."""

    def __init__(self, settings: VadSettings = VadSettings()) -> None:
        import webrtcvad

        if not 0 <= settings.aggressiveness <= 3:
            raise ValueError("vad aggressiveness must be 0..3")
        self.settings = settings
        self._vad = webrtcvad.Vad(int(settings.aggressiveness))
        self._start_frames = max(1, -(-settings.start_ms // FRAME_MS))
        self._hang_frames = max(1, -(-settings.hangover_ms // FRAME_MS))
        self._pad_frames = max(0, settings.padding_ms // FRAME_MS)
        self._pending = np.zeros(0, dtype=np.float32)
        self._samples = 0                # frames' samples consumed so far
        self.in_speech = False
        self._history: collections.deque[_Frame] = collections.deque(maxlen=self._pad_frames + self._start_frames)
        self._tail: list[_Frame] = []    # unvoiced frames since the last voiced one, inside speech
        self._seg_s = 0.0

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
            pcm = _to_pcm16(audio)
            voiced = bool(self._vad.is_speech(pcm, SAMPLE_RATE))
            frame = _Frame(audio, self._samples / SAMPLE_RATE, capture_time - behind, voiced)
            self._step(frame, events)
        self._pending = buf[n_frames * FRAME:].copy()
        return events

    def _step(self, f: _Frame, out: list[VadEvent]) -> None:
        if not self.in_speech:
            self._history.append(f)
            recent = list(self._history)[-self._start_frames:]
            if len(recent) == self._start_frames and all(x.voiced for x in recent):
                self.in_speech = True
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

    def _emit(self, frames: list[_Frame], out: list[VadEvent]) -> None:
        if not frames:
            return
        audio = frames[0].audio if len(frames) == 1 else np.concatenate([x.audio for x in frames])
        self._seg_s += len(audio) / SAMPLE_RATE
        last = frames[-1]
        out.append(SpeechAudio(audio, last.t_end, last.capture_time, any(x.voiced for x in frames)))

    def _close(self, out: list[VadEvent]) -> None:
        pad = self._tail[: self._pad_frames]
        rest = self._tail[self._pad_frames:]
        self._emit(pad, out)
        end_t = pad[-1].t_end if pad else (self._tail[0].t_end - FRAME / SAMPLE_RATE if self._tail else self._samples / SAMPLE_RATE)
        out.append(SpeechEnd(t=end_t, duration_s=self._seg_s))
        self.in_speech = False
        self._tail = []
        self._history.clear()
        # Frames after the kept tail may be the pre-roll of the next segment.
        for x in rest[-self._history.maxlen:] if self._history.maxlen else []:
            self._history.append(x)

    def flush(self) -> list[VadEvent]:
        """End of stream: close an open segment (trailing partial frame is dropped)."""
        out: list[VadEvent] = []
        if self.in_speech:
            self._close(out)
        self._pending = np.zeros(0, dtype=np.float32)
        return out


def voiced(wave: np.ndarray, settings: VadSettings = VadSettings()) -> list[np.ndarray]:
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
