"""Listings of the shared speech and noise data (training and dev splits).

The data live outside the repository (never copied in): $STREAMSV_DATA, else the
repository's sibling ``../shared/data``. Every function here is a pure listing;
nothing is cached or written. Speaker ids carry a corpus prefix ("so/0036",
"asc/00000001", "ls/1688") so that ids from different corpora cannot collide.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from streamsv.features import SAMPLE_RATE

DEV_SETS = ("speechocean-dev", "asc-test", "asc-val", "librispeech-test-other", "urdu")
# Dev-only, out of domain (research-use licence): evaluated, never trained on, nothing derived shipped.
OUT_OF_DOMAIN_SETS = ("urdu",)
# The dev sets the daemon's fitted constants come from (the confidence calibration, the enrollment
# verdict's bars); asc-test and urdu are never used for that.
TUNING_SETS = ("speechocean-dev", "asc-val", "librispeech-test-other")
UNLABELED_FOLDERS = ("wake-words", "coffee-orders")  # shared/data/unlabeled/<folder>: Apache-2.0, no speakers
# Whole ESC-10 classes kept out of training, so the noisy eval meets noise types
# the student never heard (not just unseen clips of familiar types).
HELDOUT_NOISE_CLASSES = ("chainsaw", "helicopter", "rooster")
AUDIO_EXTS = (".opus", ".flac", ".wav", ".ogg")


@dataclass(frozen=True)
class Utterance:
    speaker: str  # corpus-prefixed, e.g. "so/0036"
    path: Path
    corpus: str  # "so", "asc", "ls", "urdu", or "unl" (unlabeled: speaker is the clip's own id)


def data_root(required: bool = True) -> Path | None:
    """The shared data folder; None (or an error if ``required``) when absent."""
    env = os.environ.get("STREAMSV_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if root.is_dir():
        return root
    if required:
        raise FileNotFoundError(f"shared data not found at {root} (set STREAMSV_DATA)")
    return None


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in AUDIO_EXTS)


def _so_dev_speakers(root: Path) -> set[str]:
    text = (root / "speechocean762" / "dev-speakers.txt").read_text()
    return {line.strip() for line in text.splitlines() if line.strip()}


def _so_utterances(root: Path, dev: bool) -> list[Utterance]:
    dev_ids = _so_dev_speakers(root)
    out = []
    for spk_dir in sorted((root / "speechocean762" / "train").iterdir()):
        if not spk_dir.is_dir() or (spk_dir.name in dev_ids) != dev:
            continue
        out += [Utterance(f"so/{spk_dir.name}", p, "so") for p in _audio_files(spk_dir)]
    return out


@lru_cache(maxsize=4)
def _asc_rows(root: Path) -> tuple[dict[str, str], ...]:
    with open(root / "asc" / "index.csv", newline="") as f:
        return tuple(csv.DictReader(f))


def _asc_utterances(root: Path, split: str, first_take_only: bool) -> list[Utterance]:
    out = []
    for row in _asc_rows(root):
        if row["split"] != split:
            continue
        path = root / row["path"]
        # File names are <keyword>_<take>.opus; "first take" is take 01.
        if first_take_only and not path.stem.endswith("_01"):
            continue
        out.append(Utterance(f"asc/{row['speaker']}", path, "asc"))
    return out


def _ls_train(root: Path) -> list[Utterance]:
    folder = root / "librispeech" / "train-clean-100"
    # Flat folder: <speaker>-<chapter>-<utt>.flac, one clip per speaker.
    return [Utterance(f"ls/{p.name.split('-')[0]}", p, "ls") for p in _audio_files(folder)]


def _ls_test_other(root: Path) -> list[Utterance]:
    out = []
    for spk_dir in sorted((root / "librispeech" / "test-other").iterdir()):
        if spk_dir.is_dir():
            out += [Utterance(f"ls/{spk_dir.name}", p, "ls") for p in _audio_files(spk_dir)]
    return out


def _urdu(root: Path) -> list[Utterance]:
    # One folder per speaker (the file name's first field, SM1 / SF6), 2 to 80 clips each.
    out = []
    for spk_dir in sorted((root / "urdu").iterdir()):
        if spk_dir.is_dir():
            out += [Utterance(f"urdu/{spk_dir.name}", p, "urdu") for p in _audio_files(spk_dir)]
    return out


def unlabeled_utterances(root: Path | None = None) -> list[Utterance]:
    """Speech without speaker labels (distillation only). Each clip is its own pseudo-speaker
    "unl/<folder>/<relative name>", so no two clips are ever treated as the same voice."""
    root = root or data_root()
    out = []
    for folder in UNLABELED_FOLDERS:
        base = root / "unlabeled" / folder
        for p in sorted(base.rglob("*")):
            if p.suffix in AUDIO_EXTS:
                out.append(Utterance(f"unl/{folder}/{p.relative_to(base).with_suffix('')}", p, "unl"))
    return out


def _sorted(utts: list[Utterance]) -> list[Utterance]:
    return sorted(utts, key=lambda u: (u.speaker, u.path.name))


def training_utterances(root: Path | None = None) -> list[Utterance]:
    """All training speech: speechocean762 minus dev speakers, ASC train, LibriSpeech train-clean-100."""
    root = root or data_root()
    return _sorted(_so_utterances(root, dev=False) + _asc_utterances(root, "train", False) + _ls_train(root))


def dev_set(name: str, root: Path | None = None) -> list[Utterance]:
    """One dev set, sorted by speaker then file name (the enroll protocol relies on this order)."""
    root = root or data_root()
    if name == "speechocean-dev":
        utts = _so_utterances(root, dev=True)
    elif name == "asc-test":
        utts = _asc_utterances(root, "test", first_take_only=True)
    elif name == "asc-val":
        utts = _asc_utterances(root, "val", first_take_only=True)
    elif name == "librispeech-test-other":
        utts = _ls_test_other(root)
    elif name == "urdu":
        utts = _urdu(root)
    else:
        raise ValueError(f"unknown dev set {name!r}; expected one of {', '.join(DEV_SETS)}")
    return _sorted(utts)


def dev_speakers(root: Path | None = None) -> set[str]:
    """Every dev speaker id (all dev sets, ASC val/test all takes): must never be trained on."""
    root = root or data_root()
    spk = {u.speaker for u in _so_utterances(root, dev=True) + _ls_test_other(root)}
    spk |= {u.speaker for s in ("val", "test") for u in _asc_utterances(root, s, False)}
    return spk | {u.speaker for u in _urdu(root)}


def noise_files(split: str, root: Path | None = None) -> list[Path]:
    """Noise clips: "train" = speech-commands backgrounds + the ESC-10 classes not held out;
    "heldout" = the ESC-10 classes in HELDOUT_NOISE_CLASSES only."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown noise split {split!r}; expected 'train' or 'heldout'")
    root = root or data_root()
    esc = root / "noise" / "esc10"
    classes = sorted(d.name for d in esc.iterdir() if d.is_dir())
    if split == "train":
        out = _audio_files(root / "noise" / "speech-commands")
        for c in classes:
            if c not in HELDOUT_NOISE_CLASSES:
                out += _audio_files(esc / c)
        return out
    return [p for c in HELDOUT_NOISE_CLASSES for p in _audio_files(esc / c)]


def read_audio(path: str | Path) -> np.ndarray:
    """Read a clip as float32 mono 16 kHz (the shared data are all 16 kHz; others are resampled)."""
    import soundfile as sf

    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != SAMPLE_RATE:
        import soxr

        wave = soxr.resample(wave, sr, SAMPLE_RATE)
    return np.ascontiguousarray(wave, dtype=np.float32)


if __name__ == "__main__":
    tr = training_utterances()
    print(f"training: {len(tr)} utterances, {len({u.speaker for u in tr})} speakers")
    for name in DEV_SETS:
        d = dev_set(name)
        print(f"{name}: {len(d)} utterances, {len({u.speaker for u in d})} speakers")
    unl = unlabeled_utterances()
    print(f"unlabeled: {len(unl)} clips")
    for split in ("train", "heldout"):
        print(f"noise {split}: {len(noise_files(split))} files")
