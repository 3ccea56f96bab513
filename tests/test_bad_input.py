"""The bad-input battery: wrong files, settings, names, profiles and devices.

Each case ends in one of two ways: accepted (odd but usable audio is downmixed/resampled, exit 0),
or a one-line ``error: ...`` on stderr with exit 2. Never a traceback, and nothing else is lost:
other profiles stay intact and nothing is written outside the profiles folder.

Decisions recorded here (README): NaN/inf samples are refused, not patched (a file that holds them
is damaged and its other samples cannot be trusted either); a WAV cut short is read up to where
its data ends; clipped audio is accepted as is.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import REPO, refused, run_cli, twice, with_pauses
from streamsv import cli
from streamsv.profiles import centroid_of

SR = 16000


pytestmark = pytest.mark.usefixtures("untrained_cli")


run = run_cli


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def speech(speech_clips) -> np.ndarray:
    audio, _ = with_pauses(speech_clips[:2], 0.5)
    return audio


@pytest.fixture
def enrolled(capsys, tmp_path, speech_clips):
    """alice enrolled from two clips; returns (profiles dir, a clip of alice)."""
    paths = []
    for i, c in enumerate(speech_clips[:2]):
        p = tmp_path / f"alice{i}.wav"
        sf.write(p, c, SR)
        paths.append(p)
    assert run(capsys, "enroll", "alice", "--from", *map(str, paths))[0] == 0
    return tmp_path / "profiles", paths[0]


# --------------------------------------------------------------------------- audio accepted

def _variant(kind: str, speech: np.ndarray, path: Path) -> None:
    if kind.startswith("rate"):
        rate = int(kind[4:])
        sf.write(path, soxr.resample(speech, SR, rate), rate, subtype="PCM_16")
    elif kind == "stereo":
        sf.write(path, np.stack([speech, 0.5 * speech], axis=1), SR)
    elif kind == "6ch-48k":
        x = soxr.resample(speech, SR, 48000)
        sf.write(path, np.stack([x] * 6, axis=1), 48000)
    elif kind in ("PCM_U8", "PCM_24", "FLOAT"):
        sf.write(path, speech, SR, subtype=kind)
    elif kind == "clipped":
        sf.write(path, np.clip(speech * 8, -1, 1), SR, subtype="PCM_16")
    elif kind == "truncated-data":
        sf.write(path, speech, SR, subtype="PCM_16")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3 + 1])     # header still claims the full length
    else:
        raise ValueError(kind)


ACCEPTED = ["rate8000", "rate22050", "rate44100", "rate48000", "stereo", "6ch-48k", "PCM_U8", "PCM_24", "FLOAT",
            "clipped", "truncated-data"]


@pytest.mark.parametrize("kind", ACCEPTED)
def test_odd_audio_is_accepted_by_every_command(capsys, tmp_path, speech, enrolled, kind):
    from streamsv.sources import load_audio

    f = tmp_path / f"{kind}.wav"
    _variant(kind, speech, f)
    wave = load_audio(f)
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.abs(wave).max() <= 1.0
    if kind not in ("truncated-data", "clipped", "rate8000"):
        # Same audio back at 16 kHz mono (8 kHz loses the band above 4 kHz, so only the length is checked).
        n = min(len(wave), len(speech))
        assert abs(len(wave) - len(speech)) <= 2
        ref = speech[:n] * (0.75 if kind == "stereo" else 1.0)
        assert np.corrcoef(wave[:n], ref)[0, 1] > 0.99
    elif kind == "rate8000":
        assert abs(len(wave) - len(speech)) <= 4
    code, out, err = run(capsys, "embed", "--json", str(f))
    assert code == 0, err
    assert len(json.loads(out)["embedding"]) == 256
    code, out, err = run(capsys, "verify", "alice", str(f), "--json")
    assert code in (0, 1), err                          # scored, whatever the verdict
    assert -1 <= json.loads(out)["score"] <= 1
    code, out, err = run(capsys, "listen", "--source", str(f), "--json")
    assert code == 0, err
    final = json.loads(out.splitlines()[-1])
    assert final["final"] and final["audio_s"] == pytest.approx(len(wave) / SR, abs=0.05)
    # --force: the same voice as alice, which enroll otherwise refuses as a collision.
    code, out, err = run(capsys, "enroll", f"v-{kind.lower()}", "--force", "--from", *twice(f))
    assert code == 0, err


# --------------------------------------------------------------------------- audio refused

def _bad_file(kind: str, speech: np.ndarray, path: Path) -> str:
    """Write a broken file; returns a phrase the error must contain."""
    if kind == "empty":
        path.write_bytes(b"")
        return "empty file"
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        return "cannot read audio"
    if kind == "text":
        path.write_text("this is a shopping list, not audio\n" * 20)
        return "cannot read audio"
    if kind == "truncated-header":
        sf.write(path, speech, SR)
        path.write_bytes(path.read_bytes()[:30])
        return "cannot read audio"
    if kind == "header-only":
        sf.write(path, speech, SR)
        path.write_bytes(path.read_bytes()[:44])
        return "empty"
    if kind in ("nan", "inf"):
        x = speech.copy()
        x[len(x) // 2] = np.nan if kind == "nan" else np.inf
        sf.write(path, x, SR, subtype="FLOAT")
        return "NaN or infinite samples"
    raise ValueError(kind)


REFUSED = ["empty", "corrupt", "text", "truncated-header", "header-only", "nan", "inf"]


@pytest.mark.parametrize("kind", REFUSED)
def test_broken_audio_is_refused_in_one_line(capsys, tmp_path, speech, enrolled, kind):
    profiles, _ = enrolled
    f = tmp_path / f"{kind}.wav"
    needle = _bad_file(kind, speech, f)
    before = snapshot(profiles)
    for argv in (["enroll", "bob", "--from", str(f)],
                 ["enroll", "alice", "--force", "--from", str(f)],     # must not damage alice
                 ["verify", "alice", str(f)],
                 ["embed", str(f)],
                 ["listen", "--source", str(f), "--json"]):
        refused(run(capsys, *argv), str(f), needle)
    assert snapshot(profiles) == before


def test_silence_and_too_short(capsys, tmp_path, enrolled):
    profiles, _ = enrolled
    before = snapshot(profiles)
    quiet = tmp_path / "silence.wav"
    sf.write(quiet, 1e-4 * np.random.default_rng(1).standard_normal(5 * SR).astype(np.float32), SR)
    short = tmp_path / "short.wav"
    sf.write(short, 0.3 * np.sin(2 * np.pi * 200 * np.arange(800) / SR).astype(np.float32), SR)   # 50 ms
    refused(run(capsys, "enroll", "bob", "--from", str(quiet)), "no voice heard")
    refused(run(capsys, "verify", "alice", str(quiet)), str(quiet), "0.0 s of speech")
    refused(run(capsys, "enroll", "bob", "--from", str(short)), "no voice heard")
    refused(run(capsys, "verify", "alice", str(short)), str(short), "of speech")
    refused(run(capsys, "embed", str(short)), str(short), "too short")
    # Silence still embeds (it is audio) and streams (nobody speaks: no decisions).
    assert run(capsys, "embed", str(quiet))[0] == 0
    code, out, _ = run(capsys, "listen", "--source", str(quiet), "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["decisions"] == 0
    assert snapshot(profiles) == before


def test_ten_minutes_stream_in_bounded_memory(capsys, tmp_path, speech, enrolled):
    import tracemalloc

    # 10 min: quiet room noise with speech at the start, middle and end (the VAD skips the quiet).
    rng = np.random.default_rng(2)
    audio = (3e-4 * rng.standard_normal(600 * SR)).astype(np.float32)
    for m in (0, 300, 590 - len(speech) // SR):
        audio[m * SR: m * SR + len(speech)] += speech
    long = tmp_path / "long.wav"
    sf.write(long, audio, SR, subtype="PCM_16")
    decoded_mb = audio.nbytes / 2**20                      # 36.6 MB as float32
    del audio
    cfg = tmp_path / "big-blocks.yaml"          # 0.3 s reads: a tenth of the per-chunk overhead, same path
    cfg.write_text("audio:\n  block_ms: 300\n")
    tracemalloc.start()
    try:
        code, out, err = run(capsys, "listen", "--source", str(long), "--json", "--config", str(cfg))
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert code == 0, err
    final = json.loads(out.splitlines()[-1])
    assert final["audio_s"] == pytest.approx(600, abs=0.1) and final["segments"] >= 3
    assert peak_mb < decoded_mb / 4, peak_mb                 # streamed, never held whole


def test_long_audio_is_embedded_in_bounded_pieces(untrained, speech):
    from streamsv.profiles import embed_bounded

    calls = []

    class Spy:
        sample_rate = SR

        def embed(self, wave):
            calls.append(len(wave))
            return untrained.embed(wave)

    x = np.tile(speech, 20)[: 70 * SR]
    v = embed_bounded(Spy(), x, chunk_s=30.0)
    assert calls == [30 * SR, 40 * SR]                     # the 10 s tail is folded into the last piece
    assert abs(np.linalg.norm(v) - 1) < 1e-5
    calls.clear()
    assert np.allclose(embed_bounded(Spy(), speech), untrained.embed(speech)) and calls == [len(speech)]


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize("text,needle", [
    ("scoring:\n  threshold: [0.5\n", "config: malformed YAML at line"),
    ("scoring: {threshold: high}\n", "config: scoring.threshold: expected a number, got 'high'"),
    ("vad:\n  aggressiveness: 2.5\n", "config: vad.aggressiveness: expected an integer"),
    ("scoring:\n  treshold: 0.5\n", "config: scoring.treshold: unknown key"),
    ("scorring:\n  threshold: 0.5\n", "config: scorring: unknown section"),
    ("audio:\n  device: [1, 2]\n", "config: audio.device: expected a device name or index"),
    ("scoring:\n  duration_slope: -1\n", "config: scoring.duration_slope: out of range"),
    ("- just\n- a list\n", "config: expected a mapping"),
])
def test_bad_config_is_one_line_naming_the_key(capsys, tmp_path, monkeypatch, enrolled, text, needle):
    _, clip = enrolled
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    refused(run(capsys, "verify", "alice", str(clip), "--config", str(bad)), needle, str(bad))
    refused(run(capsys, "listen", "--source", str(clip), "--config", str(bad)), needle)
    monkeypatch.setenv("STREAMSV_CONFIG", str(bad))          # the same through the environment
    refused(run(capsys, "profiles", "list"), needle)


# --------------------------------------------------------------------------- profile names

BAD_NAMES = ["../x", "/etc/passwd", "a/b", "..", "", "x" * 1000, "\u0430lice",  # Cyrillic а
             "ali\u202ece", ".hidden", "a\\b", "nul\x00l", "new\nline"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:20])
def test_bad_profile_names_are_refused_and_write_nothing(capsys, tmp_path, enrolled, name):
    profiles, clip = enrolled
    exported = tmp_path / "alice-export.json"
    assert run(capsys, "profiles", "export", "alice", str(exported))[0] == 0
    before = snapshot(tmp_path)
    for argv in (["enroll", name, "--from", str(clip)],
                 ["verify", name, str(clip)],
                 ["profiles", "show", name],
                 ["profiles", "delete", name],
                 ["profiles", "rename", "alice", name],
                 ["profiles", "import", str(exported), "--name", name]):
        err = refused(run(capsys, *argv), "invalid profile name")
        assert len(err) < 250 and "\u202e" not in err and "\x00" not in err   # short, no raw bidi/NUL
    assert snapshot(tmp_path) == before
    assert sorted(os.listdir(profiles)) == ["alice.json"]


# --------------------------------------------------------------------------- tampered profile files

def _tamper(kind: str, path: Path) -> str:
    data = json.loads(path.read_text())
    if kind == "wrong-dimension":
        data["embeddings"] = [row[:128] for row in data["embeddings"]]
        data["centroid"] = [float(x) for x in centroid_of(np.asarray(data["embeddings"]))]   # consistent, 128 values
        data["dim"] = 128
        needle = "128-dimensional"
    elif kind == "dim-lie":
        data["dim"] = 128
        needle = "does not match"
    elif kind == "nan":
        data["centroid"][3] = float("nan")                  # json.dumps writes NaN
        needle = "non-finite"
    elif kind == "other-model":
        data["model"] = "0123456789abcdef"
        needle = "made by another model"
    elif kind == "truncated-json":
        path.write_text(path.read_text()[: 200])
        return "corrupt profile file"
    elif kind == "not-json":
        path.write_bytes(b"\x00\xff garbage")
        return "corrupt profile file"
    elif kind == "wrong-name":
        data["name"] = "mallory"
        needle = "holds profile 'mallory'"
    elif kind == "ragged":
        data["embeddings"][0] = data["embeddings"][0][:10]
        needle = "malformed profile"
    else:
        raise ValueError(kind)
    path.write_text(json.dumps(data))
    return needle


@pytest.mark.parametrize("kind", ["wrong-dimension", "dim-lie", "nan", "other-model", "truncated-json", "not-json",
                                  "wrong-name", "ragged"])
def test_a_tampered_profile_spoils_only_itself(capsys, caplog, tmp_path, speech_clips, enrolled, kind):
    profiles, clip = enrolled
    bob = tmp_path / "bob.wav"
    sf.write(bob, speech_clips[2], SR)
    assert run(capsys, "enroll", "bob", "--force", "--from", *twice(bob))[0] == 0   # alice's voice too
    needle = _tamper(kind, profiles / "bob.json")
    alice_bytes = (profiles / "alice.json").read_bytes()
    code, out, err = run(capsys, "verify", "alice", str(clip), "--json")
    assert code in (0, 1) and json.loads(out)["speaker"] == "alice", err
    code, out, err = run(capsys, "listen", "--source", str(clip), "--json")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["profiles"] == 1
    assert all(set(e["scores"]) <= {"alice"} for e in events if e["event"] == "decision")
    assert "skipping profile" in caplog.text and "bob" in caplog.text and needle in caplog.text
    refused(run(capsys, "verify", "bob", str(bob)), needle)
    code, out, _ = run(capsys, "profiles", "list")
    assert code == 0 and "\nalice " in out and "\nbob " in out    # listed (UNREADABLE if damaged)
    if kind != "wrong-name":                                  # (import renames, so that one is fine)
        refused(run(capsys, "profiles", "import", str(profiles / "bob.json"), "--name", "bob2"), needle)
        assert not (profiles / "bob2.json").exists()
    assert (profiles / "alice.json").read_bytes() == alice_bytes


# --------------------------------------------------------------------------- devices

ASOUNDRC = """
pcm.streamsv_test {{
    type plug
    slave {{ pcm {{ type file slave.pcm "null" file "/dev/null" infile "{infile}" format "raw" }}
             format S16_LE rate 16000 channels 1 }}
    hint {{ show on description "streamsv test capture" }}
}}
"""


def test_unknown_devices_are_refused_with_a_listing(tmp_path):
    try:
        import sounddevice  # noqa: F401
    except OSError:
        pytest.skip("PortAudio not installed")
    raw = tmp_path / "capture.raw"
    np.zeros(16000, "<i2").tofile(raw)
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(infile=raw))
    env = {k: v for k, v in os.environ.items() if k not in ("ALSA_CONFIG_PATH", "STREAMSV_CONFIG")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO), STREAMSV_PROFILES_DIR=str(tmp_path / "profiles"))
    # One interpreter, several commands: PortAudio scans ALSA once per process, and each start costs.
    code = (
        "import sys\nfrom streamsv import cli\n"
        "for argv in (['listen', '--device', 'nonexistent'], ['enroll', 'carol', '--device', '99'],"
        " ['listen', '--device', '99', '--service']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit as e:\n"
        "        print('exit', e.code, flush=True)\n        sys.stderr.flush()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.stdout.split() == ["exit", "2"] * 3, (r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if not x.startswith("ALSA lib ")]   # libasound's own noise
    assert len(lines) == 3, lines
    assert lines[0].startswith("error: input device 'nonexistent' not found; available input devices: [")
    assert lines[1].startswith("error: input device 99 not found; available input devices: [")
    assert all("streamsv_test" in line for line in lines)
    assert not (tmp_path / "profiles").exists()


def test_an_unwritable_home_leaves_the_error_one_line(tmp_path):
    # The model loads (onnxruntime starts its environment and logger) before the clip is refused:
    # nothing onnxruntime says about a HOME it cannot write to may come before the error line.
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(SR // 20, dtype=np.float32), SR)
    r = _embed_with_home(short, "/nonexistent")
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "audio too short" in r.stderr


def test_onnxruntime_keeps_no_telemetry_identifier_in_home(tmp_path):
    # onnxruntime's Linux wheels persist a telemetry device ID under $HOME unless told not to before
    # they load (as a user whose HOME is not writable, that is a warning on stderr; as root, a file).
    short, home = tmp_path / "short.wav", tmp_path / "home"
    sf.write(short, np.zeros(SR // 20, dtype=np.float32), SR)
    home.mkdir()
    r = _embed_with_home(short, str(home))
    assert r.returncode == 2 and "audio too short" in r.stderr, r.stderr
    assert not list(home.rglob("*")), list(home.rglob("*"))


def _embed_with_home(wav: Path, home: str) -> subprocess.CompletedProcess:
    """``streamsv embed wav`` in a fresh process with HOME=``home``; neither the test's config nor
    a telemetry setting inherited from this process (streamsv sets its own at import)."""
    env = {k: v for k, v in os.environ.items() if k not in ("STREAMSV_CONFIG", "ORT_DISABLE_TELEMETRY")}
    env.update(HOME=home, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "streamsv.cli", "embed", str(wav)], env=env,
                          capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- permissions

def test_profile_files_0600_in_a_0700_folder(capsys, tmp_path, enrolled, speech_clips):
    profiles, clip = enrolled
    bob = tmp_path / "bob.wav"
    sf.write(bob, speech_clips[2], SR)
    os.chmod(profiles, 0o755)                                 # loosened by hand: left as the user set it
    old = os.umask(0)                                         # even with a careless umask
    try:
        # --force: the clips are one speaker's, so bob sounds like alice (duplicate-voice check)
        code, out, err = run(capsys, "enroll", "bob", "--force", "--from", *twice(bob))
        assert code == 0, err
        assert run(capsys, "profiles", "rename", "bob", "carol")[0] == 0
        exported = tmp_path / "carol.json"
        assert run(capsys, "profiles", "export", "carol", str(exported))[0] == 0
        assert run(capsys, "profiles", "import", str(exported), "--name", "dave")[0] == 0
        assert run(capsys, "enroll", "alice", "--force", "--from", *twice(clip))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o755      # never chmod'ed by streamsv
    files = sorted(profiles.iterdir())
    assert [f.name for f in files] == ["alice.json", "carol.json", "dave.json"]   # no temp files left
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
