"""Listings of the shared data: split sizes, and that no dev speaker leaks into training."""
from __future__ import annotations

import numpy as np
import pytest

from training import datasets

ROOT = datasets.data_root(required=False)
needs_data = pytest.mark.skipif(ROOT is None, reason="shared data (../shared/data or $STREAMSV_DATA) not present")


def test_data_root_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMSV_DATA", str(tmp_path))
    assert datasets.data_root() == tmp_path
    monkeypatch.setenv("STREAMSV_DATA", str(tmp_path / "missing"))
    assert datasets.data_root(required=False) is None
    with pytest.raises(FileNotFoundError, match="STREAMSV_DATA"):
        datasets.data_root()


@needs_data
def test_training_has_369_speakers_and_no_dev_speaker():
    train = datasets.training_utterances()
    speakers = {u.speaker for u in train}
    assert len(speakers) == 369
    assert {u.corpus for u in train} == {"so", "asc", "ls"}
    assert not speakers & datasets.dev_speakers()
    assert all(u.path.is_file() for u in train[:: max(1, len(train) // 50)])


@needs_data
@pytest.mark.parametrize(
    "name, n_speakers, n_utts",
    [("speechocean-dev", 25, 500), ("asc-test", 6, 240), ("asc-val", 6, 240), ("librispeech-test-other", 10, 100),
     ("urdu", 29, 400)],
)
def test_dev_sets_sizes_and_order(name, n_speakers, n_utts):
    utts = datasets.dev_set(name)
    assert len(utts) == n_utts
    assert len({u.speaker for u in utts}) == n_speakers
    assert utts == sorted(utts, key=lambda u: (u.speaker, u.path.name))
    if name.startswith("asc"):
        assert all(u.path.stem.endswith("_01") for u in utts)  # first take of each keyword


@needs_data
def test_urdu_is_a_dev_set_only():
    utts = datasets.dev_set("urdu")
    assert len(utts) == 400 and len({u.speaker for u in utts}) == 29
    assert all(u.speaker == f"urdu/{u.path.name.split('_')[0]}" for u in utts)  # speaker = the name's first field
    assert {u.speaker for u in utts} <= datasets.dev_speakers()
    names = {str(u.path) for u in datasets.training_utterances() + datasets.unlabeled_utterances()}
    assert not any("/urdu/" in n for n in names)


@needs_data
def test_unlabeled_clips_are_each_their_own_pseudo_speaker():
    unl = datasets.unlabeled_utterances()
    assert len(unl) == 2911 and {u.corpus for u in unl} == {"unl"}
    assert len({u.speaker for u in unl}) == len(unl)
    assert {u.speaker.split("/")[1] for u in unl} == set(datasets.UNLABELED_FOLDERS)
    assert not {u.speaker for u in unl} & {u.speaker for u in datasets.training_utterances()}


@needs_data
def test_asc_test_and_val_speakers_are_disjoint():
    test = {u.speaker for u in datasets.dev_set("asc-test")}
    val = {u.speaker for u in datasets.dev_set("asc-val")}
    assert test and val and not test & val


def test_unknown_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dev set"):
        datasets.dev_set("nope", root=tmp_path)
    with pytest.raises(ValueError, match="unknown noise split"):
        datasets.noise_files("nope", root=tmp_path)


@needs_data
def test_heldout_noise_classes_never_in_training_noise():
    train = datasets.noise_files("train")
    held = datasets.noise_files("heldout")
    assert train and held
    assert {p.parent.name for p in held} == set(datasets.HELDOUT_NOISE_CLASSES)
    assert not {p.parent.name for p in train} & set(datasets.HELDOUT_NOISE_CLASSES)
    assert any(p.parent.name == "speech-commands" for p in train)


@needs_data
def test_read_audio_is_float32_mono_16k():
    wave = datasets.read_audio(datasets.dev_set("asc-test")[0].path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.9 * 16000 <= len(wave) <= 1.1 * 16000  # ASC clips are 1 s
    assert np.abs(wave).max() <= 1.0


def test_read_audio_resamples(tmp_path):
    import soundfile as sf

    path = tmp_path / "tone.wav"
    sf.write(path, np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440).astype(np.float32), 8000)
    wave = datasets.read_audio(path)
    assert wave.dtype == np.float32 and abs(len(wave) - 16000) <= 2
