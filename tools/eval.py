"""Speaker-verification evaluation on the dev sets: student(s), teacher and an MFCC baseline side by side.

    python tools/eval.py --student streamsv/weights/student.npz             # everything
    python tools/eval.py --systems teacher,mfcc --sets speechocean-dev --conditions clean --durations full
    python tools/eval.py --student a=runs/a.pt --student b=runs/b.pt --json out.json

Protocols (as in shared/data/README.md):
  pairs   every unordered pair of utterances of the set is one trial.
  enroll  each speaker's first 3 utterances (by file name) are averaged into a profile (mean of unit
          embeddings, renormalised); every other utterance is scored against every profile.
Conditions: clean; noisy10 / noisy5 = simulated room reverb, then a held-out ESC-10 noise class
(never used in training) at 10 / 5 dB SNR. Durations: full clip, or a seeded 2 s / 1 s crop.
Every random choice is seeded from the clip's path, so runs and systems see the same audio.
Embeddings are cached per (system, set, condition, duration) under cache/eval (gitignored).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO / "cache" / "eval"
SAMPLE_RATE = 16000

EVAL_SETS = ("speechocean-dev", "asc-test", "librispeech-test-other")
CONDITIONS = {"clean": None, "noisy10": 10.0, "noisy5": 5.0}  # value: SNR in dB
DURATIONS = {"full": None, "2s": 2.0, "1s": 1.0}  # value: crop length in seconds
ENROLL_UTTERANCES = 3
P_TARGET = 0.01  # minDCF operating point (C_miss = C_fa = 1), as in VoxCeleb/NIST SRE
RT60_RANGE_S = (0.2, 0.7)  # simulated rooms: small office to living room
DRR_RANGE_DB = (0.0, 10.0)  # direct-to-reverberant ratio: a device a metre or two from the talker
DEGRADE_VERSION = "v2"  # bump when the noisy conditions change: it keys the embedding cache
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


def min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float = P_TARGET) -> float:
    """Minimum normalised detection cost, C_miss = C_fa = 1; normalised by the cost of the
    better trivial system, min(p_target, 1 - p_target)."""
    misses, false_alarms = _error_rates(np.asarray(scores, np.float64), np.asarray(labels, bool))
    cost = p_target * misses + (1 - p_target) * false_alarms
    return float(cost.min() / min(p_target, 1 - p_target))


# ---------------------------------------------------------------- protocols


def pairs_trials(emb: np.ndarray, speakers: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine score and same-speaker label of every unordered pair."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    i, j = np.triu_indices(len(emb), k=1)
    spk = np.asarray(speakers)
    return np.einsum("nd,nd->n", emb[i], emb[j]), spk[i] == spk[j]


def enroll_trials(emb: np.ndarray, speakers: list[str], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Profiles from each speaker's first ENROLL_UTTERANCES files by name; the rest are tests."""
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
    labels = np.asarray(speakers)[tests][:, None] == np.asarray(profile_spk)[None, :]
    return scores.ravel(), labels.ravel()


# ---------------------------------------------------------------- audio conditions


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("|".join(map(str, parts)).encode()))


def crop(wave: np.ndarray, seconds: float | None, rng: np.random.Generator) -> np.ndarray:
    if seconds is None or len(wave) <= int(seconds * SAMPLE_RATE):
        return wave
    n = int(seconds * SAMPLE_RATE)
    start = int(rng.integers(0, len(wave) - n + 1))
    return wave[start : start + n]


def room_impulse_response(rng: np.random.Generator) -> np.ndarray:
    """A synthetic RIR: direct path, then exponentially decaying noise reaching -60 dB at RT60,
    scaled so the direct-to-reverberant energy ratio falls in DRR_RANGE_DB."""
    rt60 = rng.uniform(*RT60_RANGE_S)
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    drr_db = rng.uniform(*DRR_RANGE_DB)
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    delay = int(rng.integers(int(0.002 * SAMPLE_RATE), int(0.010 * SAMPLE_RATE)))  # first reflection
    rir = np.zeros(len(t) + delay)
    rir[0] = 1.0
    rir[delay:] += tail
    return rir / np.linalg.norm(rir)


def reverberate(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import fftconvolve

    wet = fftconvolve(wave, room_impulse_response(rng))[: len(wave)]
    return wet * (np.sqrt(np.mean(wave**2)) / max(np.sqrt(np.mean(wet**2)), 1e-9))


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
    """The audio a system sees for one clip under one (condition, duration): deterministic."""
    wave = crop(wave, DURATIONS[duration], _rng("crop", key, duration))
    snr = CONDITIONS[condition]
    if snr is not None:
        rng = _rng("noise", key, condition)
        wave = mix_at_snr(reverberate(wave, rng), noise.pick(rng), snr, rng)
        peak = np.abs(wave).max()
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
    embedder: object = field(default=None, repr=False)  # the student's Embedder, for other tools

    def embed_many(self, waves: list[np.ndarray]) -> np.ndarray:
        return self._embed_many(waves)


def student_system(spec: str) -> System:
    """spec: [LABEL=]PATH[@VARIANT]; PATH may be 'untrained' (random init, for plumbing checks);
    VARIANT is a way to run it from streamsv.bench (numpy-exact, numpy-tanh, torch, int8, compile)."""
    import streamsv
    from streamsv.bench import apply_variant
    from streamsv.embedder import Embedder

    label, _, path = spec.rpartition("=")
    path, _, variant = path.partition("@")
    emb = Embedder.untrained(seed=0) if path == "untrained" else streamsv.load_embedder(path)
    emb = apply_variant(emb, variant or "numpy")
    if not label:
        default = path != "untrained" and Path(path).resolve() == streamsv.embedder.DEFAULT_WEIGHTS.resolve()
        label = ("student" if default else Path(path).stem) + (f"@{variant}" if variant else "")
    return System(
        label=label,
        # A random model's fingerprint does not track architecture edits: never cache it.
        cache_id=None if path == "untrained" else f"student-{emb.fingerprint}" + (f"-{variant}" if variant else ""),
        num_parameters=getattr(emb, "num_parameters", None),
        macs_per_second=getattr(emb, "macs_per_second", None),
        _embed_many=lambda waves: np.stack([emb.embed(w) for w in waves]),
        embedder=emb,
    )


def teacher_system() -> System:
    import teacher

    t = teacher.Teacher()
    return System("teacher", "teacher-resemblyzer-0.1.4", t.num_parameters, t.macs_per_second, t.embed_batch)


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


def embeddings(system: System, set_name: str, condition: str, duration: str, utts, noise, use_cache: bool) -> np.ndarray:
    cond = condition if CONDITIONS[condition] is None else f"{condition}-{DEGRADE_VERSION}"
    path = CACHE_DIR / f"{system.cache_id}__{set_name}__{cond}__{duration}.npz"
    keys = [str(u.path.relative_to(datasets.data_root())) for u in utts]
    use_cache = use_cache and system.cache_id is not None
    if use_cache and path.is_file():
        with np.load(path) as z:
            if list(z["keys"]) == keys:
                return z["emb"]
    waves = [prepare(datasets.read_audio(u.path), k, condition, duration, noise) for u, k in zip(utts, keys)]
    emb = system.embed_many(waves).astype(np.float32)
    if not use_cache:
        return emb
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, emb=emb, keys=np.asarray(keys))
    tmp.replace(path)
    return emb


def score_set(system: System, emb: np.ndarray, utts) -> dict[str, float]:
    if system.label == "mfcc":
        emb = znorm(emb)
    speakers = [u.speaker for u in utts]
    names = [u.path.name for u in utts]
    out = {}
    for protocol, (s, l) in (
        ("pairs", pairs_trials(emb, speakers)),
        ("enroll", enroll_trials(emb, speakers, names)),
    ):
        out[f"{protocol}_eer"] = 100 * eer(s, l)
        out[f"{protocol}_mindcf"] = min_dcf(s, l)
    return out


def run(systems: list[System], sets, conditions, durations, use_cache: bool = True, log=print) -> list[dict]:
    noise = NoiseBank() if any(CONDITIONS[c] is not None for c in conditions) else None
    rows = []
    for set_name in sets:
        utts = datasets.dev_set(set_name)
        for condition in conditions:
            for duration in durations:
                for system in systems:
                    started = time.perf_counter()
                    emb = embeddings(system, set_name, condition, duration, utts, noise, use_cache)
                    row = {"system": system.label, "params": system.num_parameters, "macs_per_s": system.macs_per_second,
                           "set": set_name, "condition": condition, "duration": duration, **score_set(system, emb, utts)}
                    rows.append(row)
                    log(f"  {set_name} {condition} {duration} {system.label}: pairs {row['pairs_eer']:.2f}% "
                        f"enroll {row['enroll_eer']:.2f}% ({time.perf_counter() - started:.1f} s)")
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
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    names = _csv(a.systems, ("student", "teacher", "mfcc"))
    sets = _csv(a.sets, datasets.DEV_SETS)
    conditions = _csv(a.conditions, tuple(CONDITIONS))
    durations = _csv(a.durations, tuple(DURATIONS))
    if datasets.data_root(required=False) is None:
        raise SystemExit("error: shared data not found (set STREAMSV_DATA)")

    systems: list[System] = []
    if "student" in names:
        specs = a.student or [str(REPO / "streamsv" / "weights" / "student.npz")]
        try:
            systems += [student_system(s) for s in specs]
        except Exception as e:  # StreamsvError from a missing/bad checkpoint: one line, not a traceback
            raise SystemExit(f"error: {e}")
    if "teacher" in names:
        systems.append(teacher_system())
    if "mfcc" in names:
        systems.append(mfcc_system())

    log = (lambda *x: print(*x, file=sys.stderr)) if a.json == "-" else print
    rows = run(systems, sets, conditions, durations, use_cache=not a.no_cache, log=log)
    if a.json == "-":
        print(json.dumps(rows, indent=1))
    else:
        print(markdown_wide(rows) if a.wide else markdown(rows))
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
