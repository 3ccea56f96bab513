"""Log-mel filterbank features, identical offline and in streaming.

Frames are not centred: frame ``i`` covers samples ``[i * HOP, i * HOP + WINDOW)``, so a
stream that keeps the last partial window produces exactly the frames of the whole file.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

SAMPLE_RATE = 16000
N_FFT = 512
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 80
F_MIN = 20.0
F_MAX = 7600.0
LOG_FLOOR = 1e-6


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=None)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Triangular HTK-scale filters, shape (n_mels, n_fft // 2 + 1)."""
    mel_points = torch.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), n_mels + 2, dtype=torch.float64)
    hz_points = _mel_to_hz(mel_points)
    bin_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0).float()


@lru_cache(maxsize=None)
def _window() -> torch.Tensor:
    return torch.hann_window(WINDOW, periodic=True)


def num_frames(num_samples: int) -> int:
    return 0 if num_samples < WINDOW else (num_samples - WINDOW) // HOP + 1


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """(..., samples) float waveform at 16 kHz -> (..., frames, N_MELS) log-mel energies."""
    if wave.shape[-1] < WINDOW:
        return wave.new_zeros(*wave.shape[:-1], 0, N_MELS)
    frames = wave.unfold(-1, WINDOW, HOP) * _window()
    power = torch.fft.rfft(frames, n=N_FFT).abs().square()
    return torch.log(power @ mel_filterbank().T + LOG_FLOOR)


class StreamingLogMel:
    """Feeds audio of any chunk size; returns only the frames that are complete."""

    def __init__(self) -> None:
        self._pending = torch.zeros(0)

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        audio = torch.cat([self._pending, samples])
        n = num_frames(audio.numel())
        self._pending = audio[n * HOP:]
        return log_mel(audio[: (n - 1) * HOP + WINDOW]) if n else audio.new_zeros(0, N_MELS)
