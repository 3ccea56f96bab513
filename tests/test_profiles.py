import json
import logging
import os
import shutil
import stat

import numpy as np
import pytest

from streamsv.errors import StreamsvError
from streamsv.profiles import ProfileStore, ProfilesWatch, check_name, enroll, new_profile, piece_bounds


def prof(name="alice", model="m1", n=4, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, dim)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return new_profile(name, e, 12.5, model)


def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_roundtrip_and_permissions(tmp_path):
    store = ProfileStore(tmp_path / "profiles")
    p = prof()
    path = store.save(p)
    assert mode(path) == 0o600 and mode(store.dir) == 0o700
    q = store.load("alice", fingerprint="m1")
    assert np.allclose(q.embeddings, p.embeddings) and np.allclose(q.centroid, p.centroid)
    assert q.speech_s == 12.5 and q.model == "m1" and q.created == pytest.approx(p.created)
    data = json.loads(path.read_text())
    assert data["format"] == "streamsv-profile" and data["version"] == 1
    assert np.linalg.norm(q.centroid) == pytest.approx(1.0, abs=1e-5)
    assert [f.name for f in store.dir.iterdir()] == ["alice.json"]   # no temp files left behind


def test_existing_dir_is_used_as_is_never_chmoded(tmp_path):
    # `--profiles-dir /tmp` as root once made /tmp 0700; an existing folder keeps its mode.
    d = tmp_path / "p"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    ProfileStore(d).save(prof())
    assert mode(d) == 0o755
    os.chmod(d, 0o777)
    with pytest.raises(StreamsvError, match="writable by group or others") as e:
        ProfileStore(d).save(prof(name="bob"))
    assert mode(d) == 0o777 and not (d / "bob.json").exists()
    assert str(e.value).endswith(f"(fix: chmod go-w {d})")        # the folder, runnable as shown


def test_replace_needs_force(tmp_path):
    store = ProfileStore(tmp_path)
    store.save(prof())
    with pytest.raises(StreamsvError, match="--force"):
        store.save(prof(seed=1))
    store.save(prof(seed=1), force=True)
    assert np.allclose(store.load("alice").embeddings, prof(seed=1).embeddings)


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "a..b", ".hidden", "x" * 65, "sp ace", "é", "a\\b"])
def test_bad_names_refused(bad, tmp_path):
    with pytest.raises(StreamsvError, match="invalid profile name"):
        check_name(bad)
    with pytest.raises(StreamsvError):
        ProfileStore(tmp_path).load(bad)


@pytest.mark.parametrize("good", ["alice", "Bob_2", "a.b-c", "x" * 64])
def test_good_names(good):
    assert check_name(good) == good


def test_other_model_refused_with_reenroll_message(tmp_path):
    store = ProfileStore(tmp_path)
    store.save(prof(model="old"))
    with pytest.raises(StreamsvError, match="re-enroll"):
        store.load("alice", fingerprint="new")
    assert store.load_all(fingerprint="new") == {}


def test_corrupt_profile_warns_and_others_load(tmp_path, caplog):
    store = ProfileStore(tmp_path)
    store.save(prof("alice"))
    store.save(prof("bob", seed=2))
    (tmp_path / "bob.json").write_text('{"format": "streamsv-profile", "version": 1, "name": "bob", "embe')
    (tmp_path / "carol.json").write_bytes(b"\x80\x81 not json")
    with caplog.at_level(logging.WARNING, logger="streamsv.profiles"):
        got = store.load_all()
    assert list(got) == ["alice"]
    assert "bob.json" in caplog.text and "carol.json" in caplog.text
    with pytest.raises(StreamsvError, match="corrupt"):
        store.load("bob")


def test_load_all_parses_only_the_files_that_changed_since_its_last_call(tmp_path, monkeypatch):
    # A daemon reloads all profiles whenever one changes; each 200-embedding file costs ~50 ms to
    # parse in its audio loop. What changed must still be read: a rewrite in place of the same size
    # and mtime, a replacement, a chmod that makes a file untrusted, a deletion.
    import streamsv.profiles as profiles

    parsed = []
    real = profiles.parse_profile_json
    monkeypatch.setattr(profiles, "parse_profile_json", lambda raw, where: parsed.append(where) or real(raw, where))
    store = ProfileStore(tmp_path / "profiles")
    for i, name in enumerate(("alice", "bob", "carol")):
        store.save(prof(name, seed=i))
    assert sorted(store.load_all("m1")) == ["alice", "bob", "carol"] and len(parsed) == 3
    parsed.clear()
    assert sorted(store.load_all("m1")) == ["alice", "bob", "carol"] and parsed == []

    bob = store.path("bob")
    before = os.stat(bob)
    data = json.loads(bob.read_text())
    data["created"] = 1234567890.0
    bob.write_text(json.dumps(data, separators=(",", ":")).ljust(before.st_size))   # rewritten in place
    os.utime(bob, ns=(before.st_atime_ns, before.st_mtime_ns))       # same size, same mtime: ctime moved
    assert os.stat(bob).st_size == before.st_size and os.stat(bob).st_mtime_ns == before.st_mtime_ns
    store.save(prof("carol", seed=7), force=True)                      # replaced by rename
    loaded = store.load_all("m1")
    assert sorted(os.path.basename(w) for w in parsed) == ["bob.json", "carol.json"]
    assert loaded["bob"].created == 1234567890.0
    assert np.allclose(loaded["carol"].embeddings, prof("carol", seed=7).embeddings)

    os.chmod(store.path("alice"), 0o620)                              # group-writable: untrusted now
    store.path("carol").unlink()
    assert sorted(store.load_all("m1")) == ["bob"]


def test_malformed_fields_refused(tmp_path):
    store = ProfileStore(tmp_path)
    path = store.save(prof())
    data = json.loads(path.read_text())
    data["centroid"] = data["centroid"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(StreamsvError, match="malformed"):
        store.load("alice")
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(StreamsvError, match="version"):
        store.load("alice")


def test_rename_delete_export_import(tmp_path):
    store = ProfileStore(tmp_path / "a")
    store.save(prof())
    store.rename("alice", "alicia")
    assert store.names() == ["alicia"]
    out = store.export("alicia", tmp_path)
    assert out == tmp_path / "alicia.json" and mode(out) == 0o600
    other = ProfileStore(tmp_path / "b")
    with pytest.raises(StreamsvError, match="another model"):
        other.import_(out, fingerprint="m2")
    other.import_(out, name="al", fingerprint="m1")
    assert other.load("al").name == "al"
    with pytest.raises(StreamsvError, match="--force"):
        other.import_(out, name="al")
    store.delete("alicia")
    assert store.names() == []
    with pytest.raises(StreamsvError, match="no profile"):
        store.delete("alicia")


def test_enroll_from_recordings(untrained, speech_clips):
    silence = np.zeros(16000, np.float32)
    p, warnings = enroll(untrained, "spk", list(speech_clips) + [silence], sources=["a", "b", "c", "quiet"])
    assert len(p.embeddings) >= len(speech_clips)  # whole recordings plus their growing prefixes
    assert warnings == ["quiet: only 0.0 s of speech, skipped"]
    assert p.model == untrained.fingerprint and p.dim == untrained.dim
    assert 2.0 < p.speech_s <= sum(len(c) for c in speech_clips) / 16000 + 1e-6
    with pytest.raises(StreamsvError, match="no usable speech"):
        enroll(untrained, "spk", [silence])


def test_piece_bounds_fold_a_short_tail_into_the_piece_before():
    assert piece_bounds(0, 10) == []
    assert piece_bounds(7, 10) == [(0, 7)]
    assert piece_bounds(14, 10) == [(0, 14)]                  # 4 < 5: folded
    assert piece_bounds(15, 10) == [(0, 10), (10, 15)]        # half a step: its own piece
    assert piece_bounds(34, 10) == [(0, 10), (10, 20), (20, 34)]


def test_the_watch_sees_each_change_to_the_folder_once_and_no_sooner_than_its_interval(tmp_path):
    store = ProfileStore(tmp_path / "profiles")
    now = [0.0]
    watch = ProfilesWatch(store, 2.0, clock=lambda: now[0])       # the folder does not exist yet

    def look(after_s: float = 2.0) -> bool:
        now[0] += after_s
        return watch.changed()

    assert not look()
    store.save(prof())                                            # enrolled while running
    assert not look(1.0)                                          # not before the interval...
    assert look(1.0) and not look()                               # ...then once
    (store.dir / ".tmp-half-written.json").write_text("{")          # a writer's temp file: nothing yet
    assert not look()
    store.save(prof(seed=1), force=True)                          # re-enrolled (a new file by rename)
    assert look()
    store.rename("alice", "alicia")
    assert look()
    os.chmod(store.path("alicia"), 0o644)                         # loadable or not can change with its mode
    assert look()
    os.chmod(store.dir, 0o777)                                    # an untrusted folder: a reload says so
    assert look() and not look()
    os.chmod(store.dir, 0o700)
    assert look()
    store.delete("alicia")
    assert look() and not look()
    shutil.rmtree(store.dir)                                      # the folder deleted...
    assert look()
    store.dir.mkdir(mode=0o700)                                   # ...and made again, empty: a change too
    assert look() and not look()
    store.save(prof(name="bob"))
    watch.read()                                                  # a reload (a signal) read it already
    assert not look()
