"""training/train.py: the augmentations and the loss split between labelled and unlabeled crops
(synthetic audio only: no shared data, no teacher)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")
pytestmark = pytest.mark.torch  # the training side: runs where torch is installed
from training import datasets  # noqa: E402
from training import train  # noqa: E402

SR = 16000


def _power_above(wave: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    return float(spectrum[np.fft.rfftfreq(len(wave), 1 / SR) > hz].sum() / spectrum.sum())


def test_trim_silence_cuts_the_pauses_around_the_word():
    rng = np.random.default_rng(0)
    word = (rng.standard_normal(SR // 2) * 0.2).astype(np.float32)
    hiss = (rng.standard_normal(SR) * 0.0005).astype(np.float32)  # -52 dB below the word
    trimmed = train.trim_silence(np.concatenate([hiss, word, hiss]))
    pad = int(train.TRIM_PAD_S * SR)
    assert len(word) <= len(trimmed) <= len(word) + 2 * pad + 2 * SR // 100
    assert len(train.trim_silence(word)) == len(word)


def test_telephone_band_removes_the_high_band_and_keeps_the_length():
    wave = (np.random.default_rng(1).standard_normal(SR) * 0.1).astype(np.float32)
    out = train.telephone_band(wave)
    assert out.shape == wave.shape and np.isfinite(out).all()
    assert _power_above(wave, 3800) > 0.4 and _power_above(out, 3800) < 0.02


def test_resample_by_shifts_the_pitch_by_the_factor():
    t = np.arange(2 * SR) / SR
    tone = np.sin(2 * np.pi * 200 * t)
    out = train.resample_by(tone, 1.25, SR)
    assert len(out) == SR
    peak = np.fft.rfftfreq(SR, 1 / SR)[np.argmax(np.abs(np.fft.rfft(out)))]
    assert peak == pytest.approx(250, abs=2)


def _sampler(recipe: train.Recipe) -> train.CropSampler:
    rng = np.random.default_rng(0)
    utts = ([datasets.Utterance(f"so/{i % 3}", Path(f"/so/{i}"), "so") for i in range(9)]
            + [datasets.Utterance(f"asc/{i % 2}", Path(f"/asc/{i}"), "asc") for i in range(8)]
            + [datasets.Utterance(f"ls/{i}", Path(f"/ls/{i}"), "ls") for i in range(3)]
            + [datasets.Utterance(f"unl/w/{i}", Path(f"/unl/{i}"), "unl") for i in range(6)])
    waves = [(rng.standard_normal(int(rng.uniform(0.8, 4) * SR)) * 0.1).astype(np.float32) for _ in utts]
    targets = rng.standard_normal((len(utts), 256)).astype(np.float32)
    noises = [(rng.standard_normal(2 * SR) * 0.1).astype(np.float32)]
    return train.CropSampler(utts, waves, targets, noises, recipe, np.zeros(train.N_MELS, np.float32))


def test_sampler_labels_only_labelled_speakers_and_is_seeded():
    recipe = train.Recipe(batch=48)
    a, b = _sampler(recipe), _sampler(recipe)
    assert a.n_speakers == 3 + 2 + 3  # unlabeled clips are no AAM classes
    mels, labels, targets = a.batch()
    mels_b, labels_b, _ = b.batch()
    assert mels.shape[0] == 48 and mels.shape[2] == train.N_MELS and targets.shape == (48, 256)
    assert torch.isfinite(mels).all()
    assert (labels == -1).any() and (labels >= 0).any() and labels.max() < a.n_speakers
    assert torch.equal(mels, mels_b) and torch.equal(labels, labels_b)
    assert torch.allclose(targets.norm(dim=1), torch.ones(48))


def test_aam_sees_only_labelled_crops():
    from training.model import ModelDimensions

    torch.manual_seed(0)
    recipe = train.Recipe()
    model = train.Distiller(ModelDimensions(), 4, recipe)
    mel = torch.randn(3, 60, train.N_MELS)
    targets = torch.nn.functional.normalize(torch.randn(3, 256), dim=1)
    _, aam_unlabeled = model(mel, torch.tensor([-1, -1, -1]), targets, 0.2)
    assert aam_unlabeled.item() == 0.0
    _, aam_mixed = model(mel, torch.tensor([2, -1, -1]), targets, 0.2)
    _, aam_first = model(mel[:1], torch.tensor([2]), targets[:1], 0.2)
    assert aam_mixed.item() == pytest.approx(aam_first.item(), rel=1e-5)


def test_training_files_never_name_the_dev_only_set():
    # The research-use dev set must not be trained on: the training code does not even name it.
    assert datasets.OUT_OF_DOMAIN_SETS
    for name in datasets.OUT_OF_DOMAIN_SETS:
        assert name not in Path(train.__file__).read_text().lower()
