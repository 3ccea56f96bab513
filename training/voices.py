"""Similar-voice impostors: does a model merge speakers whose voices are close in pitch?

The dev sets' random impostor pairs are mostly easy (a man against a woman, a child against an
adult). A model that learned to ignore vocal-tract length (issue 9's 6,400-step candidate was
suspected of it) shows up only when the impostor sounds like the target. So each speaker gets a
median F0 from its enrollment clips (YIN, below; language-agnostic, numpy only), and the
"similar" protocols keep only the impostor trials between speakers whose median F0 lies within
SIMILAR_SEMITONES of each other; target trials are unchanged. training/eval.py --similar uses it.

    python -m training.voices f0 --sets speechocean-dev,urdu           # each speaker's median F0
    python -m training.voices demo --student shipped=streamsv/weights/student.onnx --teacher
        # the cosines between the demo's espeak-ng voices, enrolled as `streamsv demo` enrolls
    python -m training.voices resample --student shipped=streamsv/weights/student.onnx --teacher
        # a speaker's own clips resampled (the recipe's pitch augmentation): still accepted as them?
        # --keep-formants: the pitch and tempo move, the spectral envelope is put back (prosody, not a new voice)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from streamsv.features import SAMPLE_RATE

SIMILAR_SEMITONES = 2.0  # a "similar voice": median F0 within this many semitones of the other's
F0_MIN_HZ = 70.0  # a deep male voice's median is above it; mains hum (50/60 Hz, heard in LibriSpeech pauses) is below
F0_MAX_HZ = 500.0  # above a young child's speaking F0
YIN_WINDOW_S = 0.025  # integration window: longer than the longest period (1 / F0_MIN_HZ = 14 ms)
YIN_HOP_S = 0.010
YIN_THRESHOLD = 0.15  # cumulative-mean-normalised difference below this: periodic (de Cheveigne & Kawahara 2002)
VOICED_LEVEL_DB = -35.0  # frames quieter than this, relative to the loudest frame, are not voiced
SILENCE_DBFS = -70.0  # and none below this absolute level (digital silence is perfectly "periodic")
F0_CLIPS = 3  # speaker F0 from its first clips by name: the enroll protocol's profile clips
REFERENCE_SET = "speechocean-dev"  # where `demo` reads each model's EER threshold
RESAMPLE_TESTS_PER_SPEAKER = 5


# ---------------------------------------------------------------- F0 (YIN)


def _frames(wave: np.ndarray, length: int, hop: int) -> np.ndarray:
    if len(wave) < length:
        return np.zeros((0, length), np.float64)
    n = 1 + (len(wave) - length) // hop
    return np.lib.stride_tricks.sliding_window_view(wave, length)[::hop][:n]


def _parabolic_minimum(curve: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Sub-sample position of the minimum at integer lags `k` (one per row of `curve`)."""
    rows = np.arange(len(k))
    left, mid, right = curve[rows, k - 1], curve[rows, k], curve[rows, k + 1]
    denom = left - 2 * mid + right
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    return k + np.clip(shift, -1.0, 1.0)


def frame_f0(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, fmin: float = F0_MIN_HZ,
             fmax: float = F0_MAX_HZ) -> np.ndarray:
    """F0 in Hz of each 10 ms hop (YIN), NaN where the frame is unvoiced or too quiet."""
    x = np.asarray(wave, np.float64)
    window = int(YIN_WINDOW_S * sample_rate)
    tau_min, tau_max = max(2, int(sample_rate / fmax)), int(np.ceil(sample_rate / fmin))
    frames = _frames(x, window + tau_max + 1, int(YIN_HOP_S * sample_rate))
    if len(frames) == 0:
        return np.zeros(0)
    frames = frames - frames.mean(axis=1, keepdims=True)
    # d(tau) = sum_{j<W} (x_j - x_{j+tau})^2 = E(0) + E(tau) - 2 r(tau), r by FFT, E by running sums.
    n_fft = 1 << int(np.ceil(np.log2(frames.shape[1] + window)))
    spec = np.fft.rfft(frames, n_fft)
    head = np.fft.rfft(frames[:, :window], n_fft)
    r = np.fft.irfft(np.conj(head) * spec, n_fft)[:, : tau_max + 2]
    energy = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
    lags = np.arange(tau_max + 2)
    e_tau = energy[:, lags + window] - energy[:, lags]
    diff = np.maximum(e_tau[:, :1] + e_tau - 2 * r, 0.0)
    # Cumulative mean normalised difference: 1 at lag 0, dips towards 0 at the period.
    running = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * lags[1:] / np.maximum(running, 1e-12)

    search = cmnd[:, tau_min : tau_max + 1]
    below = search < YIN_THRESHOLD
    periodic = below.any(axis=1)
    # The first dip under the threshold, followed down to its local minimum (not the global one:
    # that is often the period's multiple, an octave too low).
    k = np.argmax(below, axis=1) + tau_min
    for _ in range(tau_max):
        step = (k < tau_max) & (cmnd[np.arange(len(k)), k + 1] < cmnd[np.arange(len(k)), k])
        if not step.any():
            break
        k = k + step
    period = _parabolic_minimum(cmnd, np.clip(k, 1, tau_max))

    level = 10 * np.log10(np.maximum(energy[:, window] / window, 1e-12))
    loud = (level > level.max() + VOICED_LEVEL_DB) & (level > SILENCE_DBFS)
    return np.where(periodic & loud, sample_rate / period, np.nan)


def median_f0(waves: list[np.ndarray], sample_rate: int = SAMPLE_RATE) -> float:
    """Median F0 (Hz) over the voiced frames of all `waves`; NaN if none is voiced."""
    f0 = np.concatenate([frame_f0(w, sample_rate) for w in waves] or [np.zeros(0)])
    f0 = f0[~np.isnan(f0)]
    return float(np.median(f0)) if len(f0) else float("nan")


def semitones_apart(f0_a, f0_b):
    """Distance in semitones between two pitches (elementwise); NaN where either is unknown."""
    return 12.0 * np.abs(np.log2(np.asarray(f0_a, np.float64) / np.asarray(f0_b, np.float64)))


# ---------------------------------------------------------------- speakers and trials


def speaker_f0(utts, read_audio: Callable[[Path], np.ndarray], clips: int = F0_CLIPS) -> dict[str, float]:
    """Each speaker's median F0 from its first `clips` utterances by file name (clean audio:
    the pitch is the speaker's, the same whatever condition the trials are scored under)."""
    by_speaker: dict[str, list] = {}
    for u in sorted(utts, key=lambda u: (u.speaker, u.path.name)):
        by_speaker.setdefault(u.speaker, []).append(u)
    return {spk: median_f0([read_audio(u.path) for u in us[:clips]]) for spk, us in by_speaker.items()}


def close_voices(f0: dict[str, float], max_semitones: float = SIMILAR_SEMITONES) -> Callable:
    """`close(left, right)`: elementwise over two arrays of speaker ids, True where both speakers'
    median F0 are known and within `max_semitones`. A speaker with no F0 is close to nobody."""
    def close(left, right) -> np.ndarray:
        a = np.array([f0.get(s, np.nan) for s in np.asarray(left).ravel()])
        b = np.array([f0.get(s, np.nan) for s in np.asarray(right).ravel()])
        with np.errstate(invalid="ignore"):
            return (semitones_apart(a, b) <= max_semitones).reshape(np.shape(left))
    return close


def similar_speaker_pairs(f0: dict[str, float], max_semitones: float = SIMILAR_SEMITONES) -> list[tuple[str, str, float]]:
    """Unordered pairs of different speakers within `max_semitones`, with their distance."""
    spk = sorted(f0)
    out = []
    for i, a in enumerate(spk):
        for b in spk[i + 1 :]:
            d = float(semitones_apart(f0[a], f0[b]))
            if d <= max_semitones:
                out.append((a, b, d))
    return out


# ---------------------------------------------------------------- the demo's voices


def demo_voice_cosines(embedder, folder: Path) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Every demo voice (the stranger too) enrolled as `streamsv demo` enrolls (streamsv.profiles.enroll
    on its five synthesised lines); returns each voice's median F0 and the cosine between every two
    profiles' centroids."""
    from streamsv import demo
    from streamsv.profiles import enroll

    centroids, pitch = {}, {}
    for voice in demo.VOICES:
        audio = demo.enrollment_audio(folder, voice)  # espeak-ng is deterministic: the same audio per model
        profile, _ = enroll(embedder, voice.name, audio)
        centroids[voice.name] = profile.centroid / np.linalg.norm(profile.centroid)
        pitch[voice.name] = median_f0(audio)
    names = [v.name for v in demo.VOICES]
    cos = {(a, b): float(centroids[a] @ centroids[b]) for i, a in enumerate(names) for b in names[i + 1 :]}
    return pitch, cos


def dev_eer_threshold(system, set_name: str = REFERENCE_SET) -> float:
    """The system's enroll-protocol EER threshold on a clean dev set (eval's cached embeddings):
    the scale its cosines are read on (the teacher's impostors score far higher than the student's)."""
    from training import datasets
    from training import eval as ev

    utts = datasets.dev_set(set_name)
    emb = ev.embeddings(system, set_name, "clean", "full", utts, None, use_cache=True)
    scores, labels = ev.enroll_trials(emb, [u.speaker for u in utts], [u.path.name for u in utts])
    return ev.eer_threshold(scores, labels)


def _demo_main(a) -> int:
    from streamsv.demo import espeak_available
    from streamsv.errors import StreamsvError
    from training import datasets
    from training import eval as ev

    try:
        espeak_available()
        systems = [ev.student_system(s) for s in a.student or ["streamsv/weights/student.onnx"]]
    except Exception as e:  # a missing model, no espeak-ng: one line
        raise SystemExit(f"error: {e}")
    if a.teacher:
        systems.append(ev.teacher_system())
    with_threshold = datasets.data_root(required=False) is not None
    rows, pitch = [], {}
    with tempfile.TemporaryDirectory(prefix="streamsv-voices-") as tmp:
        for system in systems:
            try:
                pitch, cos = demo_voice_cosines(system.embedder, Path(tmp))
            except StreamsvError as e:
                raise SystemExit(f"error: {system.label}: {e}")
            rows.append((system.label, cos, dev_eer_threshold(system) if with_threshold else float("nan")))
    print("demo voices' median F0: " + ", ".join(f"{k} {v:.0f} Hz" for k, v in pitch.items()))
    pairs = list(rows[0][1])
    print("| model | " + " | ".join(f"{x} / {y}" for x, y in pairs) + f" | EER threshold, {REFERENCE_SET} clean enroll |")
    print("|---|" + "---:|" * (len(pairs) + 1))
    for label, cos, threshold in rows:
        print(f"| {label} | " + " | ".join(f"{cos[p]:.3f}" for p in pairs) + f" | {threshold:.3f} |")
    return 0


# ---------------------------------------------------------------- resampled self


def resampled_self(system, set_name: str, shifted: dict[float, list[np.ndarray]], tests) -> dict:
    """How a model scores a speaker's own clips resampled (pitch, formants and tempo scaled together,
    as the training recipe's pitch augmentation does) against that speaker's clean profile.

    `shifted[semitones]`: the audio of `tests` (utterance indices into the set, none of them a
    profile clip) resampled by that much. Profiles and the threshold (the enroll protocol's EER
    point on the clean set) come from eval's cached clean embeddings. Returns, per shift (0: the
    clean clips themselves), the share of clips accepted as their own speaker and the mean cosine."""
    from training import datasets
    from training import eval as ev

    utts = datasets.dev_set(set_name)
    speakers = [u.speaker for u in utts]
    clean = ev.embeddings(system, set_name, "clean", "full", utts, None, use_cache=True)
    scores, labels = ev.enroll_trials(clean, speakers, [u.path.name for u in utts])
    threshold = ev.eer_threshold(scores, labels)
    unit = clean / np.linalg.norm(clean, axis=1, keepdims=True)
    profile = {}
    for spk in dict.fromkeys(speakers):
        first = [i for i in sorted(range(len(utts)), key=lambda k: utts[k].path.name) if speakers[i] == spk][: ev.ENROLL_UTTERANCES]
        mean = unit[first].mean(axis=0)
        profile[spk] = mean / np.linalg.norm(mean)
    own = np.stack([profile[speakers[i]] for i in tests])
    out = {"threshold": threshold}
    for semitones, waves in {0.0: None, **shifted}.items():
        emb = unit[tests] if waves is None else system.embed_many(waves)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        cos = np.einsum("nd,nd->n", emb, own)
        out[semitones] = (float(np.mean(cos >= threshold)), float(np.mean(cos)))
    return out


def resample_tests(set_name: str, per_speaker: int) -> list[int]:
    """Each speaker's clips after its profile clips, at most `per_speaker` of them (by file name)."""
    from training import datasets
    from training import eval as ev

    utts = datasets.dev_set(set_name)  # sorted by speaker, then file name
    tests, seen = [], {}
    for i, u in enumerate(utts):
        seen[u.speaker] = seen.get(u.speaker, 0) + 1
        if ev.ENROLL_UTTERANCES < seen[u.speaker] <= ev.ENROLL_UTTERANCES + per_speaker:
            tests.append(i)
    return tests


def resampled_whole(wave: np.ndarray, semitones: float, resample_by: Callable) -> np.ndarray:
    """The whole utterance resampled by ``semitones``: pitch, formants and tempo move together,
    as the training recipe's pitch augmentation moves them."""
    factor = 2 ** (semitones / 12)
    return resample_by(wave, factor, int(len(wave) / factor) - 1)


def _resample_main(a) -> int:
    from training import datasets
    from training import eval as ev
    from training.train import Recipe, keep_formants, resample_by  # the recipe's own shift range and resampling

    if datasets.data_root(required=False) is None:
        raise SystemExit("error: shared data not found (set STREAMSV_DATA)")
    if a.set not in datasets.DEV_SETS:
        raise SystemExit(f"error: unknown set {a.set}; expected one of {', '.join(datasets.DEV_SETS)}")
    try:
        systems = [ev.student_system(s) for s in a.student or ["streamsv/weights/student.onnx"]]
    except Exception as e:
        raise SystemExit(f"error: {e}")
    if a.teacher:
        systems.append(ev.teacher_system())
    utts = datasets.dev_set(a.set)
    tests = resample_tests(a.set, a.per_speaker)
    clean = [datasets.read_audio(utts[i].path) for i in tests]
    bound = Recipe().pitch_semitones
    shifts = (-bound, -bound / 2, bound / 2, bound)

    def shift(wave: np.ndarray, semitones: float) -> np.ndarray:
        moved = resampled_whole(wave, semitones, resample_by)
        if a.keep_formants:
            moved = keep_formants(moved, wave, 2 ** (semitones / 12))
        return moved.astype(np.float32)

    shifted = {st: [shift(w, st) for w in clean] for st in shifts}
    how = "pitch-shifted, formants kept" if a.keep_formants else "resampled"
    print(f"{a.set}: {len(tests)} test clips ({a.per_speaker} per speaker at most) against their own speaker's clean "
          f"profile; accepted % at the model's clean enroll EER threshold (mean cosine)")
    print("| model | threshold | clean | " + " | ".join(f"{how} {st:+g} st" for st in shifts) + " |")
    print("|---|---:|---:|" + "---:|" * len(shifts))
    for system in systems:
        r = resampled_self(system, a.set, shifted, tests)
        print(f"| {system.label} | {r['threshold']:.3f} | " + " | ".join(
            f"{100 * r[st][0]:.0f}% ({r[st][1]:.2f})" for st in (0.0, *shifts)) + " |")
    return 0


def _f0_main(a) -> int:
    from training import datasets

    if datasets.data_root(required=False) is None:
        raise SystemExit("error: shared data not found (set STREAMSV_DATA)")
    for set_name in [s.strip() for s in a.sets.split(",") if s.strip()]:
        if set_name not in datasets.DEV_SETS:
            raise SystemExit(f"error: unknown set {set_name}; expected some of {', '.join(datasets.DEV_SETS)}")
        f0 = speaker_f0(datasets.dev_set(set_name), datasets.read_audio)
        n = len(f0)
        pairs = similar_speaker_pairs(f0, a.semitones)
        print(f"{set_name}: {n} speakers, {len(pairs)} of {n * (n - 1) // 2} speaker pairs within {a.semitones:g} semitones; "
              f"median F0 " + ", ".join(f"{s} {v:.0f}" for s, v in sorted(f0.items(), key=lambda kv: kv[1])))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("f0", help="each dev speaker's median F0 and the similar-voice speaker pairs")
    f.add_argument("--sets", default="speechocean-dev,asc-test,librispeech-test-other,urdu")
    f.add_argument("--semitones", type=float, default=SIMILAR_SEMITONES)
    d = sub.add_parser("demo", help="cosines between the demo's espeak-ng voices per model")
    d.add_argument("--student", action="append", default=[], metavar="[LABEL=]PATH", help="a student model (repeatable)")
    d.add_argument("--teacher", action="store_true", help="the teacher (Resemblyzer) too")
    d.add_argument("--threads", type=int, default=1, help="torch threads (default 1: share the machine)")
    r = sub.add_parser("resample", help="own clips resampled (pitch + formants) vs the speaker's clean profile")
    r.add_argument("--student", action="append", default=[], metavar="[LABEL=]PATH", help="a student model (repeatable)")
    r.add_argument("--teacher", action="store_true", help="the teacher (Resemblyzer) too")
    r.add_argument("--set", default=REFERENCE_SET)
    r.add_argument("--keep-formants", action="store_true",
                   help="put each clip's spectral envelope back after the shift (training.train.keep_formants)")
    r.add_argument("--per-speaker", type=int, default=RESAMPLE_TESTS_PER_SPEAKER)
    r.add_argument("--threads", type=int, default=1, help="torch threads (default 1: share the machine)")
    a = p.parse_args(argv)
    if a.command == "f0":
        return _f0_main(a)
    import torch

    torch.set_num_threads(a.threads)
    return _demo_main(a) if a.command == "demo" else _resample_main(a)


if __name__ == "__main__":
    sys.exit(main())
