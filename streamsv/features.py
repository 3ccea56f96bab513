"""Log-mel filterbank features, identical offline and in streaming (numpy, float32).

Frames are not centred: frame ``i`` covers samples ``[i * HOP, i * HOP + WINDOW)``, so a
stream that keeps the last partial window produces exactly the frames of the whole file.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 512
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 80
F_MIN = 20.0
F_MAX = 7600.0
LOG_FLOOR = 1e-6
FILTERBANK_MACS_PER_FRAME = (N_FFT // 2 + 1) * N_MELS  # the projection onto the mel filters


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=None)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular HTK-scale filters, shape (n_mels, n_fft // 2 + 1)."""
    mel_points = np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    bin_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0, None).astype(np.float32)


@lru_cache(maxsize=None)
def _window() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)).astype(np.float32)  # periodic Hann


@lru_cache(maxsize=None)
def _filterbank_t() -> np.ndarray:
    return np.ascontiguousarray(mel_filterbank().T)


def num_frames(num_samples: int) -> int:
    return 0 if num_samples < WINDOW else (num_samples - WINDOW) // HOP + 1


def log_mel(wave: np.ndarray) -> np.ndarray:
    """(..., samples) float waveform at 16 kHz -> (..., frames, N_MELS) float32 log-mel energies."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    n = num_frames(wave.shape[-1])
    if n == 0:
        return np.zeros((*wave.shape[:-1], 0, N_MELS), np.float32)
    # Frame i is a view of samples [i * HOP, i * HOP + WINDOW), made by the ndarray constructor:
    # sliding_window_view's Python costs more than the FFT when a model step has just run (cold
    # caches, as in the daemon: ~0.1 ms of a hop's ~0.3 ms log-mel).
    item = wave.itemsize
    frames = np.ndarray((*wave.shape[:-1], n, WINDOW), np.float32, buffer=wave,
                        strides=(*wave.strides[:-1], HOP * item, item))
    # The windowed frames are written straight into the zero-padded FFT input, and the later steps
    # work in place: the same arithmetic as rfft(frames * window, n=N_FFT) and |X|^2 (bit for bit),
    # with fewer (frames, 512)-sized temporaries.
    padded = np.zeros((*frames.shape[:-1], N_FFT), np.float32)
    np.multiply(frames, _window(), out=padded[..., :WINDOW])
    spectrum = np.fft.rfft(padded)
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    mel = power.astype(np.float32, copy=False) @ _filterbank_t()  # numpy 1.x's rfft is complex128
    mel += np.float32(LOG_FLOOR)
    return np.log(mel, out=mel)


class StreamingLogMel:
    """Feeds audio of any chunk size; returns only the frames that are complete."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        audio = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        n = num_frames(audio.size)
        self._pending = audio[n * HOP:]
        return log_mel(audio[: (n - 1) * HOP + WINDOW]) if n else np.zeros((0, N_MELS), np.float32)
