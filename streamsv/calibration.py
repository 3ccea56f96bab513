"""``streamsv calibrate``: a threshold and a confidence calibration from the user's own recordings.

The folder holds one sub-folder per speaker. Each speaker's first ``enroll_n`` recordings make
its profile; the speech of the rest is cut into windows the way ``listen`` scores them, full
windows (``scoring.window_s``) and the shortest that get a decision (``scoring.min_speech_s``),
and every window is scored against every profile: a genuine trial against its own speaker's,
an impostor trial against the others'. The threshold maths is ``scoring.calibrate``, the
confidence fit ``confidence.fit``; this module builds the trials and reports.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import StreamsvError, os_reason, shown
from .features import SAMPLE_RATE

AUDIO_EXT = {".wav", ".flac", ".ogg", ".opus", ".mp3"}
WINDOW_KINDS = ("full", "short")        # scoring.window_s windows, and scoring.min_speech_s ones


@dataclass
class Trials:
    """Every profile's centroid and every scored window, by window kind."""
    centroids: dict[str, np.ndarray]
    windows: dict[str, list[tuple[str, np.ndarray]]]     # kind -> (speaker, embedding) in file order
    samples: dict[str, int]                               # kind -> window length in samples

    def scored(self, kind: str) -> Iterator[tuple[float, bool]]:
        """(cosine, genuine) for every window of ``kind`` against every profile."""
        for spk, v in self.windows[kind]:
            for other, c in self.centroids.items():
                yield float(np.dot(v, c)), other == spk


def speaker_folders(folder: Path, enroll_n: int, warn: Callable[[str], None]) -> dict[str, list[Path]]:
    """Speaker name -> its recordings (sorted), for each sub-folder with more than ``enroll_n``."""
    if not os.path.isdir(folder):
        raise StreamsvError(f"{shown(folder)}: not a folder (expected one sub-folder per speaker)")
    speakers = {}
    try:
        for d in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in AUDIO_EXT)
            if len(files) > enroll_n:
                speakers[d.name] = files
            else:
                warn(f"warning: {shown(d.name)}: needs more than {enroll_n} recordings, skipped")
    except OSError as e:
        raise StreamsvError(f"{shown(e.filename or folder)}: cannot read ({os_reason(e)})") from None
    if len(speakers) < 2:
        raise StreamsvError(f"{folder}: need at least 2 speakers with more than {enroll_n} recordings each")
    return speakers


def build_trials(emb, speakers: dict[str, list[Path]], enroll_n: int, scoring_cfg, vad_cfg) -> Trials:
    """Profiles from the first ``enroll_n`` recordings, windows from the rest."""
    from .profiles import centroid_of, embed_bounded
    from .sources import load_audio
    from .vad import voiced_speech

    samples = {"full": int(scoring_cfg.window_s * SAMPLE_RATE), "short": int(scoring_cfg.min_speech_s * SAMPLE_RATE)}
    centroids, windows = {}, {k: [] for k in WINDOW_KINDS}
    for spk, files in speakers.items():
        vecs = []
        for i, f in enumerate(files):
            speech = voiced_speech(load_audio(f), vad_cfg)
            if len(speech) < samples["short"]:
                continue
            if i < enroll_n:
                vecs.append(embed_bounded(emb, speech))   # bounded memory, as enroll and embed
                continue
            # Score windows as listen would: full windows, and the shortest that gets a decision.
            for kind, n in samples.items():
                for s0 in range(0, max(1, len(speech) - n + 1), n):
                    windows[kind].append((spk, emb.embed(speech[s0:s0 + n])))
        if not vecs:
            raise StreamsvError(f"{spk}: no usable enrollment speech")
        centroids[spk] = centroid_of(np.stack(vecs))
    return Trials(centroids, windows, samples)


def threshold_report(trials: Trials, scoring_cfg, target_far: float | None) -> list[str]:
    """The EER threshold (or the one at ``target_far``) per window kind and the duration slope, as lines."""
    from .scoring import calibrate

    res = {}
    for kind in WINDOW_KINDS:
        gen, imp = [], []
        for cos, genuine in trials.scored(kind):
            (gen if genuine else imp).append(cos)
        res[kind] = calibrate(np.array(gen), np.array(imp), target_far)
    full, short = res["full"], res["short"]
    sc = scoring_cfg
    span = sc.window_s - sc.min_speech_s
    slope = max(0.0, (full.threshold - short.threshold) / span) if span > 0 else 0.0
    return [
        f"speakers {len(trials.centroids)}, {sc.window_s:g} s windows: genuine trials {full.n_genuine}, "
        f"impostor trials {full.n_impostor}",
        f"EER {full.eer * 100:.2f}% ({sc.window_s:g} s windows), {short.eer * 100:.2f}% ({sc.min_speech_s:g} s windows)",
        f"threshold {full.threshold:.3f}  (FAR {full.far * 100:.2f}%, FRR {full.frr * 100:.2f}%)",
        f"short-window threshold {short.threshold:.3f} at {sc.min_speech_s:g} s -> duration_slope {slope:.3f} per second",
        f"use it: streamsv listen --threshold {full.threshold:.3f}   or   scoring: {{threshold: {full.threshold:.3f}}} in config.yaml",
    ]


def confidence_report(trials: Trials, fingerprint: str, window_s: float, save_to: Path | None, force: bool,
                      say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    """Fit the confidence on the same trials (both window lengths), report it, save it to ``save_to`` if given."""
    from . import confidence as confidence_mod

    cos, secs, gen = [], [], []
    for kind in WINDOW_KINDS:
        for c, genuine in trials.scored(kind):
            cos.append(c)
            secs.append(trials.samples[kind] / SAMPLE_RATE)
            gen.append(int(genuine))
    try:
        fitted = confidence_mod.fit(cos, secs, gen, window_s,
                                    fitted_on=f"streamsv calibrate: {len(trials.centroids)} speakers, {len(cos)} trials")
    except StreamsvError as e:
        warn(f"warning: no confidence calibration from these recordings: {e}")
        if save_to is not None:
            raise
        return
    conf = [fitted.confidence(c, s) for c, s in zip(cos, secs)]
    rows = confidence_mod.reliability(conf, gen, balanced=True)
    say(f"confidence: 0.5 at cosine {fitted.cosine_for(0.5, window_s):.3f}, "
        f"0.9 at {fitted.cosine_for(0.9, window_s):.3f} ({window_s:g} s windows); "
        f"reliability on the same trials it was fitted on, genuine and impostor weighted equally:")
    say(confidence_mod.format_reliability(rows))
    if save_to is not None:
        path = confidence_mod.save(save_to, fingerprint, fitted, force=force)
        say(f"saved the confidence calibration for model {fingerprint} -> {path}")
    else:
        say("keep it for listen/verify with: streamsv calibrate ... --save")


def check_options(enroll_n: int, target_far: float | None) -> None:
    """Refuse option values no calibration can use, before anything is read."""
    from .scoring import valid_target_far

    if enroll_n < 1:
        raise StreamsvError(f"--enroll-n must be at least 1 (recordings per speaker for its profile), got {enroll_n}")
    if target_far is not None and not valid_target_far(target_far):
        raise StreamsvError(f"--target-far must be a false-accept rate from 0 up to (not including) 1, "
                            f"e.g. 0.01; got {target_far:g}")


def run_calibrate(folder: Path, enroll_n: int, target_far: float | None, *, save: bool, force: bool, cfg,
                  load_model: Callable[[], object], say: Callable[[str], None],
                  warn: Callable[[str], None]) -> None:
    """The whole ``calibrate`` command after option parsing (``load_model()`` gives the embedder)."""
    from .confidence import USER_FILE
    from .profiles import ProfileStore

    check_options(enroll_n, target_far)
    speakers = speaker_folders(folder, enroll_n, warn)       # a bad folder fails before the model loads
    if save:
        # The calibration sits beside the profiles (fitted on the user's voices): the folder is made
        # 0700 or checked like theirs, now, so a folder it cannot use fails before minutes of embedding.
        ProfileStore(cfg.profiles.resolved()).ensure_dir()
    emb = load_model()
    trials = build_trials(emb, speakers, enroll_n, cfg.scoring, cfg.vad)
    for line in threshold_report(trials, cfg.scoring, target_far):
        say(line)
    save_to = cfg.profiles.resolved() / USER_FILE if save else None
    confidence_report(trials, emb.fingerprint, cfg.scoring.window_s, save_to, force, say, warn)
