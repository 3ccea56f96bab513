"""How the enrollment verdict treats real speech, noisy speech and non-voices (no model needed).

    python -m tools.enrollment_verdicts

For every dev speaker (speechocean762 dev, ASC val, LibriSpeech test-other, and the urdu set as
an out-of-domain check: dev sets only, evaluated, never fitted on), the recordings a user would
enroll from (first 5 utterances; ASC: first 20 one-second clips) are judged as ``enroll --from``
judges them: clean, with held-out ESC-10 noise at 10, 5 and 0 dB SNR, and with white noise at
10 and 5 dB. Noise clips alone
(ESC-10 held-out and Speech Commands backgrounds) and synthetic tones are judged too. Prints
the count of each verdict and the first reasons given.

    python -m tools.enrollment_verdicts --collisions    # the collision bar's figures (loads the model)
    python -m tools.enrollment_verdicts --consistency   # the consistency bars' figures (loads the model)
"""
from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import numpy as np

from streamsv import enrollment
from streamsv.features import SAMPLE_RATE
from streamsv.profiles import MIN_ENROLL_S
from streamsv.vad import voiced_speech
from tools.fit_confidence import add_noise
from tools.make_conversations import by_speaker
from training.datasets import TUNING_SETS, _audio_files, data_root, dev_set, noise_files, read_audio

ENROLL_FILES = {"asc-val": 20}
DEFAULT_FILES = 5
SNRS_DB = (10.0, 5.0, 0.0)
WHITE_SNRS_DB = (10.0, 5.0)      # a fan or hiss: raises the spectral flatness of speech the most
SEED = 7


def judge(waves: list[np.ndarray]) -> tuple[enrollment.Verdict, enrollment.Quality]:
    speech = [s for w in waves if len(s := voiced_speech(w))]
    q = enrollment.measure(speech, waves)
    return enrollment.judge(q, None, min_speech_s=MIN_ENROLL_S), q


def speakers() -> dict[str, list[list[Path]]]:
    out: dict[str, list[list[Path]]] = {}
    for name in TUNING_SETS:
        utts = dev_set(name)
        n = ENROLL_FILES.get(name, DEFAULT_FILES)
        out[name] = [[u.path for u in clips[:n]] for clips in by_speaker(utts).values()]
    urdu = data_root() / "urdu"
    if urdu.is_dir():
        groups = [_audio_files(d)[:DEFAULT_FILES] for d in sorted(urdu.iterdir()) if d.is_dir()]
        out["urdu (out of domain)"] = [g for g in groups if len(g) >= 3]
    return out


def _span(values: list[float | None], spec: str) -> str:
    vals = [v for v in values if v is not None]
    return f"{format(min(vals), spec)}-{format(max(vals), spec)}" if vals else "-"


def report(label: str, judged: list[tuple[enrollment.Verdict, enrollment.Quality]]) -> None:
    verdicts = [v for v, _ in judged]
    counts = collections.Counter(v.status for v in verdicts)
    # The reason's words without its figures, so that "12.5 s of speech" and "14.6 s" count together.
    reasons = collections.Counter(re.sub(r"[-0-9.]+", "N", v.reasons[0].split(" (")[0].split(":")[0])
                                  for v in verdicts if v.reasons)
    top = "; ".join(f"{r} x{n}" for r, n in reasons.most_common(2))
    flat = _span([q.flatness for _, q in judged], ".3f")
    mod = _span([q.modulation_db for _, q in judged], ".1f")
    share = _span([q.speech_share for _, q in judged], ".2f")
    print(f"| {label} | {len(verdicts)} | {counts['good']} | {counts['usable']} | {counts['refused']} | "
          f"{flat} | {mod} | {share} | {top} |")


COLLISION_SETS = {"speechocean-dev": 5, "librispeech-test-other": 3}    # utterances per profile


def collisions() -> None:
    """``--collisions``: centroid-to-centroid cosines of two profiles per dev speaker, enrolled as
    ``enroll --from`` does from disjoint utterances (the shipped model): where the bar goes."""
    from streamsv import load_embedder
    from streamsv.profiles import enroll
    from streamsv.scoring import DEFAULT_THRESHOLD

    emb = load_embedder()
    bar = enrollment.COLLISION_THRESHOLD
    print(f"model {emb.fingerprint}; collision bar {bar:.2f}")
    print("| set | speakers | same: min / median | different: max / p99 / median | "
          f"different >= {bar:.2f} | different >= {DEFAULT_THRESHOLD:.2f} |")
    print("|---|---:|---|---|---:|---:|")
    for name, n in COLLISION_SETS.items():
        by_spk = {spk: [u.path for u in clips] for spk, clips in by_speaker(dev_set(name)).items()}
        first, second = {}, {}
        for spk, files in by_spk.items():
            first[spk] = enroll(emb, "a", [read_audio(p) for p in files[:n]])[0].centroid
            second[spk] = enroll(emb, "b", [read_audio(p) for p in files[n:2 * n]])[0].centroid
        same = np.array([float(first[s] @ second[s]) for s in by_spk])
        diff = np.array([float(first[s] @ second[t]) for s in by_spk for t in by_spk if s != t])
        print(f"| {name} ({n} utterances per profile) | {len(by_spk)} | {same.min():.2f} / {np.median(same):.2f} | "
              f"{diff.max():.2f} / {np.percentile(diff, 99):.2f} / {np.median(diff):.2f} | "
              f"{np.mean(diff >= bar):.1%} | {np.mean(diff >= DEFAULT_THRESHOLD):.1%} |")


CONSISTENCY_SETS = {**COLLISION_SETS, "urdu": 3}    # utterances per profile; urdu: out of domain


def consistency() -> None:
    """``--consistency``: the consistency of one clean profile per dev speaker (its first
    utterances, as ``enroll --from`` enrolls them; the shipped model): where the bars go."""
    from streamsv import load_embedder
    from streamsv.profiles import enroll

    emb = load_embedder()
    good, usable = enrollment.CONSISTENCY_GOOD, enrollment.CONSISTENCY_USABLE
    print(f"model {emb.fingerprint}; consistency bars: good {good:.2f}, usable {usable:.2f}")
    print(f"| set | profiles | min / p10 / median / max | below {good:.2f} | below {usable:.2f} |")
    print("|---|---:|---|---:|---:|")
    for name, n in CONSISTENCY_SETS.items():
        clips = [c for c in by_speaker(dev_set(name)).values() if len(c) >= n]
        means = np.array([enroll(emb, "p", [read_audio(u.path) for u in c[:n]])[0].consistency()[0] for c in clips])
        print(f"| {name} ({n} utterances per profile) | {len(means)} | {means.min():.2f} / "
              f"{np.percentile(means, 10):.2f} / {np.median(means):.2f} / {means.max():.2f} | "
              f"{np.mean(means < good):.0%} | {np.mean(means < usable):.0%} |")


def main() -> int:
    if "--collisions" in sys.argv[1:]:
        collisions()
        return 0
    if "--consistency" in sys.argv[1:]:
        consistency()
        return 0
    rng = np.random.default_rng(SEED)
    noises = [read_audio(p) for p in noise_files("heldout")[::4]]
    print("| enrollment | n | good | usable | refused | flatness | modulation dB | speech share | most common first reasons |")
    print("|---|---:|---:|---:|---:|---|---|---|---|")
    for name, groups in speakers().items():
        waves = [[read_audio(p) for p in files] for files in groups]
        report(f"{name}, clean", [judge(w) for w in waves])
        for snr in SNRS_DB:
            report(f"{name}, ESC-10 noise {snr:g} dB",
                   [judge([add_noise(x, noises[int(rng.integers(len(noises)))], snr, rng) for x in w]) for w in waves])
        for snr in WHITE_SNRS_DB:
            report(f"{name}, white noise {snr:g} dB",
                   [judge([add_noise(x, rng.standard_normal(len(x)).astype(np.float32), snr, rng) for x in w]) for w in waves])
    backgrounds = [read_audio(p) for p in noise_files("heldout")[::2]]
    backgrounds += [read_audio(p)[: 20 * SAMPLE_RATE] for p in _audio_files(data_root() / "noise" / "speech-commands")]
    report("noise clips alone (ESC-10 held out, Speech Commands backgrounds)", [judge([b]) for b in backgrounds])
    t = np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE
    synthetic = [0.3 * np.sin(2 * np.pi * f * t) for f in (110, 220, 440, 1000, 3000)]
    synthetic += [0.3 * np.sign(np.sin(2 * np.pi * f * t)) for f in (100, 150, 300)]
    synthetic += [0.3 * np.sin(2 * np.pi * 1000 * t) * (np.sin(2 * np.pi * r * t) > 0) for r in (1, 2, 4)]
    synthetic += [a * rng.standard_normal(10 * SAMPLE_RATE) for a in (0.003, 0.03, 0.3)]
    synthetic += [np.zeros(10 * SAMPLE_RATE)]
    report("synthetic: sines, square waves, beeps, white noise, silence", [judge([s.astype(np.float32)]) for s in synthetic])
    return 0


if __name__ == "__main__":
    sys.exit(main())
