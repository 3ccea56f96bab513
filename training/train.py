"""Train the SV-Mixer student: one-stage distillation plus fine-tuning (OS-KDFT, adapted).

    python -m training.train --out runs/mixer                       # the recipe (CPU)
    python -m training.train --out runs/transformer --arch transformer   # the ablation
    python -m training.train --out runs/mixer --resume              # continue after a stop

The frozen Resemblyzer teacher embeds each clean training utterance once (cached under
``cache/``), labelled or not (shared/data/unlabeled: wake words and coffee orders, silence
trimmed). The student sees augmented crops of it (pitch and tempo, by resampling or with the
formants kept; reverberation, noise, telephone band with mu-law, gain; on the log-mels a random
microphone EQ and a frequency mask)
and learns two things at once: to land near the teacher's CLEAN utterance embedding through a
linear distillation head (1 - cosine), on every crop, and to separate the labelled training
speakers with an additive-angular-margin softmax on its own embedding, on labelled crops only (with
``--pseudo-speakers``, also on unlabeled clips clustered into voices). Progress prints every few steps; a
checkpoint is written every ``--checkpoint-every`` steps so a stopped run resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

from streamsv.features import N_MELS, SAMPLE_RATE, log_mel
from training import datasets
from training.eval import TELEPHONE_BAND_HZ, TELEPHONE_RATE  # the one telephone channel, trained on and evaluated
from training.model import CHECKPOINT_FORMAT, ModelDimensions, SpeakerEncoder, count_parameters, resize_blocks

REPO = Path(__file__).resolve().parents[1]

CACHE = REPO / "cache"
ASC_CLIPS_PER_ITEM = 3  # ASC clips are 1 s keywords: join three of one speaker
CORPUS_WEIGHTS = {"so": 0.25, "asc": 0.15, "ls": 0.2, "unl": 0.4}  # sampling share of each corpus per batch
LABELLED_CORPORA = ("so", "asc", "ls")
TRIM_FLOOR_DB = -35.0  # unlabeled clips: keep from the first to the last frame within 35 dB of the loudest
TRIM_PAD_S = 0.15
PSEUDO_SPEAKER_MIN_CLIPS = 8  # a smaller cluster stays distillation only: too few clips to trust as one voice
PSEUDO_SPEAKER_PREFIX = "unl-voice/"
MU_LAW_MU = 255.0
ENVELOPE_FFT = 512  # keep_formants: 32 ms frames,
ENVELOPE_HOP = 128  # a quarter apart,
ENVELOPE_LIFTER = 24  # cepstral bins kept: 1.5 ms, under a 400 Hz child's pitch period (40 samples)
ENVELOPE_FLOOR = 1e-3  # -60 dB
ENVELOPE_MAX_GAIN = np.log(10.0)  # +-20 dB at most, so a silent band is not blown up into noise
_TELEPHONE_SOS = butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=TELEPHONE_RATE, output="sos")


@dataclass
class Recipe:
    steps: int = 2400
    batch: int = 64
    min_crop_s: float = 1.0
    max_crop_s: float = 2.5
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 150
    aam_weight: float = 0.2  # AAM on the labelled crops only; the teacher carries the unlabeled ones
    aam_margin: float = 0.2
    aam_scale: float = 30.0
    relation_weight: float = 0.0  # the batch's similarity pattern learnt from the teacher's (relation_loss)
    margin_ramp_steps: int = 600
    noise_prob: float = 0.6
    snr_db: tuple[float, float] = (0.0, 20.0)
    reverb_prob: float = 0.4
    unlabeled_share: float = CORPUS_WEIGHTS["unl"]  # of each batch; the labelled corpora keep their ratios
    labelled_shares: tuple[float, float, float] | None = None  # so, asc, ls: their ratios in the labelled part; None: CORPUS_WEIGHTS
    pitch_prob: float = 0.5  # resampling: pitch and tempo move together
    pitch_semitones: float = 3.0  # +-3 semitones = +-16% tempo
    pitch_keeps_formants: bool = False  # the shifted crop gets its source's spectral envelope back (keep_formants)
    window_targets: bool = True  # a crop learns the teacher's clean windows it overlaps, not the whole clip's mean
    telephone_prob: float = 0.2  # 300-3400 Hz through 8 kHz with 8-bit mu-law
    eq_prob: float = 0.5  # random microphone response: a tilt plus a smooth bump, on the log-mels
    eq_tilt_db: float = 8.0  # up to +-8 dB from the lowest to the highest mel band
    eq_bump_db: float = 4.0
    freq_mask_prob: float = 0.5
    freq_mask_bands: int = 10  # one mask of up to this many mel bands
    gain_db: float = 8.0
    pseudo_speakers: float = 0.0  # > 0: unlabeled clips clustered into voices at this cosine distance (pseudo_speakers)
    seed: int = 1234


# ---------------------------------------------------------------- data

def save_checkpoint(path: Path, model: nn.Module, meta: dict, backend: dict | None = None) -> None:
    """A training checkpoint (.pt) of the student: torch tensors and plain types only, so it loads
    with torch.load(weights_only=True); training/export_weights.py turns it into what streamsv runs.
    Written atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "backend": None if backend is None else {k: torch.as_tensor(v) for k, v in backend.items()},
        "meta": meta,
    }
    save_atomic(payload, path)


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save through a temporary file and a rename: a stop mid-write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def trim_silence(wave: np.ndarray, floor_db: float = TRIM_FLOOR_DB, pad_s: float = TRIM_PAD_S) -> np.ndarray:
    """Cut leading and trailing audio more than `floor_db` below the loudest 10 ms frame
    (the wake-word clips hold long pauses around the word: a crop of pause teaches nothing)."""
    hop = SAMPLE_RATE // 100
    n = len(wave) // hop
    if n < 2:
        return wave
    energy = (wave[: n * hop].reshape(n, hop) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (floor_db / 10))
    pad = int(pad_s * SAMPLE_RATE)
    return wave[max(0, loud[0] * hop - pad): min(len(wave), (loud[-1] + 1) * hop + pad)]


def cache_keys(utts: list[datasets.Utterance]) -> list[str]:
    """The utterances' paths inside the data folder: a cache made in one checkout (or with the data
    mounted elsewhere) serves another."""
    root = datasets.data_root(required=False)
    root = root.resolve() if root is not None else None
    paths = [u.path.resolve() for u in utts]
    return [str(p.relative_to(root)) if root is not None and p.is_relative_to(root) else str(p) for p in paths]


def load_waves(utts: list[datasets.Utterance], name: str, trim: bool = False) -> list[np.ndarray]:
    """Decoded audio, cached as one int16 blob so later runs skip the Opus decoding."""
    CACHE.mkdir(exist_ok=True)
    blob, index = CACHE / f"{name}.int16.npy", CACHE / f"{name}.json"
    keys = cache_keys(utts)
    if blob.exists() and index.exists() and json.loads(index.read_text())["keys"] == keys:
        data = np.load(blob, mmap_mode="r")
        bounds = json.loads(index.read_text())["bounds"]
        return [np.asarray(data[a:b], dtype=np.float32) / 32768 for a, b in bounds]
    waves = [datasets.read_audio(u.path) for u in utts]
    if trim:
        waves = [trim_silence(w) for w in waves]
    bounds = np.cumsum([0] + [len(w) for w in waves]).tolist()
    np.save(blob, np.concatenate([np.clip(w * 32768, -32768, 32767).astype(np.int16) for w in waves]))
    index.write_text(json.dumps({"keys": keys, "bounds": list(zip(bounds[:-1], bounds[1:]))}))
    return [np.clip(w * 32768, -32768, 32767).astype(np.int16).astype(np.float32) / 32768 for w in waves]


TEACHER_BATCH = 64  # clips per teacher call: its partial windows run through the LSTM as one batch


def cached_arrays(path: Path, utts: list[datasets.Utterance], compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`compute()`'s arrays, kept in `path` beside the utterances' keys: a later run with the same
    utterances reads them back instead of running the teacher again."""
    keys = np.array(cache_keys(utts))
    if path.exists():
        with np.load(path) as cached:
            if np.array_equal(cached["keys"], keys):
                return {k: cached[k] for k in cached.files if k != "keys"}
    arrays = compute()
    np.savez(path, keys=keys, **arrays)
    return arrays


def teacher_batches(waves: list[np.ndarray], label: str, embed: Callable) -> list:
    """`embed(teacher, clips)` over `waves`, TEACHER_BATCH clips at a time, with progress."""
    from training.teacher import Teacher  # needs resemblyzer: imported only when a cache misses

    teacher, out = Teacher(), []
    for i in range(0, len(waves), TEACHER_BATCH):
        out.append(embed(teacher, waves[i:i + TEACHER_BATCH]))
        print(f"\rteacher {label} {min(i + TEACHER_BATCH, len(waves))}/{len(waves)}", end="", flush=True)
    print()
    return out


def teacher_targets(utts: list[datasets.Utterance], waves: list[np.ndarray], name: str) -> np.ndarray:
    """Resemblyzer utterance embeddings of the clean audio, computed once and cached."""
    def compute() -> dict[str, np.ndarray]:
        batches = teacher_batches(waves, f"targets ({name})", lambda teacher, clips: teacher.embed_batch(clips))
        return {"emb": np.concatenate(batches).astype(np.float32)}

    return cached_arrays(CACHE / f"teacher-{name}.npz", utts, compute)["emb"]


@dataclass
class TeacherWindows:
    """The teacher's partial windows of every training utterance (1.6 s, one every 0.77 s):
    utterance i owns rows first[i]:first[i + 1] of `emb` (unit norm) and `spans` (samples)."""
    emb: np.ndarray
    spans: np.ndarray
    first: np.ndarray

    def of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.spans[self.first[i]:self.first[i + 1]], self.emb[self.first[i]:self.first[i + 1]]

    @staticmethod
    def joined(parts: list["TeacherWindows"]) -> "TeacherWindows":
        offsets = np.cumsum([0] + [len(p.emb) for p in parts[:-1]])
        first = np.concatenate([p.first[:-1] + o for p, o in zip(parts, offsets)] + [[sum(len(p.emb) for p in parts)]])
        return TeacherWindows(np.concatenate([p.emb for p in parts]), np.concatenate([p.spans for p in parts]), first)


def teacher_windows(utts: list[datasets.Utterance], waves: list[np.ndarray], name: str) -> TeacherWindows:
    """Resemblyzer's partial-window embeddings of the clean audio, computed once and cached."""
    def compute() -> dict[str, np.ndarray]:
        batches = teacher_batches(waves, f"windows ({name})", lambda teacher, clips: teacher.embed_windows(clips))
        windows = TeacherWindows.joined([TeacherWindows(*b) for b in batches])
        return {"emb": windows.emb, "spans": windows.spans, "first": windows.first}

    arrays = cached_arrays(CACHE / f"teacher-windows-{name}.npz", utts, compute)
    return TeacherWindows(arrays["emb"], arrays["spans"], arrays["first"])


def prepare_data(recipe: Recipe) -> tuple[list, list, np.ndarray, TeacherWindows | None, list]:
    """Every training utterance (labelled, then unlabeled), its audio, its teacher target (and the
    teacher's windows when the recipe learns per window), and the noises."""
    labelled = datasets.training_utterances()
    assert not datasets.dev_speakers() & {u.speaker for u in labelled}, "dev speakers leaked into training"
    unlabeled = datasets.unlabeled_utterances()
    waves = load_waves(labelled, "train-audio") + load_waves(unlabeled, "train-unlabeled", trim=True)
    targets = np.concatenate([teacher_targets(labelled, waves[:len(labelled)], "train"),
                              teacher_targets(unlabeled, waves[len(labelled):], "unlabeled")])
    windows = None
    if recipe.window_targets:
        windows = TeacherWindows.joined([teacher_windows(labelled, waves[:len(labelled)], "train"),
                                         teacher_windows(unlabeled, waves[len(labelled):], "unlabeled")])
    noises = load_waves([datasets.Utterance("noise", p, "noise") for p in datasets.noise_files("train")], "train-noise")
    return labelled + unlabeled, waves, targets, windows, noises


def pseudo_speakers(utts: list[datasets.Utterance], targets: np.ndarray, max_distance: float,
                    min_clips: int = PSEUDO_SPEAKER_MIN_CLIPS) -> list[datasets.Utterance]:
    """The unlabeled clips given voices: within each unlabeled folder (one crowd each), clips whose
    teacher embeddings join by average linkage under `max_distance` (cosine) form one pseudo-speaker,
    an AAM class like a labelled speaker's; clusters under `min_clips` keep their own clip ids."""
    from scipy.cluster.hierarchy import fcluster, linkage

    out = list(utts)
    folders: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        if u.corpus == "unl":
            folders.setdefault(u.speaker.split("/")[1], []).append(i)
    for folder, members in folders.items():
        if len(members) < 2:
            continue
        clusters = fcluster(linkage(targets[members], "average", metric="cosine"), max_distance, "distance")
        sizes = np.bincount(clusters)
        for i, c in zip(members, clusters):
            if sizes[c] >= min_clips:
                out[i] = datasets.Utterance(f"{PSEUDO_SPEAKER_PREFIX}{folder}/{c}", utts[i].path, "unl")
    return out


def telephone_band(wave: np.ndarray) -> np.ndarray:
    """300-3400 Hz through an 8 kHz, 8-bit mu-law channel, back at 16 kHz."""
    narrow = sosfilt(_TELEPHONE_SOS, resample_poly(wave, TELEPHONE_RATE, SAMPLE_RATE))
    peak = max(np.abs(narrow).max(), 1e-6)
    x = np.clip(narrow / peak, -1, 1)
    coded = np.sign(x) * np.log1p(MU_LAW_MU * np.abs(x)) / np.log1p(MU_LAW_MU)
    coded = np.round((coded + 1) / 2 * MU_LAW_MU) / MU_LAW_MU * 2 - 1  # 256 levels
    decoded = np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(MU_LAW_MU)) / MU_LAW_MU
    return resample_poly(decoded * peak, SAMPLE_RATE, TELEPHONE_RATE)[: len(wave)]


def resample_by(wave: np.ndarray, factor: float, length: int) -> np.ndarray:
    """`length` samples read from `wave` at `factor` times the speed: pitch and tempo times `factor`."""
    return np.interp(np.arange(length) * factor, np.arange(len(wave)), wave)


def spectral_envelope(frames: np.ndarray) -> np.ndarray:
    """Each windowed frame's smooth log-magnitude spectrum: its cepstrum cut before the shortest
    pitch period, so the formants stay and the harmonics go."""
    magnitude = np.abs(np.fft.rfft(frames))
    # floored 60 dB under each frame's peak: the zeros between harmonics must not drag the envelope down
    log_mag = np.log(magnitude + ENVELOPE_FLOOR * magnitude.max(axis=1, keepdims=True) + 1e-12)
    cepstrum = np.fft.irfft(log_mag)
    cepstrum[:, ENVELOPE_LIFTER:-ENVELOPE_LIFTER + 1] = 0.0
    return np.fft.rfft(cepstrum).real


def keep_formants(shifted: np.ndarray, source: np.ndarray, factor: float) -> np.ndarray:
    """`shifted` (= resample_by(source, factor, ...)) with the spectral envelope of `source` put
    back: the pitch and tempo stay moved, the vocal tract does not (a resampling scales both)."""
    window = np.hanning(ENVELOPE_FFT + 1)[:-1]
    n_frames = max(1, 1 + (len(shifted) - ENVELOPE_FFT) // ENVELOPE_HOP)
    starts = np.arange(n_frames) * ENVELOPE_HOP
    padded_source = np.pad(source, (0, ENVELOPE_FFT + int(ENVELOPE_HOP * factor) + 1))
    padded_shifted = np.pad(shifted, (0, ENVELOPE_FFT))
    offsets = np.arange(ENVELOPE_FFT)
    frames = padded_shifted[starts[:, None] + offsets] * window
    # the source frame heard at the same moment: centre n of `shifted` is centre n * factor of `source`
    centres = np.round((starts + ENVELOPE_FFT / 2) * factor - ENVELOPE_FFT / 2).astype(int).clip(0)
    source_frames = padded_source[centres[:, None] + offsets] * window
    gain = np.exp(np.clip(spectral_envelope(source_frames) - spectral_envelope(frames), -ENVELOPE_MAX_GAIN, ENVELOPE_MAX_GAIN))
    corrected = np.fft.irfft(np.fft.rfft(frames) * gain, n=ENVELOPE_FFT) * window
    out = np.zeros(len(padded_shifted))
    norm = np.zeros(len(padded_shifted))
    window_power = window ** 2
    for start, frame in zip(starts, corrected):  # overlap-add
        out[start:start + ENVELOPE_FFT] += frame
        norm[start:start + ENVELOPE_FFT] += window_power
    out = out[: len(shifted)] / np.maximum(norm[: len(shifted)], 1e-3)
    return out * np.sqrt((shifted ** 2).sum() / max((out ** 2).sum(), 1e-12))  # the loudness of the shift


def window_target(spans: np.ndarray, emb: np.ndarray, start: int, stop: int) -> np.ndarray | None:
    """The teacher's view of samples start:stop: its windows there, each weighted by how much of
    the span it covers; None when no window touches it."""
    overlap = np.clip(np.minimum(spans[:, 1], stop) - np.maximum(spans[:, 0], start), 0, None).astype(np.float32)
    if overlap.sum() <= 0:
        return None
    target = overlap @ emb
    return target / max(np.linalg.norm(target), 1e-9)


class CropSampler:
    """Draws augmented crops: log-mels in, the teacher's clean-utterance target out; a speaker label
    for the labelled corpora and unlabeled clips given a pseudo-speaker, -1 for the other unlabeled
    speech (distillation only)."""

    def __init__(self, utts, waves, targets, noises, recipe: Recipe, mel_mean: np.ndarray,
                 windows: TeacherWindows | None = None):
        self.recipe, self.waves, self.targets, self.noises, self.windows = recipe, waves, targets, noises, windows
        self.mel_mean = np.asarray(mel_mean, np.float32)
        self.rng = np.random.default_rng(recipe.seed)
        speakers = sorted({u.speaker for u in utts if u.corpus != "unl" or u.speaker.startswith(PSEUDO_SPEAKER_PREFIX)})
        self.speaker_index = {s: i for i, s in enumerate(speakers)}
        self.by_corpus: dict[str, dict[str, list[int]]] = {}
        for i, u in enumerate(utts):
            self.by_corpus.setdefault(u.corpus, {}).setdefault(u.speaker, []).append(i)
        self.speakers = {c: sorted(spk) for c, spk in self.by_corpus.items()}
        self.corpora = sorted(self.by_corpus)
        shares = dict(CORPUS_WEIGHTS)
        if recipe.labelled_shares is not None:
            shares.update(zip(LABELLED_CORPORA, recipe.labelled_shares))
        if recipe.unlabeled_share != CORPUS_WEIGHTS["unl"] or recipe.labelled_shares is not None:
            labelled = sum(shares[c] for c in LABELLED_CORPORA)
            shares["unl"] = recipe.unlabeled_share * labelled / (1 - recipe.unlabeled_share)
        weights = np.array([shares[c] for c in self.corpora])
        self.corpus_p = weights / weights.sum()
        octaves = np.log2(np.linspace(1, 2 ** 6, N_MELS))  # mel band position on a rough octave scale
        self.band_position = (octaves / octaves[-1] - 0.5).astype(np.float32)  # -0.5 .. 0.5

    @property
    def n_speakers(self) -> int:
        return len(self.speaker_index)

    def _source(self, corpus: str, speaker: str) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """A speaker's audio, its clean-utterance target, and the teacher's windows over it
        (for joined ASC keywords each 1 s clip is one window: shorter than the teacher's)."""
        items = self.by_corpus[corpus][speaker]
        windows = None
        if corpus == "asc":
            picked = self.rng.choice(items, ASC_CLIPS_PER_ITEM, replace=False)
            clips = [self.waves[i] for i in picked]
            wave = np.concatenate(clips)
            target = self.targets[picked].mean(axis=0)
            if self.windows is not None:
                ends = np.cumsum([len(c) for c in clips])
                windows = (np.stack([ends - [len(c) for c in clips], ends], axis=1), self.targets[picked])
        else:
            i = items[self.rng.integers(len(items))]
            wave, target = self.waves[i], self.targets[i]
            if self.windows is not None:
                windows = self.windows.of(i)
        return wave, target / np.linalg.norm(target), windows

    def _crop(self, wave: np.ndarray, length: int) -> np.ndarray:
        return self._crop_at(wave, length)[0]

    def _crop_at(self, wave: np.ndarray, length: int) -> tuple[np.ndarray, int | None]:
        """A random `length` crop and where it starts in `wave` (None when `wave` had to be tiled)."""
        if len(wave) < length:
            wave = np.tile(wave, math.ceil(length / len(wave)))
            return wave[:length], None
        start = int(self.rng.integers(len(wave) - length + 1))
        return wave[start:start + length], start

    def _augment(self, crop: np.ndarray) -> np.ndarray:
        r, rng = self.recipe, self.rng
        if rng.random() < r.reverb_prob:
            rt60 = rng.uniform(0.2, 0.8)
            t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
            rir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
            rir[0] = 1.0
            wet = fftconvolve(crop, rir)[: len(crop)]
            crop = wet * np.sqrt((crop ** 2).sum() / max((wet ** 2).sum(), 1e-9))
        if rng.random() < r.noise_prob:
            noise = self._crop(self.noises[rng.integers(len(self.noises))], len(crop))
            snr = rng.uniform(*r.snr_db)
            gain = np.sqrt((crop ** 2).mean() / max((noise ** 2).mean(), 1e-9) / 10 ** (snr / 10))
            crop = crop + gain * noise
        if rng.random() < r.telephone_prob:
            crop = telephone_band(crop)
        crop = crop * 10 ** (rng.uniform(-r.gain_db, r.gain_db) / 20)
        return np.clip(crop, -1, 1)

    def _augment_mel(self, mel: np.ndarray) -> np.ndarray:
        """Microphone colouring and frequency masking, done where they are cheap: on log power."""
        r, rng = self.recipe, self.rng
        if rng.random() < r.eq_prob:
            tilt = rng.uniform(-r.eq_tilt_db, r.eq_tilt_db) * self.band_position
            centre, width = rng.uniform(-0.5, 0.5), rng.uniform(0.05, 0.3)
            bump = rng.uniform(-r.eq_bump_db, r.eq_bump_db) * np.exp(-0.5 * ((self.band_position - centre) / width) ** 2)
            mel = mel + (tilt + bump).astype(np.float32) * np.float32(np.log(10) / 10)  # dB -> natural log power
        if rng.random() < r.freq_mask_prob:
            width = int(rng.integers(1, r.freq_mask_bands + 1))
            start = int(rng.integers(0, N_MELS - width + 1))
            mel = mel.copy()
            mel[:, start:start + width] = self.mel_mean[start:start + width]
        return mel

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r, rng = self.recipe, self.rng
        length = int(rng.uniform(r.min_crop_s, r.max_crop_s) * SAMPLE_RATE)
        crops, labels, targets = [], [], []
        for _ in range(r.batch):
            corpus = self.corpora[rng.choice(len(self.corpora), p=self.corpus_p)]
            speakers = self.speakers[corpus]
            speaker = speakers[rng.integers(len(speakers))]
            wave, target, windows = self._source(corpus, speaker)
            if rng.random() < r.pitch_prob:
                factor = 2 ** (rng.uniform(-r.pitch_semitones, r.pitch_semitones) / 12)
                span = math.ceil(length * factor) + 1
                piece, start = self._crop_at(wave, span)
                crop = resample_by(piece, factor, length)
                if r.pitch_keeps_formants:
                    crop = keep_formants(crop, piece, factor)
            else:
                span = length
                crop, start = self._crop_at(wave, length)
            if windows is not None and start is not None:
                by_window = window_target(*windows, start, start + span)
                target = target if by_window is None else by_window
            crops.append(self._augment(crop))
            labels.append(self.speaker_index.get(speaker, -1))
            targets.append(target)
        mels = log_mel(np.stack(crops).astype(np.float32))
        mels = np.stack([self._augment_mel(m) for m in mels])
        return (torch.from_numpy(mels), torch.tensor(labels),
                torch.from_numpy(np.stack(targets).astype(np.float32)))


# ---------------------------------------------------------------- losses

class AAMSoftmax(nn.Module):
    """Additive angular margin softmax (ArcFace) over the training speakers."""

    def __init__(self, dim: int, n_classes: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.scale = scale

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
        cosine = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cosine.gather(1, labels[:, None])) + margin)
        logits = cosine.scatter(1, labels[:, None], target) * self.scale
        return F.cross_entropy(logits, labels)


def relation_loss(emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How far the student's ranking of the batch's other crops, for each crop, is from the
    teacher's: each row of the two cosine matrices (the diagonal left out) is standardised, so
    only the pattern counts, not the two spaces' different cosine ranges, and the mean squared
    difference is 2 (1 - the mean per-row correlation)."""
    n = len(emb)
    if n < 3:
        return emb.new_zeros(())
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=emb.device)

    def standardised_rows(vectors: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(vectors, dim=1)
        rows = (unit @ unit.T)[off_diagonal].reshape(n, n - 1)
        return (rows - rows.mean(1, keepdim=True)) / (rows.std(1, keepdim=True) + 1e-6)

    return (standardised_rows(emb) - standardised_rows(targets)).pow(2).mean()


class Distiller(nn.Module):
    """Student, a linear head into the teacher's space, and the AAM classifier."""

    def __init__(self, cfg: ModelDimensions, n_speakers: int, recipe: Recipe):
        super().__init__()
        self.student = SpeakerEncoder(cfg)
        self.to_teacher = nn.Linear(cfg.embedding_dim, 256)
        self.aam = AAMSoftmax(cfg.embedding_dim, n_speakers, recipe.aam_scale)
        self.relation_weight = recipe.relation_weight

    def forward(self, mel, labels, targets, margin: float):
        emb = self.student(mel)
        distill = 1 - F.cosine_similarity(self.to_teacher(emb), targets).mean()
        if self.relation_weight:
            distill = distill + self.relation_weight * relation_loss(emb, targets)
        labelled = labels >= 0  # AAM only where a speaker label exists
        if not labelled.any():
            return distill, distill.new_zeros(())
        return distill, self.aam(emb[labelled], labels[labelled], margin)


def mel_statistics(waves: list[np.ndarray], rng: np.random.Generator, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    mels = torch.cat([torch.from_numpy(log_mel(waves[i])) for i in rng.choice(len(waves), n, replace=False)])
    return mels.mean(dim=0), mels.std(dim=0).clamp(min=1e-3)


def initial_student(path: Path) -> tuple[SpeakerEncoder, str]:
    """The weights a fine-tune starts from, and their fingerprint; a clear error for a bad file."""
    from training.export_weights import read_checkpoint

    try:
        model, fingerprint, backend, _ = read_checkpoint(path)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise SystemExit(f"error: --init {path}: {exc}") from None
    if backend is not None:
        raise SystemExit(f"error: --init {path}: weights with a scoring backend cannot be fine-tuned")
    return model, fingerprint


def learning_rate(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, student.pt)")
    ap.add_argument("--arch", default="mixer", choices=["mixer", "transformer"])
    ap.add_argument("--steps", type=int, default=Recipe.steps)
    ap.add_argument("--aam-weight", type=float, default=Recipe.aam_weight)
    ap.add_argument("--lr", type=float, default=Recipe.lr, help="peak learning rate")
    ap.add_argument("--warmup-steps", type=int, default=Recipe.warmup_steps)
    ap.add_argument("--weight-decay", type=float, default=Recipe.weight_decay, help="AdamW's decoupled weight decay")
    ap.add_argument("--init", type=Path, metavar="WEIGHTS",
                    help="start the student from these weights (a .pt checkpoint or format-1 .npz, e.g. "
                         "tools/baseline/student.npz, the shipped model) instead of at random: a fine-tune; "
                         "its shape and mel statistics come with it (--width is ignored; --blocks keeps its first blocks "
                         "or appends blocks that start as the identity: training.model.resize_blocks)")
    ap.add_argument("--relation-weight", type=float, default=Recipe.relation_weight,
                    help="weight of the relational term: each crop's cosine pattern over the batch learns the "
                         "teacher's (training.train.relation_loss; added to the logged distill figure)")
    ap.add_argument("--pitch-semitones", type=float, default=Recipe.pitch_semitones)
    ap.add_argument("--pitch-prob", type=float, default=Recipe.pitch_prob, help="share of crops pitch/tempo shifted")
    ap.add_argument("--keep-formants", action="store_true",
                    help="a pitch-shifted crop keeps its source's spectral envelope: prosody moves, the vocal tract does not")
    ap.add_argument("--channel-prob", type=float, nargs=3, metavar=("TELEPHONE", "EQ", "FREQ_MASK"),
                    default=(Recipe.telephone_prob, Recipe.eq_prob, Recipe.freq_mask_prob),
                    help="shares of crops through the telephone channel, a microphone EQ and a frequency mask")
    ap.add_argument("--unlabeled-share", type=float, default=Recipe.unlabeled_share,
                    help="share of each batch from the unlabeled speech (0: labelled speakers only)")
    ap.add_argument("--labelled-shares", type=float, nargs=3, metavar=("SO", "ASC", "LS"), default=None,
                    help="the labelled corpora's ratios in a batch's labelled part (default "
                         + " ".join(f"{CORPUS_WEIGHTS[c]:g}" for c in LABELLED_CORPORA) + ")")
    ap.add_argument("--pseudo-speakers", type=float, default=Recipe.pseudo_speakers, metavar="DISTANCE",
                    help="cluster the unlabeled clips by their teacher embeddings (average linkage, cosine distance "
                         f"under DISTANCE, >= {PSEUDO_SPEAKER_MIN_CLIPS} clips) into pseudo-speakers that join the AAM; 0: off")
    ap.add_argument("--crop-s", type=float, nargs=2, metavar=("MIN", "MAX"), default=(Recipe.min_crop_s, Recipe.max_crop_s),
                    help="each batch's crop length is drawn from [MIN, MAX] seconds")
    ap.add_argument("--utterance-targets", action="store_true",
                    help="every crop learns its clip's whole-utterance teacher embedding (the recipe before window targets)")
    ap.add_argument("--width", type=int, default=ModelDimensions.width, help="channels (a smaller network: issue 11)")
    ap.add_argument("--blocks", type=int, default=None, help=f"SV-Mixer blocks (default {ModelDimensions.n_blocks}, or --init's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=Recipe.seed)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="end this sitting after step N (checkpointed), the schedule still that of --steps; "
                         "--resume continues it")
    ap.add_argument("--prepare-only", action="store_true", help="decode the audio and cache the teacher targets, then stop")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    recipe = Recipe(steps=args.steps, aam_weight=args.aam_weight, relation_weight=args.relation_weight,
                    seed=args.seed, lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                    pitch_semitones=args.pitch_semitones, pitch_prob=args.pitch_prob,
                    pitch_keeps_formants=args.keep_formants,
                    unlabeled_share=args.unlabeled_share, telephone_prob=args.channel_prob[0],
                    eq_prob=args.channel_prob[1], freq_mask_prob=args.channel_prob[2],
                    window_targets=not args.utterance_targets, min_crop_s=args.crop_s[0], max_crop_s=args.crop_s[1],
                    pseudo_speakers=args.pseudo_speakers,
                    labelled_shares=None if args.labelled_shares is None else tuple(args.labelled_shares))
    if not 0 < args.crop_s[0] <= args.crop_s[1]:
        raise SystemExit("error: --crop-s needs 0 < MIN <= MAX")
    if not 0 <= args.weight_decay < 1:
        raise SystemExit("error: --weight-decay must be in [0, 1)")
    if not 0 <= args.unlabeled_share < 1 or not all(0 <= x <= 1 for x in (args.pitch_prob, *args.channel_prob)):
        raise SystemExit("error: --unlabeled-share must be in [0, 1), --pitch-prob and --channel-prob in [0, 1]")
    if args.labelled_shares is not None and (min(args.labelled_shares) < 0 or sum(args.labelled_shares) <= 0):
        raise SystemExit("error: --labelled-shares must be >= 0 with a positive sum")
    if not 0 <= args.pseudo_speakers < 2:
        raise SystemExit("error: --pseudo-speakers is a cosine distance in [0, 2)")
    if args.width < 8 or args.width % ModelDimensions.groups or (args.blocks is not None and args.blocks < 1):
        raise SystemExit(f"error: --width must be a multiple of {ModelDimensions.groups} (>= 8) and --blocks >= 1")
    init = initial_student(args.init) if args.init is not None else None
    if init and args.blocks is not None and args.blocks != init[0].cfg.n_blocks:
        init = (resize_blocks(init[0], args.blocks, seed=args.seed), init[1])
    cfg = init[0].cfg if init else ModelDimensions(arch=args.arch, width=args.width,
                                                   n_blocks=args.blocks or ModelDimensions.n_blocks)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    utts, waves, targets, windows, noises = prepare_data(recipe)
    if args.prepare_only:
        print(f"data ready in {time.time() - started:.0f} s")
        return
    if init:  # a fine-tune keeps the normalisation its weights learnt with
        mel_mean, mel_std = init[0].stem.mel_mean.clone(), init[0].stem.mel_std.clone()
    else:
        mel_mean, mel_std = mel_statistics(waves, np.random.default_rng(recipe.seed))
    if recipe.pseudo_speakers:
        utts = pseudo_speakers(utts, targets, recipe.pseudo_speakers)
    sampler = CropSampler(utts, waves, targets, noises, recipe, mel_mean.numpy(), windows)
    print(f"data ready in {time.time() - started:.0f} s: {len(utts)} utterances, {sampler.n_speakers} speakers, "
          f"{sum(map(len, waves)) / SAMPLE_RATE / 3600:.1f} h", flush=True)

    # Seeded here, after the data: a cache miss runs the teacher, whose construction draws from
    # torch's generator, and the new heads must not depend on whether the cache was warm.
    torch.manual_seed(recipe.seed)
    model = Distiller(cfg, sampler.n_speakers, recipe)
    model.student.stem.mel_mean, model.student.stem.mel_std = mel_mean, mel_std
    if init:
        model.student.load_state_dict(init[0].state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    step, elapsed, cpu_before = 0, 0.0, 0.0
    last = args.out / "last.pt"
    if args.resume and last.exists():
        state = torch.load(last, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
        cpu_before = float(state.get("cpu_seconds", 0.0))  # CPU seconds of the training loop so far
        sampler.rng = np.random.default_rng([recipe.seed, step])  # a fresh, still seeded stream
        torch.manual_seed(recipe.seed + step)
        print(f"resumed at step {step}")
    print(f"{args.arch}: {count_parameters(model.student):,} parameters; recipe {asdict(recipe)}", flush=True)

    log = open(args.out / "log.jsonl", "a")
    window: list[tuple[float, float]] = []
    t0 = time.time() - elapsed
    cpu0, session_t0, session_step0 = time.process_time(), time.time(), step
    model.train()
    stop_at = min(recipe.steps, args.stop_at) if args.stop_at is not None else recipe.steps
    while step < stop_at:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        margin = recipe.aam_margin * min(1.0, step / recipe.margin_ramp_steps)
        mels, labels, targets_b = sampler.batch()
        distill, aam = model(mels, labels, targets_b, margin)
        loss = distill + recipe.aam_weight * aam
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        window.append((distill.item(), aam.item()))
        if step % 20 == 0 or step == recipe.steps:
            d, a = np.mean(window, axis=0)
            window.clear()
            spent, cpu = time.time() - t0, cpu_before + time.process_time() - cpu0
            eta = (time.time() - session_t0) / (step - session_step0) * (recipe.steps - step)  # this sitting's pace
            print(f"step {step}/{recipe.steps}  distill {d:.3f}  aam {a:.2f}  lr {learning_rate(step, recipe):.2e}  "
                  f"{spent / 60:.1f} min, cpu {cpu / 60:.1f} min, eta {eta / 60:.1f} min", flush=True)
            log.write(json.dumps({"step": step, "distill": d, "aam": a, "minutes": spent / 60, "cpu_minutes": cpu / 60}) + "\n")
            log.flush()
        if step % args.checkpoint_every == 0 or step == stop_at:
            cpu = cpu_before + time.process_time() - cpu0
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                         "elapsed": time.time() - t0, "cpu_seconds": cpu}, last)
            save_checkpoint(args.out / "student.pt", model.student, {
                "recipe": asdict(recipe), "arch": args.arch, "step": step, "train_minutes": (time.time() - t0) / 60,
                "train_cpu_minutes": cpu / 60,
                "teacher": "resemblyzer 0.1.4 VoiceEncoder", "speakers": sampler.n_speakers,
                "init": None if not init else {"path": str(args.init), "fingerprint": init[1],
                                                "blocks": cfg.n_blocks}})
    print(f"done: {step} steps in {(time.time() - t0) / 60:.1f} min -> {args.out / 'student.pt'}")


if __name__ == "__main__":
    main()
