"""`streamsv listen` as a service, for real: a subprocess, a bound notify socket, real signals.

The model is a copy of the shipped ONNX graphs passed with --model, so the CLI loads it through
the same code path as any weights path (no test hook in the child, no torch).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, with_pauses
from test_service import NotifySocket

SR = 16000
FILE_S = 30.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    # A model file given with --model: a copy of the shipped ONNX graphs (no torch needed).
    from streamsv.embedder import DEFAULT_WEIGHTS, model_paths

    folder = tmp_path_factory.mktemp("model")
    for source in model_paths(DEFAULT_WEIGHTS):
        (folder / source.name).write_bytes(source.read_bytes())
    return folder / DEFAULT_WEIGHTS.name


@pytest.fixture(scope="module")
def speechlike(tmp_path_factory, speech_clips) -> Path:
    # Real speech (dev speaker, else espeak-ng) with pauses, looped to FILE_S seconds.
    audio, _ = with_pauses(speech_clips, 0.8)
    audio = np.tile(audio, int(np.ceil(FILE_S * SR / len(audio))))[: int(FILE_S * SR)]
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, audio, SR)
    return path


@pytest.fixture
def notify_socket():
    s = NotifySocket()
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, tiny_model, speechlike) -> dict:
    """Profiles folder with one profile made by the tiny model, a settings file, a clean env."""
    from streamsv.embedder import load_embedder
    from streamsv.profiles import ProfileStore, new_profile
    from streamsv.sources import load_audio

    emb = load_embedder(tiny_model)
    wave = load_audio(speechlike)
    vecs = [emb.embed(wave[i * 3 * SR:(i + 1) * 3 * SR]) for i in range(3)]
    ProfileStore(tmp_path / "profiles").save(new_profile("alice", vecs, 3.0, emb.fingerprint))
    cfg = tmp_path / "config.yaml"
    cfg.write_text("scoring:\n  threshold: 0.5\noutput:\n  stats_interval_s: 1.0\n")
    env = {k: v for k, v in os.environ.items() if k not in ("STREAMSV_CONFIG", "WATCHDOG_PID", "NOTIFY_SOCKET")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO), STREAMSV_PROFILES_DIR=str(tmp_path / "profiles"))
    return {"env": env, "config": cfg, "tmp": tmp_path}


def listen_cmd(home: dict, model: Path, audio: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streamsv.cli", "listen", "--source", str(audio), "--realtime",
            "--model", str(model), "--config", str(home["config"]), *extra]


@contextlib.contextmanager
def killed_on_failure(proc: subprocess.Popen):
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop_cleanly(proc: subprocess.Popen, sig: int) -> tuple[str, str]:
    """Send ``sig``; the process must exit 0 within 2 s, without a traceback."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=15)
    took = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert took < 2.0, took
    assert "Traceback" not in out + err
    return out, err


def test_listen_under_systemd_notify(home, tiny_model, speechlike, notify_socket):
    # $NOTIFY_SOCKET alone switches service mode on, as under systemd's ExecStart.
    env = dict(home["env"], NOTIFY_SOCKET=notify_socket.env, WATCHDOG_USEC="2000000")
    proc = subprocess.Popen(listen_cmd(home, tiny_model, speechlike), env=env, cwd=home["tmp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with killed_on_failure(proc):
        assert notify_socket.wait_for(b"READY=1", timeout=120) == b"READY=1\nSTATUS=listening"
        notify_socket.wait_for(b"WATCHDOG=1", timeout=5)
        # SIGHUP: new thresholds from the edited file, flags still win (none given here), audio keeps flowing.
        home["config"].write_text("scoring:\n  threshold: 0.93\n  min_margin: 0.2\noutput:\n  stats_interval_s: 1.0\n")
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for(b"RELOADING=1", timeout=10)
        notify_socket.wait_for(b"READY=1\nSTATUS=listening (reloaded)", timeout=10)
        time.sleep(4.0)
        out, err = stop_cleanly(proc, signal.SIGTERM)
    events = [json.loads(line) for line in out.splitlines()]       # stdout is a pipe: JSON lines
    reloads = [e for e in events if e["event"] == "profiles_reloaded"]
    assert len(reloads) == 1 and reloads[0]["profiles"] == ["alice"]
    assert reloads[0]["threshold"] == 0.93 and reloads[0]["min_margin"] == 0.2
    final = events[-1]
    assert final["event"] == "stats" and final["final"] is True and final["profiles"] == 1
    assert 0 < final["audio_s"] < FILE_S                             # stopped mid-file
    assert any(e["event"] == "decision" for e in events), events
    assert "INFO streamsv.service: received SIGTERM, stopping" in err.splitlines()
    got = notify_socket.recv_all()
    assert got[-1] == b"STOPPING=1\nSTATUS=stopped"
    assert sum(d.startswith(b"READY=1\nSTATUS=listening") and b"reloaded" not in d for d in got) == 1


def test_listen_service_flag_without_socket_stops_on_sigint(home, tiny_model, speechlike):
    # `--service` in a terminal or a container without systemd: no socket, same clean stop.
    proc = subprocess.Popen(listen_cmd(home, tiny_model, speechlike, "--service", "--json"), env=home["env"],
                            cwd=home["tmp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with killed_on_failure(proc):
        assert json.loads(proc.stdout.readline())["event"] == "ready"  # at once, before any audio
        first = proc.stdout.readline()                                # the first 1 s stats event
        assert json.loads(first)["event"] in ("stats", "speech_start", "decision", "speech_end")
        out, err = stop_cleanly(proc, signal.SIGINT)
    final = json.loads(out.splitlines()[-1])
    assert final["event"] == "stats" and final["final"] is True and 0 < final["audio_s"] < FILE_S


def test_plain_listen_stops_on_sigterm_as_on_ctrl_c(home, tiny_model, speechlike):
    # Without --service (a container's stop sends SIGTERM): the final stats, then exit 0.
    proc = subprocess.Popen(listen_cmd(home, tiny_model, speechlike, "--json"), env=home["env"],
                            cwd=home["tmp"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with killed_on_failure(proc):
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        proc.stdout.readline()                                        # audio is flowing
        out, err = stop_cleanly(proc, signal.SIGTERM)
    final = json.loads(out.splitlines()[-1])
    assert final["event"] == "stats" and final["final"] is True and 0 < final["audio_s"] < FILE_S


def test_service_install_print_is_the_repo_unit(capsys):
    from streamsv import cli

    repo_unit = (REPO / "streamsv" / "systemd" / "streamsv.service").read_text()
    with pytest.raises(SystemExit) as done:
        cli.main(["service", "install", "--print", "--executable", "/usr/local/bin/streamsv"])
    assert done.value.code in (0, None)
    assert capsys.readouterr().out == repo_unit
    # Without --executable the unit names the streamsv that is running; nothing else differs.
    with pytest.raises(SystemExit):
        cli.main(["service", "install", "--print"])
    ours = capsys.readouterr().out.splitlines()
    theirs = repo_unit.splitlines()
    diff = [(a, b) for a, b in zip(ours, theirs) if a != b]
    assert len(ours) == len(theirs)
    assert all(a.startswith(("ExecStart=", "ProtectHome=")) for a, _ in diff)   # ProtectHome: a venv in /home
    exec_line = next(a for a in ours if a.startswith("ExecStart="))
    assert exec_line.startswith("ExecStart=/") and exec_line.endswith(" listen --service")


def test_service_install_writes_the_unit(capsys, tmp_path):
    from streamsv import cli

    target = tmp_path / "streamsv.service"
    with pytest.raises(SystemExit):
        cli.main(["service", "install", "--path", str(target), "--executable", "/usr/local/bin/streamsv"])
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {target}\n") and "systemctl enable --now streamsv" in out
    assert target.read_text() == (REPO / "streamsv" / "systemd" / "streamsv.service").read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    with pytest.raises(SystemExit) as done:
        cli.main(["service", "install", "--path", str(tmp_path / "missing" / "x.service")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("error: service: ") and err.count("\n") == 1


def test_service_reopens_a_failed_microphone(monkeypatch, capsys, tmp_path, untrained, speechlike):
    # The CLI's wiring for a mic: a capture that dies mid-run is reopened (with backoff) and audio
    # resumes in the same pipeline; SIGTERM then stops with exit status 0 and a final stats event.
    import threading

    from streamsv import app, sources
    from streamsv.config import Config

    class DyingMic(sources.FileSource):
        def chunks(self, stop=None):
            for i, item in enumerate(super().chunks(stop)):
                if i == 20:
                    raise OSError("PortAudio: device unavailable")
                yield item

    opened = []

    def fake_open(spec, device=None, realtime=False, block_ms=30, queue_s=2.0, rate=16000):
        assert spec == "mic" and rate == 16000        # the config's audio.sample_rate
        opened.append(1)
        if len(opened) == 2:
            raise sources.StreamsvError("input device 'USB mic' not found")     # still unplugged
        if len(opened) == 3:   # back: let it run a moment, then stop like systemd would
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return DyingMic(speechlike, realtime=True)

    monkeypatch.setattr(sources, "open_source", fake_open)
    cfg = Config().with_overrides(**{"profiles.dir": str(tmp_path / "none"), "output.json": True})
    t0 = time.monotonic()
    code = app.run_service(cfg, untrained)
    out = capsys.readouterr().out
    assert code == 0 and len(opened) == 3
    assert time.monotonic() - t0 < 10                       # backoff 0.5 s, then 1 s
    final = json.loads(out.splitlines()[-1])
    assert final["event"] == "stats" and final["final"] is True
    assert final["audio_s"] > 20 * 0.03 + 0.2               # audio from before and after the failure
