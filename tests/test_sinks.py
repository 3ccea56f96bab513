"""Sinks (streamsv/sinks/): one way to open what the config asks for, events fanned out to each,
level events only to a sink that asks, and nothing left running when one fails to open."""
from __future__ import annotations

import io
import json
import socket
import threading
import time

import pytest

from streamsv import events
from streamsv.config import Config
from streamsv.sinks import Sinks, open_sinks
from streamsv.sinks.console import LiveView
from streamsv.sinks.jsonl import JsonWriter


class Recorder:
    def __init__(self, name: str, log: list, level_interval_s: float = 0.0, fail_on_enter: bool = False) -> None:
        self.name, self.log, self.level_interval_s, self.fail = name, log, level_interval_s, fail_on_enter
        self.got: list[dict] = []

    def __enter__(self):
        if self.fail:
            raise OSError(f"{self.name} cannot open")
        self.log.append(f"open {self.name}")
        return self

    def __exit__(self, *exc):
        self.log.append(f"close {self.name}")

    def consume(self, event):
        self.got.append(event)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_open_sinks_follows_the_config():
    json_sinks = open_sinks(Config().with_overrides(**{"output.json": True}))
    assert [type(m) for m in json_sinks.members] == [JsonWriter] and json_sinks.level_interval_s == 0
    live = open_sinks(Config().with_overrides(**{"output.json": False}), title="t")
    assert [type(m) for m in live.members] == [LiveView] and live.level_interval_s == LiveView.level_interval_s > 0
    pytest.importorskip("paho.mqtt")
    from streamsv.sinks.mqtt import MqttSink

    both = open_sinks(Config().with_overrides(**{"output.json": True, "mqtt.url": "mqtt://127.0.0.1:1"}))
    assert [type(m) for m in both.members] == [JsonWriter, MqttSink] and both.members[1].names is None


def test_events_reach_every_sink_and_levels_only_those_that_ask():
    log: list = []
    meter, plain = Recorder("meter", log, level_interval_s=0.25), Recorder("plain", log)
    sinks = Sinks([meter, plain])
    assert sinks.level_interval_s == 0.25
    stream = [events.speech_start(0.5), events.level(0.75, -20.0, 0.3), events.speech_end(1.0, 0.5, 0.5, 0)]
    with sinks:
        for ev in stream:
            sinks.consume(ev)
    assert meter.got == stream and plain.got == [stream[0], stream[2]]
    assert log == ["open meter", "open plain", "close plain", "close meter"]


def test_turns_filters_before_every_sink():
    a, b = Recorder("a", []), Recorder("b", [])
    sinks = Sinks([a, b], turns=True)
    d = events.decision(1.0, "ada", True, 0.9, None, {"ada": 0.9}, 1.0, 1.0, 1.0, 0.48, 25.0)
    with sinks:
        for ev in (events.speech_start(0.0), d, {**d, "t": 1.5}, events.speech_end(2.0, 0.0, 2.0, 2, "ada", True, 0.9)):
            sinks.consume(ev)
    assert [e["t"] for e in a.got] == [0.0, 1.0, 2.0] and a.got == b.got


def test_a_sink_that_fails_to_open_closes_those_already_open():
    log: list = []
    sinks = Sinks([Recorder("first", log), Recorder("second", log, fail_on_enter=True), Recorder("third", log)])
    with pytest.raises(OSError, match="second cannot open"):
        with sinks:
            pass
    assert log == ["open first", "close first"]


def test_mqtt_threads_do_not_outlive_an_output_that_fails_to_start():
    # Review finding: the MQTT sink was started before the output; when the output's __enter__
    # raised, the publisher and paho network threads ran on with no one to close them.
    pytest.importorskip("paho.mqtt")
    from streamsv.config import MqttConfig
    from streamsv.sinks.mqtt import MqttSink

    before = set(threading.enumerate())
    sink = MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}", room="leak"), names=["ada"])
    with pytest.raises(OSError):
        with Sinks([sink, Recorder("output", [], fail_on_enter=True)]):
            pass
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not set(threading.enumerate()) - before, [t.name for t in set(threading.enumerate()) - before]


def test_mqtt_start_that_fails_part_way_stops_its_threads(monkeypatch):
    pytest.importorskip("paho.mqtt")
    from streamsv.config import MqttConfig
    from streamsv.sinks import mqtt

    before = set(threading.enumerate())
    sink = mqtt.MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}", room="leak2"), names=[])

    started: list[str] = []

    class NoPublisher(threading.Thread):
        """Threads start as usual (paho's network thread among them) except the sink's publisher."""

        def start(self):
            if self.name == "streamsv-mqtt":
                raise RuntimeError("can't start new thread")
            started.append(self.name)
            super().start()

    monkeypatch.setattr(mqtt.threading, "Thread", NoPublisher)
    with pytest.raises(RuntimeError):
        sink.start()
    monkeypatch.undo()
    assert started, "paho's network thread was expected to start before the publisher"
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not set(threading.enumerate()) - before


def test_json_lines_sink_writes_the_compact_form():
    buf = io.StringIO()
    ev = events.decision(1.0, None, False, 0.3, None, {"a": 0.3}, 1.0, 2.0, 3.0, 0.48, 25.0)
    with JsonWriter(buf) as w:
        w.consume(ev)
        w.consume(events.speech_start(2.0))
    lines = buf.getvalue().splitlines()
    assert lines[0] == events.to_json_line(ev) and json.loads(lines[1]) == {"event": "speech_start", "t": 2.0}


def test_the_live_view_ends_its_last_frame_with_a_newline_off_a_terminal():
    # Piped or redirected, the last frame must end its line, or what is printed next joins it.
    import io

    from rich.console import Console

    out = io.StringIO()
    with LiveView(console=Console(file=out, force_terminal=False, width=80)) as view:
        view.consume({"event": "ready", "profiles": ["ada"], "threshold": 0.5})
    assert out.getvalue().endswith("╯\n")
