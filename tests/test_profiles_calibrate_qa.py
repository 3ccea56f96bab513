"""QA findings on calibrate's options and files, profile export's destination and what a profile
file may hold (imported, or planted in the live folder): each a one-line refusal, nothing overwritten."""
from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import dev_speakers, refused, run_cli, speaker_folders
from streamsv import app
from streamsv.profiles import MAX_EMBEDDINGS, Profile, ProfileStore, centroid_of, new_profile
from streamsv.scoring import calibrate

MODEL = "m1"
DIM = 8


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def profile_json(name: str, seed: int, n: int = 4) -> dict:
    """A well-formed profile's JSON of ``n`` embeddings (Profile itself: new_profile would thin
    more than MAX_EMBEDDINGS, as enrollment does)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, DIM)).astype(np.float32)
    return Profile(name=name, embeddings=e / np.linalg.norm(e, axis=1, keepdims=True), speech_s=12.5, model=MODEL,
                   created=1.7e9).to_json()


@pytest.fixture
def cli_without_model(monkeypatch, tmp_path) -> Path:
    """The CLI with profiles and HOME in tmp_path and a stand-in model (fingerprint MODEL, DIM values)
    that only import asks for; returns the profiles folder (not created)."""
    monkeypatch.setattr(app, "load_model", lambda *_: SimpleNamespace(fingerprint=MODEL, dim=DIM))
    monkeypatch.delenv("STREAMSV_CONFIG", raising=False)
    monkeypatch.setenv("STREAMSV_PROFILES_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path / "profiles"


@pytest.fixture
def model_must_not_load(monkeypatch, cli_without_model) -> Path:
    def fail(*_):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(app, "load_model", fail)
    return cli_without_model


# --------------------------------------------------------------------------- 1. calibrate's options


def _fake_speaker_folders(root: Path) -> Path:
    """calibrate's layout with empty recordings: folders pass its count, the audio is never read."""
    for spk in ("s1", "s2"):
        (root / spk).mkdir(parents=True)
        for i in range(4):
            (root / spk / f"{i}.wav").write_bytes(b"")
    return root


@pytest.mark.parametrize("far", ["-1", "nan", "2", "inf", "1", "-inf"])
def test_calibrate_refuses_a_target_far_outside_0_to_1_before_anything_is_read(capsys, tmp_path, model_must_not_load, far):
    cal = _fake_speaker_folders(tmp_path / "cal")
    refused(run_cli(capsys, "calibrate", str(cal), "--target-far", far), "--target-far", "e.g. 0.01")


@pytest.mark.parametrize("n", ["0", "-1"])
def test_calibrate_refuses_enroll_n_below_1(capsys, tmp_path, model_must_not_load, n):
    cal = _fake_speaker_folders(tmp_path / "cal")
    refused(run_cli(capsys, "calibrate", str(cal), "--enroll-n", n), "--enroll-n", "at least 1")


@pytest.mark.parametrize("far", [-1.0, float("nan"), 1.0, 2.0, float("inf")])
def test_scoring_calibrate_refuses_an_unreachable_target_far(far):
    with pytest.raises(ValueError, match="target_far"):
        calibrate(np.array([0.8, 0.9]), np.array([0.1, 0.2]), target_far=far)


def test_scoring_calibrate_target_far_0_is_above_every_impostor():
    c = calibrate(np.array([0.3, 0.8, 0.9]), np.array([0.1, 0.5]), target_far=0.0)
    assert c.far == 0.0 and 0.5 < c.threshold <= 0.8 and c.frr == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- 2. calibrate --save's folder


def test_calibrate_save_makes_the_profiles_folder_0700_before_the_model_loads(capsys, monkeypatch, tmp_path,
                                                                               cli_without_model):
    seen = {}

    def load_model(*_):
        seen["mode"] = mode(tmp_path / "pcal")
        raise AssertionError("stop here: the audio is not real")

    monkeypatch.setattr(app, "load_model", load_model)
    old = os.umask(0o022)
    try:
        with pytest.raises(AssertionError, match="stop here"):
            run_cli(capsys, "calibrate", str(_fake_speaker_folders(tmp_path / "cal")), "--save",
                    "--profiles-dir", str(tmp_path / "pcal"))
    finally:
        os.umask(old)
    assert seen["mode"] == 0o700


def test_calibrate_save_refuses_a_folder_others_can_write_before_the_model_loads(capsys, tmp_path, model_must_not_load):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    refused(run_cli(capsys, "calibrate", str(_fake_speaker_folders(tmp_path / "cal")), "--save",
                    "--profiles-dir", str(shared)), "writable by group or others")
    assert mode(shared) == 0o777 and os.listdir(shared) == []


def test_calibrate_save_writes_0600_into_a_new_0700_folder(capsys, tmp_path, untrained_cli):
    spk = dev_speakers()[:2]
    if len(spk) < 2:
        pytest.skip("needs ../shared/data (speechocean762 dev speakers)")
    old = os.umask(0o022)
    try:
        code, out, err = run_cli(capsys, "calibrate", str(speaker_folders(tmp_path / "cal", spk, 5)), "--save",
                                 "--profiles-dir", str(tmp_path / "pcal"))
    finally:
        os.umask(old)
    assert code == 0, err
    assert mode(tmp_path / "pcal") == 0o700 and mode(tmp_path / "pcal" / ".confidence.json") == 0o600


# --------------------------------------------------------------------------- 3. export stays out of the folder


@pytest.fixture
def alice_and_bob(cli_without_model) -> ProfileStore:
    store = ProfileStore(cli_without_model)
    for name, seed in (("alice", 0), ("bob", 1)):
        store.save(new_profile(name, np.asarray(profile_json(name, seed)["embeddings"]), 12.5, MODEL))
    return store


def _destinations_in_the_folder(tmp_path: Path) -> list[str]:
    """Export destinations (relative to tmp_path) that all land in tmp_path/profiles: the folder, a
    file in it, a sub-folder, the same through a symlink to it; makes the link and the sub-folder."""
    (tmp_path / "link").symlink_to(tmp_path / "profiles")
    (tmp_path / "profiles" / "sub").mkdir()
    return ["profiles/bob.json", "profiles", "link/bob.json", "link", "profiles/sub/x.json", "./profiles/../profiles/bob.json"]


def test_export_into_the_profiles_folder_is_refused_even_with_force(capsys, monkeypatch, tmp_path, alice_and_bob):
    monkeypatch.chdir(tmp_path)
    bob_before = alice_and_bob.path("bob").read_bytes()
    for dest in _destinations_in_the_folder(tmp_path):
        refused(run_cli(capsys, "profiles", "export", "alice", dest, "--force"), "profiles folder", "elsewhere",
                "profiles rename")
    assert alice_and_bob.path("bob").read_bytes() == bob_before
    assert sorted(os.listdir(tmp_path / "profiles")) == ["alice.json", "bob.json", "sub"]
    code, out, err = run_cli(capsys, "profiles", "list")
    assert code == 0 and "UNREADABLE" not in out
    code, out, err = run_cli(capsys, "profiles", "export", "alice", "out.json")      # elsewhere: as before
    assert code == 0, err
    assert mode(tmp_path / "out.json") == 0o600


# --------------------------------------------------------------------------- 4. what a profile file may hold


def _hostile(kind: str, name: str = "alice") -> str:
    """A profile file named ``name``, well-formed but for ``kind``."""
    alice, bob = profile_json(name, 0), profile_json("bob", 1)
    if kind == "too-many-embeddings":
        return json.dumps(profile_json(name, 0, n=MAX_EMBEDDINGS + 1))
    if kind == "another-centroid":
        return json.dumps({**alice, "centroid": bob["centroid"]})
    if kind == "centroid-of-fewer-embeddings":
        return json.dumps({**alice, "centroid": [float(x) for x in centroid_of(np.asarray(alice["embeddings"])[1:])]})
    if kind == "repeated-key":
        # json.loads keeps the last: this file would be bob's centroid for one reader, alice's for another.
        return json.dumps(alice)[:-1] + ',"centroid":' + json.dumps(bob["centroid"]) + "}"
    if kind == "unknown-key":
        return json.dumps({**alice, "threshold": 0.0})
    raise ValueError(kind)


HOSTILE = {"too-many-embeddings": f"more than the {MAX_EMBEDDINGS}", "another-centroid": "centroid",
           "centroid-of-fewer-embeddings": "centroid", "repeated-key": "given more than once",
           "unknown-key": "unknown key 'threshold'"}


@pytest.mark.parametrize("kind", HOSTILE)
def test_import_refuses_a_file_that_is_not_a_profile_streamsv_wrote(capsys, tmp_path, cli_without_model, kind):
    f = tmp_path / "in.json"
    f.write_text(_hostile(kind))
    refused(run_cli(capsys, "profiles", "import", str(f)), "in.json", "malformed profile", HOSTILE[kind])
    assert not (cli_without_model / "alice.json").exists()


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_same_file_in_the_live_folder_is_skipped_and_the_others_load(capsys, caplog, alice_and_bob, kind):
    (alice_and_bob.dir / "carol.json").write_text(_hostile(kind, name="carol"))
    os.chmod(alice_and_bob.dir / "carol.json", 0o600)
    with caplog.at_level(logging.WARNING, logger="streamsv.profiles"):
        loaded = alice_and_bob.load_all(MODEL, DIM)
    assert sorted(loaded) == ["alice", "bob"]
    assert "carol.json" in caplog.text and HOSTILE[kind] in caplog.text
    code, out, _ = run_cli(capsys, "profiles", "list")
    assert code == 0 and "carol" in out and "UNREADABLE" in out and out.count("UNREADABLE") == 1


def test_genuine_round_trips_import_at_the_limit_and_within_the_centroid_tolerance(capsys, tmp_path, cli_without_model):
    store = ProfileStore(cli_without_model)
    full = profile_json("alice", 0, n=MAX_EMBEDDINGS)
    store.save(new_profile("alice", np.asarray(full["embeddings"]), 12.5, MODEL))
    code, _, err = run_cli(capsys, "profiles", "export", "alice", str(tmp_path / "alice.json"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "profiles", "import", str(tmp_path / "alice.json"), "--name", "alice2")
    assert code == 0, err
    assert np.array_equal(store.load("alice2").centroid, store.load("alice").centroid)
    # A hand-rounded centroid (6 decimals: 5e-7 off) is still its embeddings' own.
    rounded = {**profile_json("bob", 1), "centroid": [round(x, 6) for x in profile_json("bob", 1)["centroid"]]}
    (tmp_path / "bob.json").write_text(json.dumps(rounded))
    code, _, err = run_cli(capsys, "profiles", "import", str(tmp_path / "bob.json"))
    assert code == 0, err


def test_a_new_profile_is_thinned_to_what_a_reader_accepts(tmp_path):
    # profiles.enroll (the Python API too) can make more embeddings than a profile holds: the saved
    # file must still load.
    rng = np.random.default_rng(3)
    e = rng.normal(size=(MAX_EMBEDDINGS + 40, DIM)).astype(np.float32)
    prof = new_profile("alice", e / np.linalg.norm(e, axis=1, keepdims=True), 100.0, MODEL)
    assert len(prof.embeddings) == MAX_EMBEDDINGS
    store = ProfileStore(tmp_path / "p")
    store.save(prof)
    assert len(store.load("alice").embeddings) == MAX_EMBEDDINGS
