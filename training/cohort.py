"""Adaptive s-norm (AS-norm) of cosine scores against a cohort of training speakers (issue 9).

A raw cosine means different things for different voices and channels: an embedding that sits in
a crowded part of the space scores high against everyone. AS-norm measures, for each side of a
trial, how that embedding scores against the K cohort entries most like it, and expresses the
trial's cosine in those units (Matejka et al., Interspeech 2017):

    s' = ((s - mu_left) / sd_left + (s - mu_right) / sd_right) / 2

mu / sd: mean and standard deviation of that side's top-K cosines to the cohort.

The cohort is one mean embedding per labelled training speaker (speechocean762 train, ASC train,
LibriSpeech train-clean-100: 369 speakers), never a dev speaker and never urdu, so nothing of
the evaluated voices leaks into it. Two kinds:
  clean     the speakers' clips as recorded (369 entries);
  channels  the same clips also through the TRAINING augmentations (train.py's mu-law telephone
            channel and resampling pitch shift; a room and a training-noise class), one mean per
            speaker and channel (4 x 369 entries), so a telephone or noisy trial finds cohort
            entries of its own channel among its top K. The eval's degradations (Opus telephone,
            phase-vocoder pitch, held-out noise classes) are not used, so the cohort does not
            know the test channels exactly.
`python -m training.eval --snorm` scores every neural system with and without it in one run.
"""
from __future__ import annotations

import zlib

import numpy as np

from training import datasets

COHORT_KINDS = ("clean", "channels")
CHANNELS = ("clean", "telephone", "noisy", "pitch")  # "channels" cohort: one entry per speaker and channel
CLIPS_PER_SPEAKER = 8  # evenly spaced through the speaker's clips by name; LibriSpeech train has 1 each
DEFAULT_TOP_K = 100
MIN_SD = 1e-4  # a side whose top-K cosines are all equal must not divide by ~0
NOISY_SNR_DB = (5.0, 15.0)
PITCH_SEMITONES = (1.0, 3.0)  # magnitude; the sign is drawn too (resampling: tempo moves with it)
CHANNEL_VERSION = "v1"  # bump when a channel's audio changes: it keys the embedding cache


# ---------------------------------------------------------------- the normalisation (pure)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def speaker_means(emb: np.ndarray, speakers: list[str]) -> np.ndarray:
    """One unit-length mean of unit embeddings per speaker, in order of first appearance."""
    emb, spk = _unit(emb), np.asarray(speakers)
    return np.stack([_unit(emb[spk == s].mean(axis=0)) for s in dict.fromkeys(speakers)])


def top_k_stats(emb: np.ndarray, cohort: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `emb`: mean and standard deviation of its `top_k` highest cosines to the cohort."""
    if not 1 <= top_k <= len(cohort):
        raise ValueError(f"top_k must be in 1..{len(cohort)} (the cohort's size), not {top_k}")
    cos = _unit(emb) @ _unit(cohort).T
    top = -np.partition(-cos, top_k - 1, axis=1)[:, :top_k]
    return top.mean(axis=1), np.maximum(top.std(axis=1), MIN_SD)


def as_norm(scores: np.ndarray, left: np.ndarray, right: np.ndarray, cohort: np.ndarray,
            top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """AS-norm of a score matrix whose [i, j] is the cosine of left[i] and right[j]."""
    mu_l, sd_l = top_k_stats(left, cohort, top_k)
    mu_r, sd_r = top_k_stats(right, cohort, top_k)
    return 0.5 * ((scores - mu_l[:, None]) / sd_l[:, None] + (scores - mu_r[None, :]) / sd_r[None, :])


# ---------------------------------------------------------------- the cohort


def cohort_clips(utts: list[datasets.Utterance], per_speaker: int = CLIPS_PER_SPEAKER) -> list[datasets.Utterance]:
    """Up to `per_speaker` clips per speaker, evenly spaced through the speaker's clips sorted by
    name (deterministic; spread over sessions and keywords instead of the first few)."""
    by_speaker: dict[str, list[datasets.Utterance]] = {}
    for u in sorted(utts, key=lambda u: (u.speaker, u.path.name)):
        by_speaker.setdefault(u.speaker, []).append(u)
    out = []
    for clips in by_speaker.values():
        picks = range(len(clips)) if len(clips) <= per_speaker else np.linspace(0, len(clips) - 1, per_speaker).round().astype(int)
        out += [clips[i] for i in picks]
    return out


def training_cohort_clips(root=None) -> list[datasets.Utterance]:
    """The cohort's clips, from the labelled training sets only; refuses (ValueError) if a dev or
    out-of-domain speaker would be in it."""
    clips = cohort_clips(datasets.training_utterances(root))
    leaked = {u.speaker for u in clips} & datasets.dev_speakers(root)
    if leaked or any(u.corpus in ("urdu", "unl") for u in clips):
        raise ValueError(f"cohort would hold dev or unlabeled speakers: {sorted(leaked)[:5]}")
    return clips


def channel_audio(wave: np.ndarray, channel: str, rng: np.random.Generator, noises: list[np.ndarray]) -> np.ndarray:
    """A training clip through one cohort channel (training-side augmentations, see the module doc)."""
    from training.eval import mix_at_snr, reverberate
    from training.train import resample_by, telephone_band

    wave = np.asarray(wave, np.float64)
    if channel == "clean":
        out = wave
    elif channel == "telephone":
        out = telephone_band(wave)
    elif channel == "noisy":
        out = mix_at_snr(reverberate(wave, rng), noises[int(rng.integers(len(noises)))], rng.uniform(*NOISY_SNR_DB), rng)
    elif channel == "pitch":
        factor = 2 ** (rng.uniform(*PITCH_SEMITONES) * rng.choice([-1.0, 1.0]) / 12)
        out = resample_by(wave, factor, int(len(wave) / factor) - 1)
    else:
        raise ValueError(f"unknown cohort channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    peak = np.abs(out).max() if len(out) else 0.0
    return (out / peak if peak > 1.0 else out).astype(np.float32)


def cohort_embeddings(system, kind: str, use_cache: bool = True) -> np.ndarray:
    """The cohort matrix of one system: one unit mean per training speaker (and channel).
    Embeddings are cached under cache/eval like the dev sets' (set name 'cohort-train')."""
    from training.eval import _clip_keys, embeddings

    if kind not in COHORT_KINDS:
        raise ValueError(f"unknown cohort {kind!r}; expected one of {', '.join(COHORT_KINDS)}")
    clips = training_cohort_clips()
    speakers = [u.speaker for u in clips]
    channels = CHANNELS if kind == "channels" else ("clean",)
    noises: list[np.ndarray] = []
    parts = []
    for channel in channels:
        def waves_for(channel=channel):
            if channel == "noisy" and not noises:
                noises.extend(w for w in (datasets.read_audio(p) for p in datasets.noise_files("train")) if np.mean(w**2) > 1e-7)
            return [channel_audio(datasets.read_audio(u.path), channel, np.random.default_rng(zlib.crc32(f"cohort|{channel}|{key}".encode())), noises)
                    for u, key in zip(clips, _clip_keys(clips))]

        condition = "clean" if channel == "clean" else f"cohort-{channel}-{CHANNEL_VERSION}"
        emb = embeddings(system, "cohort-train", condition, "full", clips, None, use_cache,
                         None if channel == "clean" else waves_for)
        parts.append(speaker_means(emb, speakers))
    return np.concatenate(parts)
