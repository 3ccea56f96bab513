"""Home Assistant over MQTT: discovery, availability and who is speaking, one device per room.

``MqttSink`` consumes the pipeline's events beside the JSON/live output (a sink: see
streamsv/sinks/__init__.py) and never blocks the audio loop: ``consume`` only appends to a
bounded backlog under a lock. A publisher thread hands the backlog to paho while connected, with
at most ``MAX_INFLIGHT`` unacknowledged messages; paho's own network thread reconnects with
backoff. While the broker is away the backlog keeps the newest ``backlog`` messages and counts
the oldest it drops. On every (re)connect the discovery configs, ``online`` and the current
states are published again (a restarted broker without persistence has forgotten them). The
enrolled names (the discovery's event types) come from the ``ready`` and ``profiles_reloaded``
events unless given; discovery waits for them.

Topics, with ``<p>`` = ``<topic_prefix>/<room>``:

  <p>/availability  online | offline                   retained; offline is also the last will
  <p>/speaker       {"speaker": name|unknown|none, "score", "scores", "last"}   retained, on change
  <p>/speech        ON | OFF                           retained, on change
  <p>/event         {"event_type": name|unknown, "score", "phase": first|end, "room", "t", "time"}
                    once per turn at its first confident decision and once at its end (``time``:
                    Unix seconds when it was made). One still queued here ``EVENT_MAX_AGE_S``
                    later (the broker away) is dropped, not sent late; the few already handed to
                    paho when a connection silently died are re-sent at the reconnect (QoS 1:
                    a broker restart loses none), so a consumer that must act at once reads ``time``
  <p>/stats         {"latency_p95_ms", "rtf", "drops", "mqtt_dropped"}   retained, on change

Discovery: ``<discovery_prefix>/<component>/streamsv_<room>/<object>/config``, retained.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from .. import __version__
from ..errors import StreamsvError, shown
from ..safeio import read_bounded
from ..retry import BACKOFF_MAX_S, BACKOFF_START_S

log = logging.getLogger("streamsv.mqtt")

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
QOS = 1                       # at least once: paho re-sends unacknowledged messages after a reconnect
KEEPALIVE_S = 30
MAX_INFLIGHT = 50             # unacknowledged messages handed to paho; bounds paho's own queue
PUMP_TICK_S = 0.2
RESEND_WAIT_S = 2.0           # after a reconnect, wait this long for paho's re-sends before the snapshot
CLOSE_FLUSH_S = 1.0           # how long close() waits for the backlog and "offline" to reach the broker
                              # (short: a service must stop within 2 s of SIGTERM)
EVENT_MAX_AGE_S = 10.0        # a turn event still queued this long after its turn is dropped, not sent
                              # late: an automation fired by "alice spoke" must not run minutes after
MAX_PASSWORD_BYTES = 4096
ONLINE, OFFLINE = "online", "offline"
UNKNOWN = "unknown"           # a voice that matched no profile
NO_SPEAKER = "none"           # nobody is speaking
SPEECH_ON, SPEECH_OFF = "ON", "OFF"
ROOM_CHARS = re.compile(r"[^A-Za-z0-9_-]")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None


def parse_mqtt_url(url: str) -> Broker:
    """``mqtt://[user@]host[:port]`` or ``mqtts://...`` (TLS); a password in the URL is refused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {url[:60]!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url[:60]!r}")
    if parts.password is not None:
        raise ValueError("a password in the URL would show in the process list; "
                         "use mqtt.password_file or mqtt.password_env")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"unexpected path or query in {url[:60]!r}")
    tls = parts.scheme == "mqtts"
    return Broker(parts.hostname, port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT), tls, parts.username)


def default_room() -> str:
    """This machine's host name as a room name (letters, digits, _ and - only)."""
    return ROOM_CHARS.sub("_", socket.gethostname().split(".")[0])[:64] or "default"


def read_password(settings: Any) -> str | None:
    """The broker password from ``password_file`` or ``password_env`` (never from the command line)."""
    if settings.password_file:
        path = Path(settings.password_file).expanduser()
        label = f"mqtt.password_file: {shown(path)}"
        # Bounded and regular files only: a FIFO would block start-up, /dev/zero would fill memory.
        raw, _ = read_bounded(path, MAX_PASSWORD_BYTES, label)
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise StreamsvError(f"{label}: not UTF-8 text") from None
    if settings.password_env:
        value = os.environ.get(settings.password_env)
        if value is None:
            raise StreamsvError(f"mqtt.password_env: ${settings.password_env} is not set")
        return value
    return None


@dataclass(frozen=True)
class Topics:
    """Every topic of one room: state topics under ``<topic_prefix>/<room>/``, discovery configs
    under ``<discovery_prefix>/<component>/streamsv_<room>/``."""

    base: str
    discovery_prefix: str
    node: str                 # the discovery node id, streamsv_<room>
    availability: str
    speaker: str
    speech: str
    event: str
    stats: str

    @classmethod
    def of(cls, topic_prefix: str, discovery_prefix: str, room: str) -> "Topics":
        base = f"{topic_prefix}/{room}"
        states = {name: f"{base}/{name}" for name in ("availability", "speaker", "speech", "event", "stats")}
        return cls(base, discovery_prefix, f"streamsv_{room}", **states)

    def config(self, component: str, obj: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node}/{obj}/config"


# --------------------------------------------------------------------------- discovery (pure)


def discovery_messages(topics: Topics, room: str, names: list[str]) -> list[tuple[str, str]]:
    """(topic, JSON payload) of every Home Assistant discovery config for one room."""
    device = {"identifiers": [topics.node], "name": f"streamsv {room}", "manufacturer": "streamsv",
              "model": "speaker verification", "sw_version": __version__, "suggested_area": room}
    common = {"availability_topic": topics.availability, "payload_available": ONLINE,
              "payload_not_available": OFFLINE, "device": device,
              "origin": {"name": "streamsv", "sw_version": __version__}}

    def entity(obj: str, **fields: Any) -> dict:
        return {"unique_id": f"{topics.node}_{obj}", **fields, **common}

    configs = {
        ("sensor", "speaker"): entity(
            "speaker", name="Speaker", icon="mdi:account-voice", state_topic=topics.speaker,
            value_template="{{ value_json.speaker }}", json_attributes_topic=topics.speaker),
        ("event", "voice"): entity(
            "voice", name="Voice", icon="mdi:account-voice", state_topic=topics.event,
            event_types=sorted(set(names)) + [UNKNOWN]),
        ("binary_sensor", "speech"): entity(
            "speech", name="Speech", device_class="sound", state_topic=topics.speech,
            payload_on=SPEECH_ON, payload_off=SPEECH_OFF),
        ("sensor", "latency_p95"): entity(
            "latency_p95", name="Latency p95", state_topic=topics.stats,
            value_template="{{ value_json.latency_p95_ms }}", unit_of_measurement="ms",
            device_class="duration", state_class="measurement", entity_category="diagnostic"),
        ("sensor", "rtf"): entity(
            "rtf", name="Real-time factor", state_topic=topics.stats, value_template="{{ value_json.rtf }}",
            state_class="measurement", entity_category="diagnostic", icon="mdi:speedometer"),
    }
    return [(topics.config(c, o), _json(p)) for (c, o), p in configs.items()]


def _json(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def _label(event: dict) -> str:
    return event["speaker"] if event.get("accepted") and event.get("speaker") else UNKNOWN


# --------------------------------------------------------------------------- the sink


@dataclass
class _Message:
    topic: str
    payload: str
    retain: bool
    expires: float | None = None  # time.monotonic() after which it is not worth sending (turn events)


class MqttSink:
    """Publish pipeline events to Home Assistant; ``consume`` never blocks (see the module doc)."""

    level_interval_s = 0.0      # the input level is not published

    def __init__(self, settings: Any, names: list[str] | None = None, client_id: str | None = None) -> None:
        self.broker = parse_mqtt_url(settings.url)
        self.settings = settings
        self.room = settings.room or default_room()
        self.topics = Topics.of(settings.topic_prefix, settings.discovery_prefix, self.room)
        self.tls = settings.tls or self.broker.tls
        self.username = settings.username or self.broker.username
        self.password = read_password(settings)
        self.client_id = client_id or f"streamsv-{self.room}-{os.getpid()}"
        self.backlog_max = settings.backlog
        self.event_max_age_s = EVENT_MAX_AGE_S
        self.names: list[str] | None = sorted(names) if names is not None else None   # None: not known yet
        # Counters (read by tests, the bench and the stats topic).
        self.enqueued = 0
        self.dropped = 0              # never sent: pushed out of a full backlog, or a turn event gone stale
        self.stale = 0                # of those, the stale turn events
        self.published = 0
        self.connects = 0
        self._backlog: deque[_Message] = deque()
        self._retained: dict[str, str] = {}   # latest state per retained topic, re-sent after a reconnect
        self._inflight: set[int] = set()
        self._acked_early: set[int] = set()
        self._cond = threading.Condition()
        self._connected = False
        self._fresh = False
        self._stale_told = False
        self._stop = False
        self._turn_first_sent = False
        self._speaker_label = NO_SPEAKER
        self._last_turn: str | None = None   # the speaker of the last decided turn: the `last` attribute
        self._refusal: str | None = None
        self._client = None
        self._pump_thread: threading.Thread | None = None
        self._set_state(self.topics.speaker, _json({"speaker": NO_SPEAKER, "score": None, "scores": {}, "last": None}))
        self._set_state(self.topics.speech, SPEECH_OFF)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "MqttSink":
        """Connect in the background (returns at once; a broker that is down is retried with backoff).
        A start that fails part-way stops the threads it had started before raising."""
        try:
            return self._start()
        except BaseException:
            self._stop_threads()
            raise

    def _start(self) -> "MqttSink":
        import paho.mqtt.client as paho

        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=paho.MQTTv311, clean_session=True)
        client.will_set(self.topics.availability, OFFLINE, qos=QOS, retain=True)
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            try:
                client.tls_set(ca_certs=self.settings.ca_file)
            except (OSError, ValueError) as exc:      # ssl.SSLError is an OSError
                raise StreamsvError(f"mqtt.ca_file: {self.settings.ca_file}: cannot use it for TLS ({exc})") from None
        self._client = client
        client.reconnect_delay_set(BACKOFF_START_S, BACKOFF_MAX_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        log.info("mqtt: publishing room %r to %s:%d%s", self.room, self.broker.host, self.broker.port,
                 " (TLS)" if self.tls else "")
        client.connect_async(self.broker.host, self.broker.port, KEEPALIVE_S)
        client.loop_start()
        pump = threading.Thread(target=self._pump, name="streamsv-mqtt", daemon=True)
        pump.start()
        self._pump_thread = pump     # only once started: joining a thread that never started raises
        return self

    def close(self, timeout: float = CLOSE_FLUSH_S) -> None:
        """Publish ``offline``, wait up to ``timeout`` for the backlog to reach the broker, disconnect."""
        if self._client is None:
            return
        self._set_state(self.topics.availability, OFFLINE)
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._backlog or self._inflight) and self._connected and time.monotonic() < deadline:
                self._cond.wait(0.02)
            self._stop = True
            self._cond.notify_all()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=1.0)
            self._pump_thread = None
        if self._backlog or self._inflight:
            log.warning("mqtt: %d messages not delivered at exit", len(self._backlog) + len(self._inflight))
        if self.dropped > self.stale:
            log.warning("mqtt: %d messages pushed out of the full backlog (%d) while the broker was away",
                        self.dropped - self.stale, self.backlog_max)
        if self.stale:
            log.warning("mqtt: %d turn events not sent: older than %g s when the broker could take them",
                        self.stale, self.event_max_age_s)
        self._client.disconnect()
        self._stop_threads()

    def _stop_threads(self) -> None:
        """Stop the publisher thread and paho's network thread (either may not have started)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout=1.0)
            self._pump_thread = None
        if self._client is not None:
            self._client.loop_stop()
            self._client = None

    def __enter__(self) -> "MqttSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict:
        with self._cond:
            return {"connected": self._connected, "backlog": len(self._backlog), "inflight": len(self._inflight),
                    "enqueued": self.enqueued, "dropped": self.dropped, "stale": self.stale, "published": self.published,
                    "connects": self.connects}

    # ------------------------------------------------------------------ events in (audio loop's thread)

    def consume(self, event: Mapping[str, Any]) -> None:
        """Turn one pipeline event into the messages it changes; cheap and non-blocking."""
        kind = event.get("event")
        if kind == "ready":
            names = sorted(event.get("profiles", []))
            if names != self.names:
                self._set_names(names)
        elif kind == "speech_start":
            if not event.get("continues"):   # a bridged gap: the same voice's turn goes on, no second "first"
                self._turn_first_sent = False
            self._set_state(self.topics.speech, SPEECH_ON)
        elif kind == "speaker_change":  # a new voice inside the segment: its first confident decision fires too
            self._turn_first_sent = False
        elif kind == "decision":
            label = _label(event)
            if label != UNKNOWN and not self._turn_first_sent:
                self._turn_first_sent = True
                self._fire(label, event, "first")
            if label != self._speaker_label:
                self._speaker_label = label
                self._set_state(self.topics.speaker, _json({"speaker": label, "score": event.get("score"),
                                                            "scores": event.get("scores", {}), "last": self._last_turn}))
        elif kind == "speech_end":
            self._speaker_label = NO_SPEAKER
            self._set_state(self.topics.speech, SPEECH_OFF)
            if event.get("decisions"):
                # A turn too short to decide (a cough, a door) keeps the last decided turn's speaker.
                self._last_turn = _label(event)
                self._fire(self._last_turn, event, "end")
                self._set_state(self.topics.speaker, _json({"speaker": NO_SPEAKER, "score": event.get("score"),
                                                            "scores": event.get("scores", {}), "last": self._last_turn}))
            else:
                self._set_state(self.topics.speaker, _json({"speaker": NO_SPEAKER, "score": None, "scores": {},
                                                            "last": self._last_turn}))
        elif kind == "stats":
            self._set_state(self.topics.stats, _json({"latency_p95_ms": event.get("latency_p95_ms"),
                                                      "rtf": event.get("rtf"), "drops": event.get("drops"),
                                                      "mqtt_dropped": self.dropped}))
        elif kind == "profiles_reloaded":
            self._set_names(sorted(event.get("profiles", [])))

    def _set_names(self, names: list[str]) -> None:
        """New enrolled names: the discovery configs again (their event types list the names)."""
        with self._cond:
            self.names = names
        for topic, payload in discovery_messages(self.topics, self.room, names):
            self._enqueue(_Message(topic, payload, True))

    def _fire(self, label: str, event: dict, phase: str) -> None:
        payload = {"event_type": label, "score": event.get("score"), "phase": phase, "room": self.room,
                   "t": event.get("t"), "time": round(time.time(), 3)}
        if "confidence" in event:
            payload["confidence"] = event["confidence"]
        self._enqueue(_Message(self.topics.event, _json(payload), False, time.monotonic() + self.event_max_age_s))

    def _set_state(self, topic: str, payload: str) -> None:
        """Publish a retained state, only when it changed."""
        with self._cond:
            if self._retained.get(topic) == payload:
                return
            self._retained[topic] = payload
        self._enqueue(_Message(topic, payload, True))

    def _enqueue(self, msg: _Message) -> None:
        with self._cond:
            if len(self._backlog) >= self.backlog_max:
                self._backlog.popleft()
                self.dropped += 1
            self._backlog.append(msg)
            self.enqueued += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            if str(reason_code) != self._refusal:      # once per reason, not at every retry
                self._refusal = str(reason_code)
                log.warning("mqtt: broker %s:%d refused the connection: %s", self.broker.host, self.broker.port,
                            reason_code)
            return
        self._refusal = None
        with self._cond:
            self._connected = True
            self._fresh = True
            self._stale_told = False
            self.connects += 1
            self._cond.notify_all()
        log.info("mqtt: connected to %s:%d", self.broker.host, self.broker.port)

    def _on_connect_fail(self, client, userdata) -> None:
        if self._refusal != "unreachable":                # once, not at every retry
            self._refusal = "unreachable"
            log.warning("mqtt: cannot reach the broker at %s:%d; retrying with backoff (up to %g s apart)",
                        self.broker.host, self.broker.port, BACKOFF_MAX_S)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            self._cond.notify_all()
        if was and not self._stop:
            log.warning("mqtt: lost the broker (%s); reconnecting with backoff, keeping up to %d messages",
                        reason_code, self.backlog_max)

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        # paho may call this while holding its own message lock: only touch ours here.
        with self._cond:
            if mid in self._inflight:
                self._inflight.discard(mid)
            else:
                self._acked_early.add(mid)
            self._cond.notify_all()

    # ------------------------------------------------------------------ publisher thread

    def _pump(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not (self._connected and (
                        self._fresh or (self._backlog and len(self._inflight) < MAX_INFLIGHT))):
                    self._cond.wait(PUMP_TICK_S)
                if self._stop:
                    return
                fresh, self._fresh = self._fresh, False
                batch = [] if fresh else [self._backlog.popleft()]
                if batch and batch[0].expires is not None and time.monotonic() > batch[0].expires:
                    self.dropped += 1
                    self.stale += 1
                    if not self._stale_told:                # once a connection
                        self._stale_told = True
                        log.warning("mqtt: turn events older than %g s are dropped, not sent late (the broker "
                                    "was away)", self.event_max_age_s)
                    continue
            if fresh:
                batch = self._after_connect()
            for msg in batch:
                self._publish(msg)

    def _after_connect(self) -> list[_Message]:
        """Discovery, ``online`` and every current state, after paho's re-sends are acknowledged."""
        deadline = time.monotonic() + RESEND_WAIT_S
        with self._cond:
            while self._inflight and self._connected and time.monotonic() < deadline:
                self._cond.wait(0.02)
            if self._inflight:
                log.warning("mqtt: %d messages unacknowledged after reconnecting; not waiting for them", len(self._inflight))
                self._inflight.clear()
                self._acked_early.clear()
            # A state or discovery config still in the backlog goes out from there, in order;
            # re-send only the others. Without the names yet, discovery waits for the ready event.
            queued = {m.topic for m in self._backlog}
            states = [_Message(t, p, True) for t, p in self._retained.items()
                      if t != self.topics.availability and t not in queued]
            names = self.names
        discovery = [] if names is None else [
            _Message(t, p, True) for t, p in discovery_messages(self.topics, self.room, names) if t not in queued]
        return discovery + [_Message(self.topics.availability, ONLINE, True)] + states

    def _publish(self, msg: _Message) -> None:
        client = self._client
        if client is None:
            return
        info = client.publish(msg.topic, msg.payload, qos=QOS, retain=msg.retain)
        with self._cond:
            self.published += 1
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._inflight.add(info.mid)
