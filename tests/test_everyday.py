"""Everyday use: the ready event, the live view built from events, listen --turns, the input-level
meter, profiles list, devices, help on every option, and one error style."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from conftest import run_cli, with_pauses
from streamsv import cli
from streamsv.config import Config
from streamsv.events import turn_events
from streamsv.pipeline import Pipeline
from streamsv.sinks.console import LiveView, level_meter
from streamsv.sources import FileSource

SR = 16000


@pytest.fixture
def talk(tmp_path, speech_clips):
    audio, _ = with_pauses(speech_clips, 1.0)
    path = tmp_path / "talk.wav"
    sf.write(path, audio, SR)
    return path


def render(view: LiveView) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=110, force_terminal=False).print(view)
    return buf.getvalue()


def test_ready_is_the_first_event_with_what_a_consumer_needs(untrained, speech_clips, talk):
    pipe = Pipeline(untrained, FileSource(talk), Config(), {"bob": untrained.embed(speech_clips[0])})
    first = next(iter(pipe.run()))
    assert first["event"] == "ready" and first["t"] == 0
    assert first["device"] == str(talk) and first["sample_rate"] == 16000
    assert first["model"] == untrained.fingerprint and first["profiles"] == ["bob"]
    assert first["threshold"] == Config().scoring.threshold and "min_confidence" in first


def test_live_view_is_right_from_its_first_frame_and_clears_after_speech(untrained, speech_clips, talk):
    view = LiveView(title="t")
    assert "starting" in render(view)                      # before ready: no made-up threshold or profiles
    cfg = Config().with_overrides(**{"scoring.threshold": 0.42})
    pipe = Pipeline(untrained, FileSource(talk), cfg, {"bob": untrained.embed(speech_clips[0]),
                                                       "eve": untrained.embed(speech_clips[1][::-1].copy())},
                    level_interval_s=view.level_interval_s)
    events = list(pipe.run())
    view.consume(events[0])
    text = render(view)
    assert "bob" in text and "eve" in text and "threshold 0.42" in text and "no profiles" not in text
    assert "no one speaking" in text
    levels = [e for e in events if e["event"] == "level"]
    assert levels and all(e["dbfs"] <= 0 for e in levels)
    decision = next(i for i, e in enumerate(events) if e["event"] == "decision")
    for e in events[1:decision + 1]:
        view.consume(e)
    text = render(view)
    assert "confidence" in text and "no one speaking" not in text and "dBFS" in text
    end = next(i for i, e in enumerate(events) if e["event"] == "speech_end" and i > decision)
    for e in events[decision + 1:end + 1]:
        view.consume(e)
    assert "no one speaking" in render(view) and "recent turns" in render(view)


def test_level_meter():
    assert level_meter(0.0).startswith("▮" * 12) and level_meter(-60.0).startswith("·" * 12)
    assert level_meter(None).endswith("- dBFS") and "-30 dBFS" in level_meter(-30.0)


def test_turns_keeps_turn_boundaries_and_speaker_changes():
    ev = [{"event": "ready"}, {"event": "speech_start", "t": 1},
          {"event": "decision", "speaker": None}, {"event": "decision", "speaker": None},
          {"event": "decision", "speaker": "bob"}, {"event": "decision", "speaker": "bob"},
          {"event": "level", "dbfs": -20}, {"event": "stats", "final": False},
          {"event": "speech_end", "speaker": "bob"}, {"event": "speech_start", "t": 5},
          {"event": "decision", "speaker": "bob"}, {"event": "speech_end", "speaker": "bob"},
          {"event": "stats", "final": True}]
    kept = list(turn_events(iter(ev)))
    assert [e["event"] for e in kept] == ["ready", "speech_start", "decision", "decision", "speech_end",
                                          "speech_start", "decision", "speech_end", "stats"]
    assert [e["speaker"] for e in kept if e["event"] == "decision"] == [None, "bob", "bob"]


def test_listen_turns_through_the_cli(capsys, untrained_cli, talk):
    code, out, err = run_cli(capsys, "listen", "--source", str(talk), "--json", "--turns")
    assert code == 0, err
    kinds = [json.loads(x)["event"] for x in out.splitlines()]
    assert kinds[0] == "ready" and kinds[-1] == "stats" and "speech_end" in kinds and "decision" in kinds
    label = ()  # within a turn, a decision is kept only when its label changes
    for ev in map(json.loads, out.splitlines()):
        if ev["event"] in ("speech_start", "speaker_change"):
            label = ()
        elif ev["event"] == "decision":
            assert ev["speaker"] != label
            label = ev["speaker"]


def test_profiles_list_has_a_header_and_json(capsys, untrained_cli, speech_clips, tmp_path):
    paths = []
    for i, c in enumerate(speech_clips[:2]):
        paths.append(tmp_path / f"c{i}.wav")
        sf.write(paths[-1], c, SR)
    assert run_cli(capsys, "enroll", "alice", "--from", *map(str, paths))[0] == 0
    code, out, _ = run_cli(capsys, "profiles", "list")
    assert code == 0 and out.splitlines()[0].split() == ["name", "speech", "emb", "model", "created"]
    code, out, _ = run_cli(capsys, "profiles", "list", "--json")
    row = json.loads(out)
    assert row["name"] == "alice" and row["readable"] and row["embeddings"] > 0 and row["speech_s"] > 3


def test_devices_marks_the_default(capsys, monkeypatch):
    import streamsv.sources as sources

    monkeypatch.setattr(sources, "list_input_devices", lambda: [
        {"index": 0, "name": "USB mic", "hostapi": "ALSA", "channels": 1, "default_samplerate": 48000.0, "default": False},
        {"index": 3, "name": "pipewire", "hostapi": "ALSA", "channels": 2, "default_samplerate": 44100.0, "default": True}])
    code, out, _ = run_cli(capsys, "devices")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("  [0] USB mic") and lines[1].startswith("* [3] pipewire")
    assert "default" in lines[-1]


def _commands():
    import typer

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, path + [name])
        else:
            yield " ".join(path), command

    return list(walk(typer.main.get_command(cli.app), []))


def test_every_option_and_argument_has_help():
    missing = [(name, p.name) for name, c in _commands() for p in c.params
               if not getattr(p, "hidden", False) and not getattr(p, "help", None)]
    assert missing == []


@pytest.mark.parametrize("argv,needle", [
    (["demo", "--bogus"], "No such option: --bogus (see: streamsv demo --help)"),
    (["bogus"], "No such command 'bogus'"),
    (["verify"], "Missing argument"),
    (["listen", "--threshold", "abc"], "Invalid value for '--threshold'"),
])
def test_usage_errors_are_one_error_line(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err
    assert "Error" not in err and "╭" not in err


def test_demo_keep_folder_error_is_one_line(tmp_path):
    from streamsv.demo import make_keep_folder
    from streamsv.errors import StreamsvError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StreamsvError, match="--keep .*cannot make this folder"):
        make_keep_folder(blocker / "sub")


def test_demo_keep_refuses_a_folder_that_holds_files(tmp_path):
    # The demo's copies would replace files of the same name: nothing is overwritten unasked.
    from streamsv.demo import make_keep_folder
    from streamsv.errors import StreamsvError

    make_keep_folder(tmp_path / "fresh")          # new, or empty: fine
    make_keep_folder(tmp_path / "fresh")
    (tmp_path / "fresh" / "conversation.wav").write_bytes(b"mine")
    with pytest.raises(StreamsvError, match="not empty"):
        make_keep_folder(tmp_path / "fresh")
    assert (tmp_path / "fresh" / "conversation.wav").read_bytes() == b"mine"
