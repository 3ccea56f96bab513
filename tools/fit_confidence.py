"""Fit the confidence calibration for a model on dev speakers and print its reliability table.

    python -m tools.fit_confidence                      # the shipped weights -> streamsv/weights/confidence.json
    python -m tools.fit_confidence --model other.npz    # another model, keyed by its fingerprint

Dev sets only (never trained on): the speechocean762 dev speakers, the ASC val split (first
takes) and LibriSpeech test-other; never urdu. Per speaker, a profile is enrolled as
``streamsv enroll`` would (first 3 utterances; ASC: its first 8 one-second clips as one
recording), and every other utterance gives test windows of 1, 1.5, 2 and 3 s of voiced speech
(seeded crops), half of them (seeded) mixed with held-out ESC-10 noise at 10 dB, as a live
window would be. Each window is scored against every profile of its set.

The table is honest about over-fitting: speakers are split in two folds (alternating, per set),
each fold's trials are scored by a calibration fitted on the other fold, impostor trials are
subsampled to the genuine count (seed 0, a prior of one half), and the shipped calibration is
then fitted on all trials.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from streamsv import confidence, load_embedder
from streamsv.features import SAMPLE_RATE
from streamsv.profiles import enroll
from streamsv.scoring import cosine_scores
from streamsv.vad import voiced_speech
from training.datasets import TUNING_SETS, dev_set, noise_files, read_audio

ENROLL_N = 3
ASC_ENROLL_CLIPS = 8
DURATIONS_S = (1.0, 1.5, 2.0, 3.0)
NOISY_SNR_DB = 10.0
NOISY_SHARE = 0.5
WINDOW_S = 3.0
SEED = 1234


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    start = int(rng.integers(0, max(1, len(noise) - len(wave))))
    n = np.resize(noise[start:], len(wave))
    gain = np.sqrt(np.mean(wave ** 2) / (np.mean(n ** 2) + 1e-12) / 10 ** (snr_db / 10))
    return (wave + gain * n).astype(np.float32)


def set_trials(emb, name: str, noises: list[np.ndarray]) -> list[tuple[str, float, int, float]]:
    """(speaker, cosine, genuine, seconds) for every window x profile of one dev set."""
    utts = dev_set(name)
    speakers = sorted({u.speaker for u in utts})
    centroids, windows = {}, []
    for spk in speakers:
        files = [u.path for u in utts if u.speaker == spk]
        rng = np.random.default_rng([SEED, speakers.index(spk), len(name)])
        if name.startswith("asc"):
            enroll_rec = [np.concatenate([read_audio(p) for p in files[:ASC_ENROLL_CLIPS]])]
            rest = files[ASC_ENROLL_CLIPS:]
        else:
            enroll_rec = [read_audio(p) for p in files[:ENROLL_N]]
            rest = files[ENROLL_N:]
        profile, _ = enroll(emb, "dev", enroll_rec)
        centroids[spk] = profile.centroid
        for p in rest:
            speech = voiced_speech(read_audio(p))
            if len(speech) < 0.5 * SAMPLE_RATE:
                continue
            lengths = DURATIONS_S if not name.startswith("asc") else (len(speech) / SAMPLE_RATE,)
            for d in lengths:
                n = min(int(d * SAMPLE_RATE), len(speech))
                if n < int(d * SAMPLE_RATE) * 0.9 and d > lengths[0]:
                    continue                      # this utterance is too short for this window
                a = int(rng.integers(0, len(speech) - n + 1))
                crop = speech[a:a + n]
                if rng.random() < NOISY_SHARE:
                    crop = add_noise(crop, noises[int(rng.integers(len(noises)))], NOISY_SNR_DB, rng)
                windows.append((spk, emb.embed(crop), n / SAMPLE_RATE))
    out = []
    for spk, vec, secs in windows:
        for other, score in cosine_scores(vec, centroids).items():
            out.append((f"{name}:{spk}", score, int(other == spk), secs))
    return out


def balanced(idx: np.ndarray, genuine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gen = idx[genuine[idx] == 1]
    imp = idx[genuine[idx] == 0]
    return np.concatenate([gen, rng.choice(imp, size=min(len(imp), len(gen)), replace=False)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="weights file (default: the shipped weights)")
    ap.add_argument("--out", default=str(confidence.SHIPPED_PATH), help="calibration file to update")
    ap.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    emb = load_embedder(args.model)
    noises = [read_audio(p) for p in noise_files("heldout")[::8]]
    trials = []
    for name in TUNING_SETS:
        got = set_trials(emb, name, noises)
        print(f"{name}: {len(got)} trials ({sum(t[2] for t in got)} genuine)", file=sys.stderr)
        trials += got
    speakers = np.array([t[0] for t in trials])
    cos = np.array([t[1] for t in trials])
    gen = np.array([t[2] for t in trials])
    secs = np.array([t[3] for t in trials])
    # Two folds of speakers, alternating within each set.
    order = {s: i for i, s in enumerate(sorted(set(speakers)))}
    fold = np.array([order[s] % 2 for s in speakers])
    held_conf = np.zeros(len(cos))
    for f in (0, 1):
        train = fold != f
        m = confidence.fit(cos[train], secs[train], gen[train], WINDOW_S)
        held_conf[~train] = [m.confidence(c, s) for c, s in zip(cos[~train], secs[~train])]
    rng = np.random.default_rng(0)
    sel = balanced(np.arange(len(cos)), gen, rng)
    print(f"model {emb.fingerprint}; held-out reliability (2 speaker folds, balanced: {len(sel)} trials)")
    print(confidence.format_reliability(confidence.reliability(held_conf[sel], gen[sel])))
    print("\nby window length (held out, balanced): expected calibration error")
    for lo, hi in ((0.0, 1.25), (1.25, 1.75), (1.75, 2.5), (2.5, 9.0)):
        m = (secs[sel] >= lo) & (secs[sel] < hi)
        if m.any():
            rows = confidence.reliability(held_conf[sel][m], gen[sel][m])
            print(f"  {lo:g}-{hi:g} s: {m.sum()} trials, ECE {confidence.expected_calibration_error(rows):.3f}")
    model = confidence.fit(cos, secs, gen, WINDOW_S,
                           fitted_on=f"{'+'.join(TUNING_SETS)}, clean and noisy{NOISY_SNR_DB:g}, {len(cos)} trials")
    print(f"\nfitted on all: coef {', '.join(f'{c:.4f}' for c in model.coef)}")
    for s in (1.0, 3.0):
        print(f"  {s:g} s window: confidence 0.5 at cosine {model.cosine_for(0.5, s):.3f}, "
              f"0.9 at {model.cosine_for(0.9, s):.3f}, 0.99 at {model.cosine_for(0.99, s):.3f}")
    if not args.dry_run:
        path = confidence.save(args.out, emb.fingerprint, model, force=True, shared=True)
        print(f"wrote {path} (model {emb.fingerprint})")
    print(f"took {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
