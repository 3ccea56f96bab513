"""Speaker-verification evaluation on the dev sets: student(s), teacher and an MFCC baseline side by side.

    python -m training.eval --student streamsv/weights/student.onnx            # everything (@int8: the int8 graph)
    python -m training.eval --systems teacher,mfcc --sets speechocean-dev --conditions clean --durations full
    python -m training.eval --student a=runs/a.pt --student b=runs/b.pt --json out.json

Protocols (as in shared/data/README.md):
  pairs   every unordered pair of utterances of the set is one trial.
  enroll  each speaker's first 3 utterances (by file name) are averaged into a profile (mean of unit
          embeddings, renormalised); every other utterance is scored against every profile.
Conditions: clean; noisy10 / noisy5 = simulated room reverb, then a held-out ESC-10 noise class
(never used in training) at 10 / 5 dB SNR; telephone = 300-3400 Hz at 8 kHz through the Opus codec
at its lowest bitrate (~8 kbit/s), back to 16 kHz; far = a talker 1-3 m from the microphone in a
reverberant room (direct-to-reverberant ratio from the distance); pitch = +-1..3 semitones and
+-0..15% tempo, shifted independently (librosa's phase vocoder), for emotional and prosodic
variation. Durations: full clip, or a seeded 2 s / 1 s crop. Every random choice is seeded from
the clip's path, so runs and systems see the same audio. Embeddings (teacher's included) are
cached per (system, set, condition, duration) under cache/eval (gitignored).
The last line sums up each student against the teacher: the worst-case and the mean ratio of its
EER to the teacher's, per protocol, over every set x condition x duration in the run.
--snorm K adds, beside each student's and the teacher's rows, the same embeddings scored with
adaptive s-norm (top-K) against a cohort of training speakers (training/cohort.py): rows "X+snorm".
--similar [SEMITONES] adds the similar-voice protocols "pairs_similar" / "enroll_similar": the same
target trials, impostor trials only between speakers whose median F0 is within SEMITONES (default 2)
of each other (training/voices.py), in a second table beside the normal EER and in the ratio lines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamsv.features import SAMPLE_RATE
from training import datasets

REPO = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO / "cache" / "eval"

EVAL_SETS = ("speechocean-dev", "asc-test", "librispeech-test-other", "urdu")
NOISY_CONDITIONS = {"noisy10": 10.0, "noisy5": 5.0}  # value: SNR in dB
CONDITIONS = ("clean", *NOISY_CONDITIONS, "telephone", "far", "pitch")
DURATIONS = {"full": None, "2s": 2.0, "1s": 1.0}  # value: crop length in seconds
ENROLL_UTTERANCES = 3
P_TARGET = 0.01  # minDCF operating point (C_miss = C_fa = 1), as in VoxCeleb/NIST SRE
RT60_RANGE_S = (0.2, 0.7)  # simulated rooms: small office to living room
DRR_RANGE_DB = (0.0, 10.0)  # direct-to-reverberant ratio: a device a metre or two from the talker
DEGRADE_VERSION = "v2"  # bump when a degraded condition changes: it keys the embedding cache
TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
OPUS_LOWEST_BITRATE = 1.0  # libsndfile's compression_level for Opus: 1.0 = lowest bitrate (~8 kbit/s at 8 kHz)
FAR_DISTANCE_M = (1.0, 3.0)
FAR_RT60_S = (0.3, 0.8)
FAR_ROOM_M3 = (30.0, 80.0)  # living room to open-plan kitchen
PITCH_SEMITONES = (1.0, 3.0)  # magnitude; the sign is drawn too
TEMPO_CHANGE = (0.0, 0.15)  # magnitude of the relative tempo change; the sign is drawn too
MFCC_N = 20


# ---------------------------------------------------------------- metrics


def _error_rates(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Miss and false-alarm rates when accepting score >= each threshold, thresholds ascending
    through all scores plus one above the maximum (index k rejects the k lowest scores)."""
    order = np.argsort(scores, kind="mergesort")
    labels = labels[order].astype(np.float64)
    n_tar, n_non = labels.sum(), (1 - labels).sum()
    if n_tar == 0 or n_non == 0:
        raise ValueError("need both target and non-target trials")
    misses = np.concatenate([[0.0], np.cumsum(labels)]) / n_tar
    false_alarms = 1.0 - np.concatenate([[0.0], np.cumsum(1 - labels)]) / n_non
    return misses, false_alarms


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate (fraction): where the miss and false-alarm curves cross, taking the
    mean of the two rates at the threshold where they are closest."""
    misses, false_alarms = _error_rates(np.asarray(scores, np.float64), np.asarray(labels, bool))
    k = int(np.argmin(np.abs(misses - false_alarms)))
    return float((misses[k] + false_alarms[k]) / 2)


def eer_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score at the EER operating point: accepting score >= it gives eer()'s rates."""
    scores = np.asarray(scores, np.float64)
    misses, false_alarms = _error_rates(scores, np.asarray(labels, bool))
    k = int(np.argmin(np.abs(misses - false_alarms)))
    ordered = np.sort(scores, kind="mergesort")
    return float(ordered[k]) if k < len(ordered) else float(np.nextafter(ordered[-1], np.inf))


def min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float = P_TARGET) -> float:
    """Minimum normalised detection cost, C_miss = C_fa = 1; normalised by the cost of the
    better trivial system, min(p_target, 1 - p_target)."""
    misses, false_alarms = _error_rates(np.asarray(scores, np.float64), np.asarray(labels, bool))
    cost = p_target * misses + (1 - p_target) * false_alarms
    return float(cost.min() / min(p_target, 1 - p_target))


# ---------------------------------------------------------------- protocols


def _keep_impostors(scores: np.ndarray, labels: np.ndarray, left, right, impostors) -> tuple[np.ndarray, np.ndarray]:
    """Every target trial, and only the impostor trials `impostors(left_speakers, right_speakers)`
    keeps (training/voices.py: speakers of similar pitch); all trials when `impostors` is None."""
    if impostors is None:
        return scores, labels
    keep = labels | impostors(left, right)
    return scores[keep], labels[keep]


def pairs_trials(emb: np.ndarray, speakers: list[str], normalise=None, impostors=None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine score and same-speaker label of every unordered pair. `normalise(scores, left, right)`,
    when given, maps the cosine matrix of `left` x `right` embeddings to normalised scores (s-norm).
    `impostors`: as in _keep_impostors."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    i, j = np.triu_indices(len(emb), k=1)
    spk = np.asarray(speakers)
    if normalise is None:
        scores = np.einsum("nd,nd->n", emb[i], emb[j])
    else:
        scores = normalise(emb @ emb.T, emb, emb)[i, j]
    return _keep_impostors(scores, spk[i] == spk[j], spk[i], spk[j], impostors)


def enroll_trials(emb: np.ndarray, speakers: list[str], names: list[str], normalise=None,
                  impostors=None) -> tuple[np.ndarray, np.ndarray]:
    """Profiles from each speaker's first ENROLL_UTTERANCES files by name; the rest are tests.
    `normalise`, `impostors`: as in pairs_trials (left: the tests, right: the profiles)."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    by_speaker: dict[str, list[int]] = {}
    for idx in sorted(range(len(names)), key=lambda k: (speakers[k], names[k])):
        by_speaker.setdefault(speakers[idx], []).append(idx)
    profiles, profile_spk, tests = [], [], []
    for spk, idxs in by_speaker.items():
        mean = emb[idxs[:ENROLL_UTTERANCES]].mean(axis=0)
        profiles.append(mean / np.linalg.norm(mean))
        profile_spk.append(spk)
        tests += idxs[ENROLL_UTTERANCES:]
    scores = emb[tests] @ np.stack(profiles).T  # (tests, profiles)
    if normalise is not None:
        scores = normalise(scores, emb[tests], np.stack(profiles))
    test_spk, prof_spk = np.broadcast_arrays(np.asarray(speakers)[tests][:, None], np.asarray(profile_spk)[None, :])
    return _keep_impostors(scores.ravel(), (test_spk == prof_spk).ravel(), test_spk.ravel(), prof_spk.ravel(), impostors)


# ---------------------------------------------------------------- audio conditions


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("|".join(map(str, parts)).encode()))


def crop(wave: np.ndarray, seconds: float | None, rng: np.random.Generator) -> np.ndarray:
    if seconds is None or len(wave) <= int(seconds * SAMPLE_RATE):
        return wave
    n = int(seconds * SAMPLE_RATE)
    start = int(rng.integers(0, len(wave) - n + 1))
    return wave[start : start + n]


def room_impulse_response(rng: np.random.Generator, rt60_range=RT60_RANGE_S, drr_range=DRR_RANGE_DB) -> np.ndarray:
    """A synthetic RIR: direct path, then exponentially decaying noise reaching -60 dB at RT60,
    scaled so the direct-to-reverberant energy ratio falls in `drr_range` (dB)."""
    rt60 = rng.uniform(*rt60_range)
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    drr_db = rng.uniform(*drr_range)
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    delay = int(rng.integers(int(0.002 * SAMPLE_RATE), int(0.010 * SAMPLE_RATE)))  # first reflection
    rir = np.zeros(len(t) + delay)
    rir[0] = 1.0
    rir[delay:] += tail
    return rir / np.linalg.norm(rir)


def reverberate(wave: np.ndarray, rng: np.random.Generator, rir: np.ndarray | None = None) -> np.ndarray:
    from scipy.signal import fftconvolve

    rir = room_impulse_response(rng) if rir is None else rir
    wet = fftconvolve(wave, rir)[: len(wave)]
    return wet * (np.sqrt(np.mean(wave**2)) / max(np.sqrt(np.mean(wet**2)), 1e-9))


def far_field_drr_db(distance_m: float, rt60_s: float, volume_m3: float) -> float:
    """Direct-to-reverberant ratio of an omni talker at `distance_m`: 20 log10(critical distance /
    distance), critical distance = 0.057 sqrt(V / RT60) m (Sabine, diffuse field)."""
    return float(20 * np.log10(0.057 * np.sqrt(volume_m3 / rt60_s) / distance_m))


def far_field(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clip as a microphone 1-3 m away hears it in a reverberant room (level restored)."""
    rt60 = rng.uniform(*FAR_RT60_S)
    drr = far_field_drr_db(rng.uniform(*FAR_DISTANCE_M), rt60, rng.uniform(*FAR_ROOM_M3))
    return reverberate(wave, rng, room_impulse_response(rng, (rt60, rt60), (drr, drr)))


def telephone(wave: np.ndarray) -> np.ndarray:
    """300-3400 Hz at 8 kHz, through Opus at its lowest bitrate, back at 16 kHz (deterministic)."""
    import io

    import soundfile as sf
    from scipy.signal import butter, resample_poly, sosfiltfilt

    narrow = resample_poly(np.asarray(wave, np.float64), TELEPHONE_RATE, SAMPLE_RATE)
    sos = butter(6, TELEPHONE_BAND_HZ, btype="bandpass", fs=TELEPHONE_RATE, output="sos")
    narrow = np.clip(sosfiltfilt(sos, narrow), -1, 1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, narrow, TELEPHONE_RATE, format="OGG", subtype="OPUS", compression_level=OPUS_LOWEST_BITRATE)
    buf.seek(0)
    decoded, rate = sf.read(buf, dtype="float32")
    wide = resample_poly(decoded, SAMPLE_RATE, rate)
    return np.pad(wide, (0, max(0, len(wave) - len(wide))))[: len(wave)]


def shift_pitch_and_tempo(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pitch moved by 1-3 semitones and tempo by 0-15%, each up or down, independently."""
    import librosa

    semitones = rng.uniform(*PITCH_SEMITONES) * rng.choice([-1.0, 1.0])
    rate = 1 + rng.uniform(*TEMPO_CHANGE) * rng.choice([-1.0, 1.0])
    y = librosa.effects.pitch_shift(np.asarray(wave, np.float32), sr=SAMPLE_RATE, n_steps=semitones)
    return librosa.effects.time_stretch(y, rate=rate)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add a random segment of `noise` (tiled if short) scaled to `snr_db` below the speech power."""
    if len(noise) < len(speech):
        noise = np.tile(noise, int(np.ceil(len(speech) / len(noise))))
    start = int(rng.integers(0, len(noise) - len(speech) + 1))
    segment = noise[start : start + len(speech)]
    p_speech, p_noise = np.mean(speech**2), np.mean(segment**2)
    if p_noise < 1e-10 or p_speech < 1e-10:
        return speech
    return speech + segment * np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))


class NoiseBank:
    """Held-out noise clips, loaded once; silent clips are dropped (ESC-10 pads with silence)."""

    def __init__(self) -> None:
        self.clips = [w for w in (datasets.read_audio(p) for p in datasets.noise_files("heldout")) if np.mean(w**2) > 1e-7]

    def pick(self, rng: np.random.Generator) -> np.ndarray:
        return self.clips[int(rng.integers(len(self.clips)))]


def prepare(wave: np.ndarray, key: str, condition: str, duration: str, noise: NoiseBank | None) -> np.ndarray:
    """The audio a system sees for one clip under one (condition, duration): deterministic.
    The crop comes first, so every condition degrades the same stretch of speech."""
    wave = crop(wave, DURATIONS[duration], _rng("crop", key, duration))
    if condition == "clean":
        return wave.astype(np.float32)
    rng = _rng("noise" if condition in NOISY_CONDITIONS else condition, key, condition)
    if condition in NOISY_CONDITIONS:
        wave = mix_at_snr(reverberate(wave, rng), noise.pick(rng), NOISY_CONDITIONS[condition], rng)
    elif condition == "telephone":
        wave = telephone(wave)
    elif condition == "far":
        wave = far_field(wave, rng)
    elif condition == "pitch":
        wave = shift_pitch_and_tempo(wave, rng)
    else:
        raise ValueError(f"unknown condition {condition!r}")
    peak = np.abs(wave).max() if len(wave) else 0.0
    if peak > 1.0:  # keep within [-1, 1] like real captured audio
        wave = wave / peak
    return wave.astype(np.float32)


# ---------------------------------------------------------------- systems


@dataclass
class System:
    label: str
    cache_id: str | None  # changes whenever the system's outputs could change; None: never cache
    num_parameters: int | None = None
    macs_per_second: float | None = None
    _embed_many: object = field(default=None, repr=False)
    embedder: object = field(default=None, repr=False)  # the model (Embedder, Teacher: embed(wave)), for other tools

    def embed_many(self, waves: list[np.ndarray]) -> np.ndarray:
        return self._embed_many(waves)


def student_system(spec: str) -> System:
    """spec: [LABEL=]PATH[@VARIANT]; PATH a step graph (.onnx), a training checkpoint (.pt) or a
    format-1 .npz (both exported in memory), or 'untrained' (random init, for plumbing checks);
    VARIANT fp32 (default) or int8 (training/export_weights.py), or numpy-baseline (the frozen numpy
    runtime of tools/baseline, which runs only its own weights)."""
    import streamsv
    from training.export_weights import embedder_from
    from training.model import untrained_embedder

    label, _, path = spec.rpartition("=")
    path, _, variant = path.partition("@")
    if variant == "numpy-baseline":
        from tools.baseline import numpy_runtime

        emb = numpy_runtime.load_baseline()
    else:
        emb = untrained_embedder(seed=0) if path == "untrained" else embedder_from(path, variant or "fp32")
    if not label:
        default = path != "untrained" and Path(path).resolve() == streamsv.embedder.DEFAULT_WEIGHTS.resolve()
        label = ("student" if default else Path(path).stem) + (f"@{variant}" if variant else "")
    return System(
        label=label,
        # A random model's fingerprint does not track architecture edits: never cache it.
        # Keyed by fingerprint and runtime: the ONNX graphs' embeddings never reuse the numpy runtime's.
        cache_id=None if path == "untrained" else f"student-{emb.fingerprint}-" + ("numpy" if variant == "numpy-baseline" else "ort"),
        num_parameters=getattr(emb, "num_parameters", None),
        macs_per_second=getattr(emb, "macs_per_second", None),
        _embed_many=lambda waves: np.stack([emb.embed(w) for w in waves]),
        embedder=emb,
    )


def teacher_system() -> System:
    from training import teacher

    t = teacher.Teacher()
    return System("teacher", "teacher-resemblyzer-0.1.4", t.num_parameters, t.macs_per_second, t.embed_batch, embedder=t)


def mfcc_stats(wave: np.ndarray) -> np.ndarray:
    """Mean and standard deviation over time of 20 MFCCs (librosa defaults otherwise)."""
    import librosa

    m = librosa.feature.mfcc(y=wave.astype(np.float32), sr=SAMPLE_RATE, n_mfcc=MFCC_N)
    return np.concatenate([m.mean(axis=1), m.std(axis=1)]).astype(np.float32)


def mfcc_system() -> System:
    # Raw statistics; the per-dimension z-normalisation over the evaluated set happens in
    # score_set (it needs the whole set), then cosine like every other system.
    return System("mfcc", "mfcc-stats-v1", 0, None, lambda waves: np.stack([mfcc_stats(w) for w in waves]))


def znorm(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)


# ---------------------------------------------------------------- running


def _clip_keys(utts) -> list[str]:
    return [str(u.path.relative_to(datasets.data_root())) for u in utts]


def prepared_waves(utts, condition: str, duration: str, noise, use_cache: bool = False) -> list[np.ndarray]:
    """Every clip as `prepare` degrades it. With `use_cache`, a degraded cell's audio is kept under
    cache/eval/audio (float32, so cached and fresh audio are the same samples): a new model's run
    then skips the slow channels (the telephone codec, the pitch shift) that an earlier run made."""
    keys = _clip_keys(utts)
    path = None
    if use_cache and condition != "clean":
        digest = zlib.crc32("\n".join(keys).encode())
        path = CACHE_DIR / "audio" / f"{condition}-{DEGRADE_VERSION}__{duration}__{digest:08x}.npz"
        if path.is_file():
            with np.load(path) as z:
                if list(z["keys"]) == keys:
                    audio, ends = z["audio"], z["ends"]
                    return [audio[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]
    waves = [prepare(datasets.read_audio(u.path), k, condition, duration, noise) for u, k in zip(utts, keys)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # one per process, as for the embeddings
        np.savez(tmp, audio=np.concatenate(waves).astype(np.float32), ends=np.cumsum([len(w) for w in waves]),
                 keys=np.asarray(keys))
        tmp.replace(path)
    return waves


def embeddings(system: System, set_name: str, condition: str, duration: str, utts, noise, use_cache: bool,
               waves_for=None) -> np.ndarray:
    """`waves_for()`, when given, returns the prepared audio (shared by the systems of one cell,
    so a degradation is computed once per cell, and only if some system is not cached)."""
    cond = condition if condition == "clean" else f"{condition}-{DEGRADE_VERSION}"
    path = CACHE_DIR / f"{system.cache_id}__{set_name}__{cond}__{duration}.npz"
    keys = _clip_keys(utts)
    use_cache = use_cache and system.cache_id is not None
    if use_cache and path.is_file():
        with np.load(path) as z:
            if list(z["keys"]) == keys:
                return z["emb"]
    waves = waves_for() if waves_for is not None else prepared_waves(utts, condition, duration, noise)
    emb = system.embed_many(waves).astype(np.float32)
    if not use_cache:
        return emb
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temporary file per process: two evals caching the same cell at once (a shared machine's
    # parallel runs) must not write into one file, or the rename can publish a torn archive.
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, emb=emb, keys=np.asarray(keys))
    tmp.replace(path)
    return emb


def score_set(system: System, emb: np.ndarray, utts, normalise=None, impostors=None) -> dict[str, float]:
    """EER and minDCF per protocol. With `impostors` (training/voices.close_voices) also the
    similar-voice protocols "pairs_similar" and "enroll_similar" (the same targets, only the
    impostor trials it keeps) and each protocol's impostor-trial count."""
    if system.label == "mfcc":
        emb = znorm(emb)
    speakers = [u.speaker for u in utts]
    names = [u.path.name for u in utts]
    out = {}
    protocols = [("pairs", pairs_trials(emb, speakers, normalise)),
                 ("enroll", enroll_trials(emb, speakers, names, normalise))]
    if impostors is not None:
        protocols += [("pairs_similar", pairs_trials(emb, speakers, normalise, impostors)),
                      ("enroll_similar", enroll_trials(emb, speakers, names, normalise, impostors))]
    for protocol, (s, l) in protocols:
        no_impostor_left = protocol.endswith("_similar") and l.all()  # no two speakers of similar pitch
        out[f"{protocol}_eer"] = float("nan") if no_impostor_left else 100 * eer(s, l)
        out[f"{protocol}_mindcf"] = float("nan") if no_impostor_left else min_dcf(s, l)
        if impostors is not None:
            out[f"{protocol}_impostors"] = int((~l).sum())
    return out


def snorm_for(system: System, cohort_kind: str, top_k: int, use_cache: bool):
    """The s-norm `normalise` callable for one system, or None for the MFCC baseline (its features
    are z-normalised over the evaluated set, not embeddings a training cohort could describe)."""
    if system.label == "mfcc":
        return None
    from training import cohort  # cohort imports this module's degradations and cache

    matrix = cohort.cohort_embeddings(system, cohort_kind, use_cache)
    if top_k > len(matrix):
        raise ValueError(f"--snorm {top_k} exceeds the {cohort_kind} cohort's {len(matrix)} entries")
    return lambda scores, left, right: cohort.as_norm(scores, left, right, matrix, top_k)


def run(systems: list[System], sets, conditions, durations, use_cache: bool = True, log=print,
        snorm_top_k: int | None = None, cohort_kind: str = "channels",
        similar_semitones: float | None = None) -> list[dict]:
    """`snorm_top_k`: also score each neural system with adaptive s-norm (top-K) against the
    `cohort_kind` cohort, as an extra row labelled "<system>+snorm". `similar_semitones`: also the
    similar-voice protocols, impostors only between speakers whose median F0 (from their clean
    enrollment clips) lies within that many semitones (training/voices.py)."""
    noise = NoiseBank() if any(c in NOISY_CONDITIONS for c in conditions) else None
    snorms = {} if snorm_top_k is None else {s.label: snorm_for(s, cohort_kind, snorm_top_k, use_cache) for s in systems}
    rows = []
    for set_name in sets:
        utts = datasets.dev_set(set_name)
        impostors = None
        if similar_semitones is not None:
            from training import voices

            f0 = voices.speaker_f0(utts, datasets.read_audio)
            impostors = voices.close_voices(f0, similar_semitones)
            log(f"  {set_name}: {len(voices.similar_speaker_pairs(f0, similar_semitones))} of "
                f"{len(f0) * (len(f0) - 1) // 2} speaker pairs within {similar_semitones:g} semitones of median F0")
        for condition in conditions:
            for duration in durations:
                memo: list[list[np.ndarray]] = []

                def waves_for(condition=condition, duration=duration, memo=memo):
                    if not memo:
                        memo.append(prepared_waves(utts, condition, duration, noise, use_cache))
                    return memo[0]

                for system in systems:
                    started = time.perf_counter()
                    emb = embeddings(system, set_name, condition, duration, utts, noise, use_cache, waves_for)
                    row = {"system": system.label, "params": system.num_parameters, "macs_per_s": system.macs_per_second,
                           "set": set_name, "condition": condition, "duration": duration,
                           **score_set(system, emb, utts, impostors=impostors)}
                    rows.append(row)
                    similar = (f"; similar voices pairs {row['pairs_similar_eer']:.2f}% enroll {row['enroll_similar_eer']:.2f}%"
                               if impostors is not None else "")
                    log(f"  {set_name} {condition} {duration} {system.label}: pairs {row['pairs_eer']:.2f}% "
                        f"enroll {row['enroll_eer']:.2f}%{similar} ({time.perf_counter() - started:.1f} s)")
                    if snorms.get(system.label) is not None:
                        normed = {**row, "system": f"{system.label}+snorm",
                                  **score_set(system, emb, utts, snorms[system.label], impostors)}
                        rows.append(normed)
                        log(f"  {set_name} {condition} {duration} {normed['system']}: pairs {normed['pairs_eer']:.2f}% "
                            f"enroll {normed['enroll_eer']:.2f}%")
    return rows


def _fmt_count(x) -> str:
    if x is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def markdown(rows: list[dict]) -> str:
    head = ("| set | condition | duration | system | params | MAC/s | pairs EER % | pairs minDCF | enroll EER % | enroll minDCF |\n"
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['set']} | {r['condition']} | {r['duration']} | {r['system']} | {_fmt_count(r['params'])} | "
                     f"{_fmt_count(r['macs_per_s'])} | {r['pairs_eer']:.2f} | {r['pairs_mindcf']:.3f} | "
                     f"{r['enroll_eer']:.2f} | {r['enroll_mindcf']:.3f} |")
    return "\n".join(lines)


def markdown_wide(rows: list[dict]) -> str:
    """Compact view: one line per (set, condition, duration), "pairs / enroll EER %" per system."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    keys = list(dict.fromkeys((r["set"], r["condition"], r["duration"]) for r in rows))
    cell = {(r["set"], r["condition"], r["duration"], r["system"]): r for r in rows}
    lines = ["| set | condition | duration | " + " | ".join(f"{s} EER pairs / enroll %" for s in systems) + " |",
             "|---|---|---|" + "---:|" * len(systems)]
    for k in keys:
        vals = [cell.get((*k, s)) for s in systems]
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(
            "-" if v is None else f"{v['pairs_eer']:.2f} / {v['enroll_eer']:.2f}" for v in vals) + " |")
    return "\n".join(lines)


def markdown_similar(rows: list[dict]) -> str:
    """The similar-voice protocols beside the normal ones: per (set, condition, duration) how many
    impostor trials the pitch filter keeps, then "all / similar" EER % per system and protocol."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    keys = list(dict.fromkeys((r["set"], r["condition"], r["duration"]) for r in rows))
    cell = {(r["set"], r["condition"], r["duration"], r["system"]): r for r in rows}
    protocols = ("pairs", "enroll")
    lines = ["| set | condition | duration | impostor trials kept: pairs / enroll | "
             + " | ".join(f"{s} {p} EER % all / similar" for p in protocols for s in systems) + " |",
             "|---|---|---|---:|" + "---:|" * (len(systems) * len(protocols))]
    for k in keys:
        first = next(cell[(*k, s)] for s in systems if (*k, s) in cell)
        kept = " / ".join(f"{first[f'{p}_similar_impostors']} of {first[f'{p}_impostors']}" for p in protocols)
        vals = [(p, cell.get((*k, s))) for p in protocols for s in systems]
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {kept} | " + " | ".join(
            "-" if v is None else f"{v[f'{p}_eer']:.2f} / {v[f'{p}_similar_eer']:.2f}" for p, v in vals) + " |")
    return "\n".join(lines)


def similar_summary_lines(rows: list[dict]) -> list[str]:
    """Per system and protocol, how much the similar-voice impostors raise its own EER: the mean
    over cells of similar-voice EER / all-impostor EER (cells where either is 0 or undefined are
    left out and counted). A model that ignores what tells close voices apart rises the most."""
    lines = []
    for system in dict.fromkeys(r["system"] for r in rows):
        for protocol in ("enroll", "pairs"):
            mine = [r for r in rows if r["system"] == system]
            ratios = [r[f"{protocol}_similar_eer"] / r[f"{protocol}_eer"] for r in mine
                      if r[f"{protocol}_eer"] > 0 and np.isfinite(r[f"{protocol}_similar_eer"])]
            if ratios:
                lines.append(f"{system} {protocol}: similar-voice EER / all-impostor EER, mean {np.mean(ratios):.2f} "
                             f"(median {np.median(ratios):.2f}, max {max(ratios):.2f}) over {len(ratios)} cells"
                             + (f"; {len(mine) - len(ratios)} left out (EER 0 or no similar pair)" if len(ratios) < len(mine) else ""))
    return lines


def ratio_summary(rows: list[dict], reference: str = "teacher") -> list[dict]:
    """Per system other than `reference` and per protocol: the worst-case (largest) and the mean
    ratio of its EER to the reference's EER over every (set, condition, duration) both have.
    A cell where the reference's EER is 0 has no ratio: it is left out and listed, with the
    system's EER there, so it cannot vanish silently."""
    ref = {(r["set"], r["condition"], r["duration"]): r for r in rows if r["system"] == reference}
    out = []
    protocols = [p for p in ("enroll", "pairs", "enroll_similar", "pairs_similar") if rows and f"{p}_eer" in rows[0]]
    for system in dict.fromkeys(r["system"] for r in rows if r["system"] != reference):
        for protocol in protocols:
            ratios, undefined = [], []
            for r in rows:
                cell = (r["set"], r["condition"], r["duration"])
                if r["system"] != system or cell not in ref:
                    continue
                base = ref[cell][f"{protocol}_eer"]
                if np.isnan(base):  # a similar-voice protocol with no similar speakers in the set
                    continue
                if base > 0:
                    ratios.append((r[f"{protocol}_eer"] / base, cell))
                else:
                    undefined.append((cell, r[f"{protocol}_eer"]))
            if not ratios:
                continue
            worst = max(ratios)
            out.append({"system": system, "reference": reference, "protocol": protocol, "worst": worst[0],
                        "worst_cell": " ".join(worst[1]), "mean": float(np.mean([x for x, _ in ratios])),
                        "cells": len(ratios), "undefined": [(" ".join(c), e) for c, e in undefined]})
    return out


def summary_lines(summary: list[dict]) -> list[str]:
    lines = []
    for s in summary:
        left = "".join(f"; left out (teacher EER 0): {c} at {e:.2f}%" for c, e in s["undefined"])
        lines.append(f"{s['system']} / {s['reference']} {s['protocol']} EER ratio: worst {s['worst']:.2f} "
                     f"({s['worst_cell']}), mean {s['mean']:.2f} over {s['cells']} cells{left}")
    return lines


def _csv(value: str, allowed) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"error: unknown {', '.join(bad)}; expected some of {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", action="append", default=[], metavar="[LABEL=]PATH",
                   help="student checkpoint (repeatable); 'untrained' for a random model")
    p.add_argument("--systems", default="student,teacher,mfcc", help="comma list of student,teacher,mfcc")
    p.add_argument("--sets", default=",".join(EVAL_SETS))
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--durations", default=",".join(DURATIONS))
    p.add_argument("--no-cache", action="store_true", help="recompute embeddings instead of reading cache/eval")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON ('-' for stdout)")
    p.add_argument("--wide", action="store_true", help="compact table: pairs / enroll EER per system")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: share the machine)")
    p.add_argument("--snorm", type=int, metavar="K", help="also score with adaptive s-norm, top-K of the cohort")
    p.add_argument("--cohort", default="channels", help="s-norm cohort: clean or channels (training/cohort.py)")
    p.add_argument("--similar", type=float, nargs="?", const=2.0, metavar="SEMITONES",
                   help="also the similar-voice impostor protocols: impostors only between speakers whose median F0 "
                        "is within SEMITONES (default 2) of each other (training/voices.py); printed as a second table")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    names = _csv(a.systems, ("student", "teacher", "mfcc"))
    sets = _csv(a.sets, datasets.DEV_SETS)
    conditions = _csv(a.conditions, CONDITIONS)
    durations = _csv(a.durations, tuple(DURATIONS))
    if a.snorm is not None:
        from training import cohort

        _csv(a.cohort, cohort.COHORT_KINDS)
        if a.snorm < 1:
            raise SystemExit(f"error: --snorm K must be at least 1, not {a.snorm}")
    if a.similar is not None and not 0 < a.similar <= 24:
        raise SystemExit(f"error: --similar SEMITONES must be above 0 and at most 24, not {a.similar:g}")
    if datasets.data_root(required=False) is None:
        raise SystemExit("error: shared data not found (set STREAMSV_DATA)")

    systems: list[System] = []
    if "student" in names:
        specs = a.student or [str(REPO / "streamsv" / "weights" / "student.onnx")]
        try:
            systems += [student_system(s) for s in specs]
        except Exception as e:  # StreamsvError from a missing/bad checkpoint: one line, not a traceback
            raise SystemExit(f"error: {e}")
    if "teacher" in names:
        systems.append(teacher_system())
    if "mfcc" in names:
        systems.append(mfcc_system())

    log = (lambda *x: print(*x, file=sys.stderr)) if a.json == "-" else print
    try:
        rows = run(systems, sets, conditions, durations, use_cache=not a.no_cache, log=log,
                   snorm_top_k=a.snorm, cohort_kind=a.cohort, similar_semitones=a.similar)
    except ValueError as e:  # a top-K larger than the cohort, a cohort holding a dev speaker
        raise SystemExit(f"error: {e}")
    summary = ratio_summary(rows) if "teacher" in names else []
    if a.json == "-":
        print(json.dumps(rows, indent=1))
        for line in summary_lines(summary):
            log(line)
    else:
        print(markdown_wide(rows) if a.wide else markdown(rows))
        if a.similar is not None:
            print(f"\nSimilar-voice impostors (median F0 within {a.similar:g} semitones; targets unchanged):\n")
            print(markdown_similar(rows))
            print("\n".join(similar_summary_lines(rows)))
        print("\n".join(summary_lines(summary)))
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
