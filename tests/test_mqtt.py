"""MQTT for Home Assistant against a real mosquitto broker on a loopback port.

The voices are the demo's espeak-ng voices (two enrolled, one stranger); the daemon runs as a
real ``streamsv listen`` subprocess on the shipped model, so what the broker sees is what Home
Assistant would see.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import demo_household, run_cli

SR = 16000
STREAMSV = [sys.executable, "-m", "streamsv.cli"]
WAIT_S = 15.0

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                                reason="needs the mosquitto broker (apt-get install mosquitto)")


# --------------------------------------------------------------------------- helpers

def mosquitto_exe() -> str:
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto on 127.0.0.1:port with no persistence (a restart forgets retained messages)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.conf = folder / f"mosquitto-{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([mosquitto_exe(), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Subscriber:
    """Records every message under '#' with its arrival time. Returns once the broker has
    acknowledged the subscription: a message published before that, unless retained, would
    never reach it (on a busy machine the sink under test can publish first)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho

        self.messages: list[tuple[float, str, str, bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe("#", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(WAIT_S):
            self.close()
            raise AssertionError(f"the broker did not acknowledge the subscription within {WAIT_S} s")

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic, msg.payload.decode(), bool(msg.retain)))

    def all(self, topic: str | None = None) -> list[tuple[float, str, str, bool]]:
        with self._lock:
            return [m for m in self.messages if topic is None or m[1] == topic]

    def wait_for(self, pred, timeout: float = WAIT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.all():
                if pred(m):
                    return m
            time.sleep(0.02)
        raise AssertionError(f"no matching message within {timeout} s; got {[m[1:3] for m in self.all()][-10:]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained(port: int, settle_s: float = 0.5) -> dict[str, str]:
    """Every retained message a new subscriber receives."""
    sub = Subscriber(port)
    time.sleep(settle_s)
    sub.close()
    return {t: p for _, t, p, r in sub.all() if r}


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """Profiles of the demo's ada and bob (shipped model), the demo conversation and its turns."""
    import soundfile as sf

    from streamsv.demo import build_conversation

    folder = tmp_path_factory.mktemp("ha-voices")
    emb, store = demo_household(folder)
    wave, turns = build_conversation(folder)
    sf.write(folder / "conversation.wav", wave, SR)
    return {"folder": folder, "profiles": folder / "profiles", "wav": folder / "conversation.wav",
            "wave": wave, "turns": turns, "emb": emb, "store": store}


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def listen_cmd(voices, broker: Broker, room: str, *extra: str) -> list[str]:
    return [*STREAMSV, "listen", "--json", "--mqtt", broker.url, "--room", room,
            "--profiles-dir", str(voices["profiles"]), *extra]


def clean_env(tmp_path: Path) -> dict:
    env = dict(os.environ, HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("STREAMSV_CONFIG", None)
    env.pop("NOTIFY_SOCKET", None)
    return env


def right_turns(events: list[dict], turns) -> int:
    """How many turn summaries name who really spoke (the stranger must come out unknown)."""
    from streamsv.demo import turn_of

    right = 0
    for e in events:
        who = turn_of(e["t"], turns)
        if who is None:
            continue
        expect = None if who == "stranger" else who
        got = e.get("speaker") if e.get("accepted") else None
        right += got == expect
    return right


# --------------------------------------------------------------------------- a conversation

def test_conversation_one_event_per_turn_and_valid_discovery(voices, broker, tmp_path):
    sub = Subscriber(broker.port)
    try:
        res = subprocess.run(listen_cmd(voices, broker, "kitchen", "--source", str(voices["wav"])),
                             capture_output=True, text=True, timeout=120, env=clean_env(tmp_path))
        assert res.returncode == 0, res.stderr
        assert "Traceback" not in res.stderr
        sub.wait_for(lambda m: m[1] == "streamsv/kitchen/availability" and m[2] == "offline")
    finally:
        sub.close()
    events = [json.loads(line) for line in res.stdout.splitlines()]
    json_turns = [e for e in events if e["event"] == "speech_end" and e["decisions"]]
    mqtt_events = [json.loads(p) for _, t, p, _ in sub.all("streamsv/kitchen/event")]
    ends = [e for e in mqtt_events if e["phase"] == "end"]
    firsts = [e for e in mqtt_events if e["phase"] == "first"]
    # One end event per decided turn, in order, naming the same speaker as the JSON summary.
    assert [e["t"] for e in ends] == [e["t"] for e in json_turns]
    as_summary = [{"t": e["t"], "speaker": None if e["event_type"] == "unknown" else e["event_type"],
                   "accepted": e["event_type"] != "unknown"} for e in ends]
    json_right = right_turns(json_turns, voices["turns"])
    mqtt_right = right_turns(as_summary, voices["turns"])
    assert mqtt_right >= json_right >= len(voices["turns"]) - 1, (mqtt_right, json_right)
    # At most one early event per turn, and only for a confident decision.
    starts = [e["t"] for e in events if e["event"] == "speech_start"]
    turn_of_first = [max(i for i, s in enumerate(starts) if s <= f["t"]) for f in firsts]
    assert len(turn_of_first) == len(set(turn_of_first))
    assert all(f["event_type"] in ("ada", "bob") for f in firsts)
    # Availability went online during the run and offline at the clean exit.
    avail = [p for _, _, p, _ in sub.all("streamsv/kitchen/availability")]
    assert "online" in avail and avail[-1] == "offline"
    # The speaker sensor is published on change, not every hop.
    decisions = [e for e in events if e["event"] == "decision"]
    assert len(sub.all("streamsv/kitchen/speaker")) < len(decisions) / 2

    kept = retained(broker.port)
    configs = {t: json.loads(p) for t, p in kept.items() if t.startswith("homeassistant/")}
    node = "streamsv_kitchen"
    assert set(configs) == {f"homeassistant/sensor/{node}/speaker/config", f"homeassistant/event/{node}/voice/config",
                            f"homeassistant/binary_sensor/{node}/speech/config",
                            f"homeassistant/sensor/{node}/latency_p95/config", f"homeassistant/sensor/{node}/rtf/config"}
    for topic, c in configs.items():
        assert c["unique_id"].startswith(node + "_") and c["name"]
        assert c["availability_topic"] == "streamsv/kitchen/availability"
        assert c["device"]["identifiers"] == [node] and c["device"]["suggested_area"] == "kitchen"
        assert c["state_topic"].startswith("streamsv/kitchen/")
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    speaker = configs[f"homeassistant/sensor/{node}/speaker/config"]
    assert speaker["value_template"] == "{{ value_json.speaker }}"
    assert speaker["json_attributes_topic"] == speaker["state_topic"]
    assert configs[f"homeassistant/event/{node}/voice/config"]["event_types"] == ["ada", "bob", "unknown"]
    speech = configs[f"homeassistant/binary_sensor/{node}/speech/config"]
    assert (speech["payload_on"], speech["payload_off"]) == ("ON", "OFF")
    for obj in ("latency_p95", "rtf"):
        assert configs[f"homeassistant/sensor/{node}/{obj}/config"]["entity_category"] == "diagnostic"
    # Retained states: nobody speaking, availability offline, diagnostics from the final stats.
    assert kept["streamsv/kitchen/availability"] == "offline"
    assert json.loads(kept["streamsv/kitchen/speaker"])["speaker"] == "none"
    assert kept["streamsv/kitchen/speech"] == "OFF"
    final = [e for e in events if e["event"] == "stats" and e["final"]][-1]
    stats = json.loads(kept["streamsv/kitchen/stats"])
    assert stats["latency_p95_ms"] == final["latency_p95_ms"] and stats["rtf"] == final["rtf"]
    assert "streamsv/kitchen/event" not in kept            # events are not retained


# --------------------------------------------------------------------------- reload and kill -9

def test_reload_republishes_discovery_and_kill_9_fires_last_will(voices, broker, tmp_path):
    from streamsv.demo import VOICES, enrollment_audio
    from streamsv.profiles import enroll

    sub = Subscriber(broker.port)
    cmd = listen_cmd(voices, broker, "hall", "--service", "--source", str(voices["wav"]), "--realtime")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(tmp_path))
    voice_config = "homeassistant/event/streamsv_hall/voice/config"
    try:
        sub.wait_for(lambda m: m[1] == "streamsv/hall/availability" and m[2] == "online")
        assert json.loads(sub.wait_for(lambda m: m[1] == voice_config)[2])["event_types"] == ["ada", "bob", "unknown"]
        stranger = next(v for v in VOICES if v.name == "stranger")
        folder = tmp_path / "stranger"
        folder.mkdir()
        voices["store"].save(enroll(voices["emb"], "carol", enrollment_audio(folder, stranger))[0], force=True)
        os.kill(proc.pid, signal.SIGHUP)
        sub.wait_for(lambda m: m[1] == voice_config and "carol" in json.loads(m[2])["event_types"])
        online_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t, _, payload, _ = sub.wait_for(lambda m: m[1] == "streamsv/hall/availability" and m[2] == "offline")
        assert t - online_at < 5.0          # the broker fires the will as soon as the socket drops
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        sub.close()
        voices["store"].delete("carol")
    kept = retained(broker.port)
    assert kept["streamsv/hall/availability"] == "offline"
    assert json.loads(kept[voice_config])["event_types"] == ["ada", "bob", "carol", "unknown"]


# --------------------------------------------------------------------------- broker restart

def test_broker_restart_mid_stream_loses_nothing(voices, broker, tmp_path):
    """Audio arrives on stdin in three parts: broker up, broker down, broker back."""
    pcm = (np.clip(voices["wave"], -1, 1) * 32767).astype("<i2").tobytes()
    turns = voices["turns"]
    cut1 = int((turns[1][2] + 0.9) * SR) * 2       # after bob's first turn ended (and the VAD closed it)
    cut2 = int((turns[3][2] + 0.9) * SR) * 2       # after the stranger's turn
    sub = Subscriber(broker.port)
    proc = subprocess.Popen(listen_cmd(voices, broker, "den", "--source", "-"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(tmp_path))
    try:
        ends = lambda: [json.loads(p) for _, _, p, _ in sub.all("streamsv/den/event") if json.loads(p)["phase"] == "end"]
        proc.stdin.write(pcm[:cut1])
        proc.stdin.flush()
        sub.wait_for(lambda m: m[1] == "streamsv/den/event" and len(ends()) >= 2)
        broker.stop()
        sub.close()
        proc.stdin.write(pcm[cut1:cut2])                # two turns while the broker is away
        proc.stdin.flush()
        time.sleep(1.0)
        broker.start()
        sub = Subscriber(broker.port)
        sub.wait_for(lambda m: m[1] == "streamsv/den/availability" and m[2] == "online")
        sub.wait_for(lambda m: m[1] == "streamsv/den/event" and len(ends()) >= 2)   # the backlog came through
        proc.stdin.write(pcm[cut2:])
        out, err = proc.communicate(timeout=60)        # closes stdin: the stream ends
        sub.wait_for(lambda m: m[1] == "streamsv/den/availability" and m[2] == "offline")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
    assert proc.returncode == 0, err.decode()
    events = [json.loads(line) for line in out.decode().splitlines()]
    final = [e for e in events if e["event"] == "stats" and e["final"]][-1]
    assert final["drops"] == 0 and final["audio_s"] == pytest.approx(len(voices["wave"]) / SR, abs=0.05)
    json_ts = [e["t"] for e in events if e["event"] == "speech_end" and e["decisions"]]
    after_restart = [e["t"] for e in ends()]
    assert after_restart == json_ts[2:]                 # the two turns held back, then the rest
    kept = retained(broker.port)
    assert "homeassistant/event/streamsv_den/voice/config" in kept   # discovery re-published after the restart
    assert json.loads(kept["streamsv/den/stats"])["mqtt_dropped"] == 0


# --------------------------------------------------------------------------- backlog (in-process)

def test_backlog_is_bounded_drops_oldest_and_update_never_blocks(tmp_path):
    from streamsv.config import MqttConfig
    from streamsv.sinks.mqtt import MqttSink

    port = free_port()                                   # nothing listens there yet
    sink = MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{port}", room="attic", backlog=10)).start()
    try:
        worst = 0.0
        for i in range(100):
            began = time.perf_counter()
            sink.consume({"event": "speech_start", "t": float(i)})
            sink.consume({"event": "speech_end", "t": i + 0.5, "decisions": 2, "speaker": "ada", "accepted": True,
                          "score": 0.9, "scores": {"ada": 0.9}})
            worst = max(worst, time.perf_counter() - began)
        st = sink.stats()
        assert st["backlog"] == 10 and st["dropped"] == st["enqueued"] - 10 and not st["connected"]
        assert worst < 0.05
        broker = Broker(tmp_path, port).start()         # the broker appears: the newest 10 go out
        try:
            sub = Subscriber(port)
            sub.wait_for(lambda m: m[1] == "streamsv/attic/event" and json.loads(m[2])["t"] == 99.5)
            ts = [json.loads(p)["t"] for _, _, p, _ in sub.all("streamsv/attic/event")]
            assert ts[-1] == 99.5 and min(ts) > 90          # only the newest survived
            sub.close()
        finally:
            sink.close()
            broker.stop()
    finally:
        sink.close()


def test_a_turn_event_that_waited_too_long_for_the_broker_is_dropped_not_sent_late(tmp_path, caplog):
    # QA: after a 20 s outage the backlog fired "alice spoke" 30 s late; an automation would run then.
    from streamsv.config import MqttConfig
    from streamsv.sinks.mqtt import MqttSink

    def turn(t: float, who: str) -> None:
        decided = {"speaker": who, "accepted": True, "score": 0.9, "scores": {who: 0.9}}
        sink.consume({"event": "speech_start", "t": t})
        sink.consume({"event": "decision", "t": t + 1.0, **decided})
        sink.consume({"event": "speech_end", "t": t + 2.0, "decisions": 1, **decided})

    port = free_port()                                   # nothing listens there yet
    sink = MqttSink(MqttConfig(url=f"mqtt://127.0.0.1:{port}", room="attic"), names=["ada", "bob"]).start()
    sink.event_max_age_s = 0.5
    broker = Broker(tmp_path, port)
    try:
        turn(0.0, "ada")                                 # while the broker is away
        time.sleep(1.0)
        broker.start()
        sub = Subscriber(port)
        deadline = time.monotonic() + 30
        while not sink.stats()["connected"] and time.monotonic() < deadline:
            time.sleep(0.05)
        turn(10.0, "bob")                                # after it came back
        sub.wait_for(lambda m: m[1] == "streamsv/attic/event" and json.loads(m[2])["phase"] == "end")
        sent = [(json.loads(p)["event_type"], json.loads(p)["phase"]) for _, _, p, _ in sub.all("streamsv/attic/event")]
        ages = [time.time() - json.loads(p)["time"] for _, _, p, _ in sub.all("streamsv/attic/event")]
        sub.close()
        st = sink.stats()
    finally:
        sink.close()
        broker.stop()
    assert sent == [("bob", "first"), ("bob", "end")] and all(0 <= age < 10 for age in ages)
    assert st["stale"] == 2 and st["dropped"] == 2
    assert "turn events older than 0.5 s are dropped" in caplog.text


# --------------------------------------------------------------------------- settings

@pytest.mark.parametrize("args, message", [
    (["--mqtt", "mqtt://me:secret@127.0.0.1:1883"], "mqtt.url: a password in the URL"),
    (["--mqtt", "http://127.0.0.1"], "mqtt.url: expected mqtt://"),
    (["--mqtt", "mqtt://127.0.0.1:1883", "--room", "living/room"], "mqtt.room: expected a room name"),
])
def test_bad_mqtt_settings_are_one_line_errors(untrained_cli, capsys, args, message):
    code, out, err = run_cli(capsys, "listen", "--source", "nothing.wav", *args)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_password_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from streamsv.config import MqttConfig
    from streamsv.errors import StreamsvError
    from streamsv.sinks.mqtt import read_password

    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    assert read_password(MqttConfig(url="mqtt://h", password_file=str(f))) == "s3cret"
    monkeypatch.setenv("MQTT_PW", "envpw")
    assert read_password(MqttConfig(url="mqtt://h", password_env="MQTT_PW")) == "envpw"
    with pytest.raises(StreamsvError, match="no such file"):
        read_password(MqttConfig(url="mqtt://h", password_file=str(tmp_path / "missing")))
    monkeypatch.delenv("MQTT_PW")
    with pytest.raises(StreamsvError, match="not set"):
        read_password(MqttConfig(url="mqtt://h", password_env="MQTT_PW"))


def test_password_file_that_is_a_fifo_or_device_is_refused_at_once(tmp_path):
    # A FIFO with no writer used to block start-up forever (and /dev/zero to fill memory: its
    # st_size is 0); the password file is read like every other untrusted file, bounded.
    from streamsv.config import MqttConfig
    from streamsv.errors import StreamsvError
    from streamsv.sinks.mqtt import read_password

    fifo = tmp_path / "pw.fifo"
    os.mkfifo(fifo)
    outcome: list = []

    def attempt(path: str) -> None:
        try:
            read_password(MqttConfig(url="mqtt://h", password_file=path))
            outcome.append("read")
        except StreamsvError as e:
            outcome.append(str(e))

    for path in (str(fifo), "/dev/zero"):
        outcome.clear()
        worker = threading.Thread(target=attempt, args=(path,), daemon=True)
        worker.start()
        worker.join(5.0)
        assert not worker.is_alive(), f"read_password({path}) is still reading"
        assert outcome and outcome[0].startswith("mqtt.password_file: ") and "not a regular file" in outcome[0]


# --------------------------------------------------------------------------- rooms and credentials

def _turn(sink, t: float, speaker: str) -> None:
    sink.consume({"event": "speech_start", "t": t})
    sink.consume({"event": "decision", "t": t + 1, "speaker": speaker, "accepted": True, "score": 0.9,
                  "scores": {speaker: 0.9}})
    sink.consume({"event": "speech_end", "t": t + 2, "decisions": 1, "speaker": speaker, "accepted": True,
                  "score": 0.9, "scores": {speaker: 0.9}})


def test_two_rooms_on_one_broker_stay_apart(broker):
    from streamsv.config import MqttConfig
    from streamsv.sinks.mqtt import MqttSink

    sub = Subscriber(broker.port)
    kitchen = MqttSink(MqttConfig(url=broker.url, room="kitchen"), names=["ada", "bob"]).start()
    office = MqttSink(MqttConfig(url=broker.url, room="office"), names=["bob"]).start()
    try:
        _turn(kitchen, 0.0, "ada")
        _turn(office, 0.0, "bob")
        for room, who in (("kitchen", "ada"), ("office", "bob")):
            sub.wait_for(lambda m: m[1] == f"streamsv/{room}/event" and json.loads(m[2])["phase"] == "end")
            events = [json.loads(p) for _, _, p, _ in sub.all(f"streamsv/{room}/event")]
            assert {e["event_type"] for e in events} == {who} and {e["room"] for e in events} == {room}
    finally:
        kitchen.close()
        office.close()
        sub.close()
    configs = {t: json.loads(p) for t, p in retained(broker.port).items() if t.endswith("/config")}
    assert len(configs) == 10
    assert len({c["unique_id"] for c in configs.values()}) == 10
    devices = {c["device"]["identifiers"][0]: c["device"]["name"] for c in configs.values()}
    assert devices == {"streamsv_kitchen": "streamsv kitchen", "streamsv_office": "streamsv office"}
    voice = {c["device"]["identifiers"][0]: c["event_types"] for c in configs.values() if "event_types" in c}
    assert voice == {"streamsv_kitchen": ["ada", "bob", "unknown"], "streamsv_office": ["bob", "unknown"]}


def test_broker_credentials_from_a_password_file(tmp_path):
    from streamsv.config import MqttConfig
    from streamsv.sinks.mqtt import MqttSink

    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("needs mosquitto_passwd")
    users = tmp_path / "users"
    subprocess.run([passwd, "-b", "-c", str(users), "streamsv", "s3cret"], check=True, capture_output=True)
    users.chmod(0o600)
    b = Broker(tmp_path)
    # As root, mosquitto drops to its own user unless told not to, and could not read a 0600 file here.
    stay = "user root\n" if os.geteuid() == 0 else ""
    b.conf.write_text(f"listener {b.port} 127.0.0.1\nallow_anonymous false\npassword_file {users}\n"
                      f"persistence false\n{stay}")
    b.start()
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    try:
        good = MqttSink(MqttConfig(url=f"mqtt://streamsv@127.0.0.1:{b.port}", room="porch", password_file=str(secret)))
        bad = MqttSink(MqttConfig(url=b.url, room="shed", username="streamsv"))
        good.start()
        bad.start()
        deadline = time.monotonic() + WAIT_S
        while not good.stats()["connected"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert good.stats()["connected"] and not bad.stats()["connected"]   # no password: refused
        good.close()
        bad.close()
    finally:
        b.stop()


def test_tls_with_a_private_ca(tmp_path):
    """mqtts:// against a mosquitto TLS listener whose certificate a throw-away CA signed."""
    from streamsv.config import MqttConfig
    from streamsv.errors import StreamsvError
    from streamsv.sinks.mqtt import MqttSink

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs openssl to make certificates")

    def ssl(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp_path)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")      # fast to generate
    ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=streamsv test CA")
    ssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "san.ext")
    b = Broker(tmp_path)
    stay = "user root\n" if os.geteuid() == 0 else ""
    b.conf.write_text(f"listener {b.port} 127.0.0.1\nallow_anonymous true\npersistence false\n{stay}"
                      f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}\n")
    b.start()
    try:
        sink = MqttSink(MqttConfig(url=f"mqtts://127.0.0.1:{b.port}", room="garage", ca_file=str(tmp_path / "ca.pem")))
        sink.start()
        deadline = time.monotonic() + WAIT_S
        while not sink.stats()["connected"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.stats()["connected"]
        sink.close()
        untrusted = MqttSink(MqttConfig(url=f"mqtts://127.0.0.1:{b.port}", room="shed"))   # the system CAs
        untrusted.start()
        time.sleep(1.0)
        assert not untrusted.stats()["connected"]
        untrusted.close()
    finally:
        b.stop()
    with pytest.raises(StreamsvError, match="mqtt.ca_file"):
        MqttSink(MqttConfig(url="mqtts://127.0.0.1:1", ca_file=str(tmp_path / "missing.pem"))).start()


def test_a_speaker_change_inside_a_turn_fires_the_new_voices_first_event(broker):
    from streamsv.config import MqttConfig
    from streamsv.sinks.mqtt import MqttSink

    sub = Subscriber(broker.port)
    sink = MqttSink(MqttConfig(url=broker.url, room="hall"), names=["ada", "bob"]).start()
    try:
        decision = {"event": "decision", "accepted": True, "score": 0.9}
        sink.consume({"event": "speech_start", "t": 0.0})
        sink.consume({**decision, "t": 1.0, "speaker": "ada", "scores": {"ada": 0.9}})
        sink.consume({**decision, "t": 1.5, "speaker": "ada", "scores": {"ada": 0.9}})
        sink.consume({"event": "speaker_change", "t": 2.5, "at": 2.0, "similarity": 0.1})
        sink.consume({**decision, "t": 3.0, "speaker": "bob", "scores": {"bob": 0.9}})
        sink.consume({"event": "speech_end", "t": 3.5, "decisions": 3, "speaker": "bob", "accepted": True,
                      "score": 0.9, "scores": {"bob": 0.9}})
        sub.wait_for(lambda m: m[1] == "streamsv/hall/event" and json.loads(m[2])["phase"] == "end")
        firsts = [json.loads(p)["event_type"] for _, _, p, _ in sub.all("streamsv/hall/event")
                  if json.loads(p)["phase"] == "first"]
        assert firsts == ["ada", "bob"]
    finally:
        sink.close()
        sub.close()


def test_the_last_attribute_keeps_the_last_decided_turns_speaker(broker):
    # `last` is the last turn's speaker while the next one speaks, and after a turn too short to
    # decide (a cough): Home Assistant reads it to know who spoke last.
    from streamsv.config import MqttConfig
    from streamsv.sinks.mqtt import MqttSink

    sub = Subscriber(broker.port)
    sink = MqttSink(MqttConfig(url=broker.url, room="hall"), names=["ada", "bob"]).start()
    try:
        decision = {"event": "decision", "accepted": True, "score": 0.9}
        end = {"event": "speech_end", "accepted": True, "score": 0.9}
        sink.consume({"event": "speech_start", "t": 0.0})
        sink.consume({**decision, "t": 1.0, "speaker": "ada", "scores": {"ada": 0.9}})
        sink.consume({**end, "t": 1.5, "decisions": 1, "speaker": "ada", "scores": {"ada": 0.9}})
        sink.consume({"event": "speech_start", "t": 3.0})
        sink.consume({**decision, "t": 4.0, "speaker": "bob", "scores": {"bob": 0.9}})
        sink.consume({**end, "t": 5.5, "decisions": 1, "speaker": "bob", "scores": {"bob": 0.9}})
        sink.consume({"event": "speech_start", "t": 7.0})
        sink.consume({"event": "speech_end", "t": 7.3, "decisions": 0})   # a cough: nothing decided
        sub.wait_for(lambda m: m[1] == "streamsv/hall/speaker" and json.loads(m[2]).get("score") is None
                     and json.loads(m[2])["last"] == "bob")
        states = [json.loads(p) for _, _, p, _ in sub.all("streamsv/hall/speaker")]
        assert [(s["speaker"], s["last"]) for s in states][-4:] == [("none", "ada"), ("bob", "ada"), ("none", "bob"),
                                                                   ("none", "bob")]
    finally:
        sink.close()
        sub.close()


def test_a_continuing_segment_fires_no_second_first_event(broker):
    # change.bridge_s: a segment that continues the voice is the same turn for automations.
    from streamsv.config import MqttConfig
    from streamsv.sinks.mqtt import MqttSink

    sub = Subscriber(broker.port)
    sink = MqttSink(MqttConfig(url=broker.url, room="hall"), names=["ada", "bob"]).start()
    try:
        decision = {"event": "decision", "accepted": True, "score": 0.9, "speaker": "ada", "scores": {"ada": 0.9}}
        end = {"event": "speech_end", "decisions": 1, "speaker": "ada", "accepted": True, "score": 0.9,
               "scores": {"ada": 0.9}}
        sink.consume({"event": "speech_start", "t": 0.0})
        sink.consume({**decision, "t": 1.0})
        sink.consume({**end, "t": 1.2})
        sink.consume({"event": "speech_start", "t": 1.5, "continues": True, "gap_s": 0.3})
        sink.consume({**decision, "t": 2.5})
        sink.consume({**end, "t": 3.0})
        sink.consume({"event": "speech_start", "t": 4.5})
        sink.consume({**decision, "t": 5.5})
        sink.consume({**end, "t": 6.0, "start": 4.5})
        sub.wait_for(lambda m: m[1] == "streamsv/hall/event" and json.loads(m[2])["phase"] == "end"
                     and json.loads(m[2])["t"] == 6.0)
        firsts = [json.loads(p)["t"] for _, _, p, _ in sub.all("streamsv/hall/event") if json.loads(p)["phase"] == "first"]
        assert firsts == [1.0, 5.5]
    finally:
        sink.close()
        sub.close()


def _ready(names: list[str]) -> dict:
    from streamsv import events

    return events.ready(0.0, "test", SR, "fingerprint", 256, names, 0.56, None, 0.05, 0.1, 3.0, False)


def test_enrolled_names_come_from_the_ready_event(broker):
    # open_sinks makes the MQTT sink before the pipeline has read the profiles: discovery waits
    # for the ready event's names instead of announcing a voice entity with no names.
    from streamsv.config import MqttConfig
    from streamsv.sinks.mqtt import MqttSink

    sub = Subscriber(broker.port)
    voice_config = "homeassistant/event/streamsv_porch/voice/config"
    sink = MqttSink(MqttConfig(url=broker.url, room="porch")).start()
    try:
        sub.wait_for(lambda m: m[1] == "streamsv/porch/availability" and m[2] == "online")
        time.sleep(0.3)
        assert not sub.all(voice_config)
        sink.consume(_ready(["bob", "ada"]))
        assert json.loads(sub.wait_for(lambda m: m[1] == voice_config)[2])["event_types"] == ["ada", "bob", "unknown"]
        # Ready before the connection is up: the configs go out once, not once queued and once on connect.
        early = MqttSink(MqttConfig(url=broker.url, room="porch2"))
        early.start()
        early.consume(_ready(["ada"]))
        sub.wait_for(lambda m: m[1] == "streamsv/porch2/availability" and m[2] == "online")
        early.close()
        sub.wait_for(lambda m: m[1] == "streamsv/porch2/availability" and m[2] == "offline")
        assert len(sub.all("homeassistant/event/streamsv_porch2/voice/config")) == 1
    finally:
        sink.close()
        sub.close()
    assert len(sub.all(voice_config)) == 1
