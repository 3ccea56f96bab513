"""The CLI in-process (the shipped model, loaded once) and a couple of real subprocess runs."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, dev_speakers, run_cli, speaker_folders, with_pauses
from streamsv import cli

SR = 16000


pytestmark = pytest.mark.usefixtures("untrained_cli")


run = run_cli


def test_enroll_from_files_then_force(capsys, clips, tmp_path):
    code, out, err = run(capsys, "enroll", "alice", "--from", *map(str, clips))
    assert code == 0, err
    assert "enrolled 'alice'" in out and "consistency" in out
    f = tmp_path / "profiles" / "alice.json"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    code, out, err = run(capsys, "enroll", "alice", "--from", str(clips[0]))
    assert code == 2 and err.strip() == ("error: profile 'alice' already exists; "
                                         "use --append to add speech to it or --force to replace it")
    code, out, err = run(capsys, "enroll", "alice", "--force", "--from", *map(str, clips))
    assert code == 0, err


@pytest.mark.parametrize("argv,msg", [
    (["enroll", "../evil", "--from", "x.wav"], "invalid profile name"),
    (["enroll", "bob", "--from", "/nonexistent.wav"], "no such file"),
    (["verify", "nobody", "/nonexistent.wav"], "no such file"),
    (["listen", "--source", "/nonexistent.wav", "--json"], "no such file"),
    (["embed", "/nonexistent.wav"], "no such file"),
    (["profiles", "show", "ghost"], "no profile named 'ghost'"),
    (["listen", "--source", "x.wav", "--threshold", "7"], "config: scoring.threshold"),
    (["profiles", "export", "alice", "-"], "not stdout"),
])
def test_errors_are_one_line_exit_2(capsys, argv, msg):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1


def test_not_audio_file(capsys, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("hello")
    code, _, err = run(capsys, "embed", str(bad))
    assert code == 2 and "cannot read audio" in err


def test_verify_accept_and_reject(capsys, clips):
    assert run(capsys, "enroll", "alice", "--from", str(clips[0]), str(clips[1]))[0] == 0
    code, out, _ = run(capsys, "verify", "alice", str(clips[0]), "--threshold", "0.5", "--json")
    res = json.loads(out)
    assert code == 0 and res["accepted"] and res["score"] > 0.5
    code, out, _ = run(capsys, "verify", "alice", str(clips[2]), "--threshold", "1.0")
    assert code == 1 and out.startswith("reject alice score")


def test_listen_file_json(capsys, clips, tmp_path, speech_clips):
    assert run(capsys, "enroll", "alice", "--from", str(clips[0]), str(clips[1]))[0] == 0
    audio, _ = with_pauses(speech_clips, 1.0)
    conv = tmp_path / "conv.flac"
    sf.write(conv, audio, SR)
    code, out, err = run(capsys, "listen", "--source", str(conv), "--json")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    kinds = {e["event"] for e in events}
    assert {"speech_start", "decision", "speech_end", "stats"} <= kinds
    assert events[-1]["event"] == "stats" and events[-1]["final"] and events[-1]["profiles"] == 1
    assert all(set(e["scores"]) == {"alice"} for e in events if e["event"] == "decision")


def test_listen_skips_other_model_profile(capsys, caplog, clips, tmp_path, speech_clips):
    assert run(capsys, "enroll", "alice", "--from", str(clips[0]), str(clips[1]))[0] == 0
    f = tmp_path / "profiles" / "alice.json"
    data = json.loads(f.read_text())
    data["model"] = "some-older-model"
    f.write_text(json.dumps(data))
    code, out, err = run(capsys, "listen", "--source", str(clips[2]), "--json")
    assert code == 0
    assert "re-enroll with: streamsv enroll alice --force" in caplog.text
    assert json.loads(out.splitlines()[-1])["profiles"] == 0
    code, _, err = run(capsys, "verify", "alice", str(clips[0]))
    assert code == 2 and "streamsv enroll alice --force" in err


def test_embed_json(capsys, clips, untrained):
    code, out, _ = run(capsys, "embed", "--json", str(clips[0]), str(clips[1]))
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2
    v = np.array(rows[0]["embedding"])
    assert v.shape == (untrained.dim,) and abs(np.linalg.norm(v) - 1) < 1e-4
    assert np.allclose(v, untrained.embed(speech_clips_of(clips[0])), atol=1e-5)
    code, out, _ = run(capsys, "embed", str(clips[0]))
    assert out.startswith(str(clips[0]) + "\t") and len(out.split("\t")[1].split()) == untrained.dim


def speech_clips_of(path):
    from streamsv.sources import load_audio

    return load_audio(path)


def test_profiles_list_and_show_escape_the_model_string(capsys, tmp_path):
    # A profile file's model string is text from disk: a hostile one must not add lines or send
    # terminal escapes (ESC [2J clears the screen) through `profiles list` / `show`.
    from streamsv.profiles import ProfileStore, new_profile

    e = np.eye(4, 8, dtype=np.float32)
    hostile = "m1\x1b[2J\nalice  99.0 s  fake\r"
    ProfileStore(tmp_path / "profiles").save(new_profile("eve", e, 5.0, hostile))
    for argv in (("profiles", "list"), ("profiles", "show", "eve")):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        assert "\x1b" not in out and "\r" not in out and "m1\\x1b[2J\\nalice" in out, out
    code, out, _ = run(capsys, "profiles", "list")
    assert len(out.splitlines()) == 2                  # the header and eve, nothing forged
    code, out, _ = run(capsys, "profiles", "show", "eve", "--json")
    assert json.loads(out)["model"] == hostile         # JSON carries it exactly (escaped by json)


def test_profiles_commands(capsys, clips, tmp_path):
    assert run(capsys, "enroll", "alice", "--from", str(clips[0]), str(clips[1]))[0] == 0
    code, out, _ = run(capsys, "profiles", "list")
    assert code == 0 and out.splitlines()[0].split() == ["name", "speech", "emb", "model", "created"]
    assert out.splitlines()[1].startswith("alice ")
    code, out, _ = run(capsys, "profiles", "show", "alice", "--json")
    info = json.loads(out)
    assert info["embeddings"] >= 2 and info["dim"] == 256
    assert run(capsys, "profiles", "rename", "alice", "carol")[0] == 0
    exported = tmp_path / "carol-export.json"
    assert run(capsys, "profiles", "export", "carol", str(exported))[0] == 0
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    assert run(capsys, "profiles", "delete", "carol")[0] == 0
    assert run(capsys, "profiles", "list")[2].startswith("no profiles")
    assert run(capsys, "profiles", "import", str(exported), "--name", "dave")[0] == 0
    code, out, _ = run(capsys, "profiles", "list")
    assert out.splitlines()[1].startswith("dave ")
    code, _, err = run(capsys, "profiles", "rename", "dave", "a/b")
    assert code == 2 and "invalid profile name" in err


def test_calibrate_from_folders(capsys, tmp_path):
    spk = dev_speakers()[:3]
    if len(spk) < 3:
        pytest.skip("needs ../shared/data (speechocean762 dev speakers)")
    root = speaker_folders(tmp_path / "cal", spk, 5)
    code, out, err = run(capsys, "calibrate", str(root))
    assert code == 0, err
    thr = float(out.split("threshold ")[1].split()[0])
    eer_3s = float(out.split("EER ")[1].split("%")[0])
    # Three dev speakers are easy to tell apart: a threshold between impostor (~0.1-0.4) and genuine
    # (~0.6-0.9) cosines with a low EER; a sign error or a threshold from the wrong trials fails here.
    assert 0.2 < thr < 0.9 and eer_3s < 10.0, out
    code, out, err = run(capsys, "calibrate", str(root), "--target-far", "0.0")
    assert code == 0 and "FAR 0.00%" in out
    code, _, err = run(capsys, "calibrate", str(root / spk[0]))
    assert code == 2 and "at least 2 speakers" in err


def test_bench_is_forwarded(capsys):
    code, out, err = run(capsys, "bench", "--help")
    assert code == 0 and "streamsv bench" in out


def test_stdin_source_subprocess(tmp_path, speech_clips):
    audio, _ = with_pauses(speech_clips[:2], 0.8)
    pcm = (audio * 32767).astype("<i2").tobytes()
    code = 'from streamsv import cli; cli.main(["listen", "--source", "-"])'   # the shipped model, no torch
    env = dict(os.environ, STREAMSV_PROFILES_DIR=str(tmp_path / "none"), HOME=str(tmp_path))
    env.pop("STREAMSV_CONFIG", None)
    r = subprocess.run([sys.executable, "-c", code], input=pcm, capture_output=True, env=env, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr.decode()
    events = [json.loads(line) for line in r.stdout.decode().splitlines()]   # not a TTY → JSON lines
    assert events[-1]["event"] == "stats" and events[-1]["audio_s"] == pytest.approx(len(audio) / SR, abs=0.03)
    assert sum(e["event"] == "speech_start" for e in events) >= 2


# --------------------------------------------------------------------------- listen's quick parse (start-up)

def _typer_listen_params(argv: list[str]) -> dict:
    import typer

    command = typer.main.get_command(cli.app).commands["listen"]
    with command.make_context("listen", list(argv[1:])) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize("argv", [
    ["listen"],
    ["listen", "--source", "talk.wav", "--json", "--threshold", "0.6"],
    ["listen", "--source=-", "--no-json", "--min-confidence", "0.9", "--min-margin", ".05", "--turns", "--realtime"],
    ["listen", "--service", "--mqtt", "mqtts://broker:8883", "--room", "kitchen", "--config", "c.yaml",
     "--profiles-dir", "/var/lib/streamsv/profiles", "--model", "m.onnx", "--device", "USB mic"],
    ["listen", "--threshold=1e-1", "--source", "-", "--device", ""],
    ["listen", "--min-margin", "+0.1", "--threshold", "7"],      # out of range: the config refuses it, not the parse
])
def test_quick_listen_args_are_what_typer_parses(argv):
    quick = cli.quick_listen_args(argv)
    assert quick is not None and quick == _typer_listen_params(argv)
    assert all(type(quick[k]) is type(v) for k, v in _typer_listen_params(argv).items())


@pytest.mark.parametrize("argv", [
    ["listen", "--help"], ["listen", "--bogus"], ["listen", "extra"], ["listen", "--source"],
    ["listen", "--threshold", "abc"], ["listen", "--threshold", "nan"], ["listen", "--threshold", "-0.5"],
    ["listen", "--json", "--no-json"], ["listen", "--source", "a", "--source", "b"], ["listen", "--realtime=1"],
    ["listen", "--config", ""], ["listen", "--", "--json"], ["verify", "alice", "a.wav"], [],
])
def test_quick_listen_args_leave_the_rest_to_typer(argv):
    assert cli.quick_listen_args(argv) is None


def test_a_listen_line_typer_must_parse_keeps_typers_error(capsys):
    code, _, err = run(capsys, "listen", "--threshold", "abc")
    assert code == 2 and err.startswith("error: ") and "Invalid value for '--threshold'" in err


def test_quick_listen_runs_listen_with_the_same_exit_status(capsys, tmp_path, speech_clips):
    audio, _ = with_pauses(speech_clips[:1], 0.5)
    wav = tmp_path / "talk.wav"
    sf.write(wav, audio, SR)
    code, out, err = run(capsys, "listen", "--source", str(wav), "--json", "--turns")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and events[0]["event"] == "ready" and events[-1]["event"] == "stats", err


def test_a_model_path_that_is_no_step_graph_is_said_plainly():
    # A folder, or the pooling graph given for the step: said plainly, not as a graph's input name.
    from streamsv.embedder import load_embedder
    from streamsv.errors import StreamsvError

    weights = REPO / "streamsv" / "weights"
    for model, msg in ((weights, "a folder, not a model file"),
                       (weights / "student.pool.onnx", "not a streamsv step graph")):
        with pytest.raises(StreamsvError, match=msg):
            load_embedder(model)
