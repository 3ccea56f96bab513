"""The log-mel front end: its in-place form computes the textbook expression bit for bit (the
training features and the shipped model's inputs did not move when it was made cheaper)."""
from __future__ import annotations

import numpy as np
import pytest

from streamsv import features
from streamsv.features import HOP, LOG_FLOOR, N_FFT, N_MELS, WINDOW, log_mel


def _expression_log_mel(wave: np.ndarray) -> np.ndarray:
    """log(|rfft(frames * window, n=N_FFT)|^2 @ filters + floor), written as one expression."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.shape[-1] < WINDOW:
        return np.zeros((*wave.shape[:-1], 0, N_MELS), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(wave, WINDOW, axis=-1)[..., ::HOP, :] * features._window()
    spectrum = np.fft.rfft(frames, n=N_FFT)
    power = np.square(spectrum.real) + np.square(spectrum.imag)
    return np.log(power.astype(np.float32) @ features._filterbank_t() + np.float32(LOG_FLOOR))


def _speechlike(samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    envelope = np.repeat(rng.uniform(0, 1, samples // 800 + 1), 800)[:samples]
    return (0.1 * envelope * rng.standard_normal(samples)).astype(np.float32)


@pytest.mark.parametrize("samples", [0, WINDOW - 1, WINDOW, WINDOW + HOP - 1, 8240, 16000 * 3 + 77])
def test_log_mel_is_the_expression_bit_for_bit(samples):
    wave = _speechlike(samples, seed=samples)
    got, want = log_mel(wave), _expression_log_mel(wave)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)


def test_batched_log_mel_is_each_row_bit_for_bit():
    batch = np.stack([_speechlike(12000, seed) for seed in range(3)])
    got = log_mel(batch)
    assert got.shape == (3, (12000 - WINDOW) // HOP + 1, N_MELS)
    assert np.array_equal(got, _expression_log_mel(batch))
    for row, wave in zip(got, batch):
        assert np.array_equal(row, log_mel(wave))


def test_log_mel_of_silence_is_the_floor():
    assert np.allclose(log_mel(np.zeros(N_FFT * 4, np.float32)), np.log(np.float32(LOG_FLOOR)))

