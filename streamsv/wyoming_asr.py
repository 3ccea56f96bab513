"""A speaker-aware Wyoming ASR proxy for Home Assistant's Assist pipeline.

``streamsv wyoming --uri tcp://0.0.0.0:10500 --asr-uri tcp://ASR:10300``: Home Assistant (or a
satellite) talks to this server as if it were the ASR. Each request's ``transcribe``,
``audio-start``, ``audio-chunk`` and ``audio-stop`` go on to the real ASR unchanged, while the same
audio streams through a streamsv pipeline (VAD, rolling embedding, decisions) in a worker thread,
as it arrives: there is no buffering before verification starts. When the ASR's ``transcript``
comes back it is returned with the speaker in its ``context``::

    {"speaker": {"name": "alice" | null, "accepted": true, "score": 0.81, "refused": false}}

and, unless ``--no-prefix``, the text starts with ``[alice] `` (``[unknown] `` for a voice that
matched no profile). ``--unknown refuse`` returns an empty transcript for unknown voices instead.
``describe`` is answered with this proxy's info (the ASR's models and languages, when it can be
reached). Every connection has its own pipeline, so several clients are served at once; the
profiles and the confidence calibration are read once per server (and again on SIGHUP), not per
request.

Incoming events are parsed with bounds (header line, data and payload sizes, audio format): a
client cannot make the proxy allocate more than ``MAX_PAYLOAD_BYTES`` per event.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

import numpy as np

from . import __version__
from .errors import StreamsvError
from .events import SPEECH_END
from .features import SAMPLE_RATE
from .sources import Source

log = logging.getLogger("streamsv.wyoming")

UNKNOWN_POLICIES = ("tag", "refuse")
UNKNOWN_TAG = "unknown"
MAX_LINE_BYTES = 64 * 1024            # an event's JSON header line
MAX_DATA_BYTES = 64 * 1024            # its extra JSON data
MAX_PAYLOAD_BYTES = 1 << 20           # its binary payload (an audio chunk is a few kB)
MAX_VERIFY_S = 30.0                   # audio verified per request; the ASR still gets all of it
QUEUE_CHUNKS = 4000                   # chunks waiting for the verifier (it runs ~100x real time)
UPSTREAM_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 60.0                 # a client silent this long is gone (a satellite lost power):
                                      # its connection, verifier thread and ASR connection are closed
DESCRIBE_TIMEOUT_S = 3.0
RATE_RANGE = (8000, 48000)
WIDTHS = (1, 2, 4)
MAX_CHANNELS = 8
ATTRIBUTION_URL = "https://github.com/streamsv/streamsv"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ProxySettings:
    uri: str                      # where this proxy listens: tcp://host:port or unix://path
    asr_uri: str                  # the real ASR
    unknown: str = "tag"          # "tag": pass the transcript on, speaker unknown; "refuse": empty transcript
    prefix: bool = True           # "[name] " before the text


def check_uri(uri: str, what: str) -> str:
    """A Wyoming URI the library can open: tcp://host:port or unix://path."""
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme == "tcp" and parts.hostname and port:
        return uri
    if parts.scheme == "unix" and parts.path:
        return uri
    raise StreamsvError(f"{what}: expected tcp://HOST:PORT or unix://PATH, got {uri[:80]!r}")


# --------------------------------------------------------------------------- bounded event reading


class BadEvent(Exception):
    pass


async def read_event_bounded(reader: asyncio.StreamReader):
    """``wyoming.event.async_read_event`` with limits on every length a client declares; None at EOF."""
    from wyoming.event import Event

    try:
        line = await reader.readline()
    except ValueError:                       # asyncio's line limit: a header line without an end
        raise BadEvent(f"header line longer than {MAX_LINE_BYTES} bytes") from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):     # RecursionError: "[[[[..." nested past the parser's limit
        raise BadEvent("header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise BadEvent("header has no event type")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise BadEvent("event data is not an object")
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    if data_length:
        try:
            extra = json.loads(await reader.readexactly(data_length))
        except (ValueError, RecursionError):
            raise BadEvent("event data is not JSON") from None
        if not isinstance(extra, dict):
            raise BadEvent("event data is not an object")
        data.update(extra)
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=header["type"], data=data, payload=payload)


def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise BadEvent(f"{key} {str(value)[:20]} outside 0..{limit}")
    return value


def _check_format(data: dict) -> tuple[int, int, int]:
    rate, width, channels = data.get("rate"), data.get("width"), data.get("channels")
    ok = (isinstance(rate, int) and RATE_RANGE[0] <= rate <= RATE_RANGE[1] and width in WIDTHS
          and isinstance(channels, int) and 1 <= channels <= MAX_CHANNELS)
    if not ok:
        raise BadEvent(f"unsupported audio format rate={rate!r} width={width!r} channels={channels!r}")
    return rate, width, channels


# --------------------------------------------------------------------------- verification


class QueueSource(Source):
    """Audio handed over from the event loop; ``end()`` finishes the stream."""

    name = "wyoming"

    def __init__(self, max_chunks: int = QUEUE_CHUNKS) -> None:
        super().__init__()
        self._q: queue.Queue = queue.Queue(maxsize=max_chunks)

    def put(self, chunk: np.ndarray) -> None:
        try:
            self._q.put_nowait(chunk)
        except queue.Full:                  # never block the event loop: count what the verifier missed
            self.stats.drops += 1
            self.stats.dropped_s += len(chunk) / SAMPLE_RATE

    def end(self) -> None:
        while True:
            try:
                self._q.put(None, timeout=0.1)
                return
            except queue.Full:
                try:
                    self._q.get_nowait()        # make room for the end marker
                except queue.Empty:
                    pass

    def chunks(self, stop: threading.Event | None = None) -> Iterator[tuple[np.ndarray, float]]:
        while True:
            chunk = self._q.get()
            if chunk is None:
                return
            self._count(chunk)
            yield chunk, time.monotonic()


@dataclass(frozen=True)
class Verdict:
    name: str | None
    accepted: bool
    score: float | None
    speech_s: float


def verdict_of(events: list[dict]) -> Verdict:
    """The request's speaker: the summary of its longest decided speech segment."""
    turns = [e for e in events if e.get("event") == SPEECH_END and e.get("decisions")]
    if not turns:
        return Verdict(None, False, None, 0.0)
    best = max(turns, key=lambda e: e.get("duration_s") or 0.0)
    return Verdict(best.get("speaker") if best.get("accepted") else None, bool(best.get("accepted")),
                   best.get("score"), float(best.get("duration_s") or 0.0))


class Verifier:
    """One request's speaker verification: a Pipeline in a worker thread fed as audio arrives."""

    def __init__(self, proxy: "Proxy", fmt: tuple[int, int, int]) -> None:
        from wyoming.audio import AudioChunkConverter

        from .pipeline import Pipeline

        self.source = QueueSource()
        # The server's profiles and rule as they are now: a reload mid-request applies to the next one.
        self.pipeline = Pipeline(proxy.embedder, self.source, proxy.cfg, proxy.centroids, rule=proxy.rule)
        self.converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
        self.rate, self.width, self.channels = fmt
        self.fed_s = 0.0
        self.events: list[dict] = []
        self._thread = threading.Thread(target=self._run, name="streamsv-wyoming-verify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for ev in self.pipeline.run():
            self.events.append(ev)

    def push(self, pcm: bytes) -> None:
        from wyoming.audio import AudioChunk

        if self.fed_s >= MAX_VERIFY_S or not pcm:
            return
        usable = len(pcm) - len(pcm) % (self.width * self.channels)
        chunk = self.converter.convert(AudioChunk(rate=self.rate, width=self.width, channels=self.channels,
                                                  audio=pcm[:usable]))
        samples = np.frombuffer(chunk.audio, dtype="<i2").astype(np.float32) / 32768.0
        self.fed_s += len(samples) / SAMPLE_RATE
        self.source.put(samples)

    async def finish(self) -> Verdict:
        self.source.end()
        await asyncio.to_thread(self._thread.join)
        return verdict_of(self.events)


# --------------------------------------------------------------------------- the proxy


def speaker_context(verdict: Verdict, refused: bool) -> dict:
    return {"name": verdict.name, "accepted": verdict.accepted,
            "score": None if verdict.score is None else round(float(verdict.score), 4), "refused": refused}


def tagged_transcript(text: str, context: dict | None, language: str | None, verdict: Verdict,
                      settings: ProxySettings):
    """The transcript returned to Home Assistant: the ASR's, with the speaker added (pure)."""
    from wyoming.asr import Transcript

    refused = not verdict.accepted and settings.unknown == "refuse"
    ctx = dict(context or {})
    ctx["speaker"] = speaker_context(verdict, refused)
    if refused:
        return Transcript(text="", context=ctx, language=language)
    if settings.prefix and text:
        text = f"[{verdict.name if verdict.accepted else UNKNOWN_TAG}] {text}"
    return Transcript(text=text, context=ctx, language=language)


class Proxy:
    """What every connection shares: settings, model, scoring config, and the profiles and decision
    rule read from disk once (``reload()`` reads them again)."""

    def __init__(self, settings: ProxySettings, cfg: Any, embedder: Any, profiles: Any, watch: Any = None) -> None:
        self.settings = settings
        self.cfg = cfg
        self.embedder = embedder
        self.load_profiles = profiles
        self.watch = watch   # a ProfilesWatch on the profiles' folder (serve() asks it; the loader tells it), or None
        self.watching: asyncio.Task | None = None
        self.centroids: dict[str, np.ndarray] = {}
        self.rule = None
        self.requests = 0
        self.reload()

    def reload(self) -> None:
        """Read the profiles and the confidence calibration again (requests already running keep theirs)."""
        from .pipeline import DecisionRule

        rule = DecisionRule.load(self.cfg.scoring, self.embedder.fingerprint, self.cfg.profiles.resolved())
        centroids = self.load_profiles()
        self.rule, self.centroids = rule, centroids     # two plain swaps: a new request sees one or the other

    async def info(self):
        """This proxy's ``info``: the ASR's models and languages when it answers, else none."""
        from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info

        models: list = []
        upstream = "the ASR"
        try:
            async with _client(self.settings.asr_uri, DESCRIBE_TIMEOUT_S) as client:
                await client.write_event(Describe().event())
                while True:
                    event = await client.read_event()
                    if event is None:
                        break
                    if Info.is_type(event.type):
                        asr = Info.from_event(event).asr
                        if asr:
                            models = list(asr[0].models)
                            upstream = asr[0].name
                        break
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            log.warning("wyoming: describe: the ASR at %s did not answer (%s)", self.settings.asr_uri, exc)
        if not models:
            models = [AsrModel(name="streamsv-proxy", attribution=Attribution("streamsv", ATTRIBUTION_URL),
                               installed=True, description="the ASR behind this proxy did not answer",
                               version=__version__, languages=[])]
        program = AsrProgram(
            name="streamsv", attribution=Attribution("streamsv", ATTRIBUTION_URL), installed=True,
            description=f"speaker-aware proxy for {upstream}: the transcript carries who spoke",
            version=__version__, models=models, supports_transcript_streaming=False)
        return Info(asr=[program])


def _client(uri: str, timeout: float):
    from wyoming.client import AsyncClient

    return AsyncClient.from_uri(uri, connect_timeout=timeout, read_timeout=timeout)


def make_handler_class():
    """The handler class (built lazily so that importing this module does not need wyoming)."""
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.error import Error
    from wyoming.info import Describe
    from wyoming.server import AsyncEventHandler

    class SpeakerProxyHandler(AsyncEventHandler):
        def __init__(self, reader, writer, proxy: Proxy) -> None:
            super().__init__(reader, writer)
            self.proxy = proxy
            self.upstream = None
            self.verifier: Verifier | None = None

        async def run(self) -> None:
            """Like the library's loop, but with bounded parsing."""
            self._is_running = True
            try:
                while self._is_running:
                    try:
                        event = await asyncio.wait_for(read_event_bounded(self.reader), IDLE_TIMEOUT_S)
                    except asyncio.TimeoutError:
                        log.info("wyoming: closing a connection silent for %g s", IDLE_TIMEOUT_S)
                        break
                    except BadEvent as bad:
                        log.warning("wyoming: dropping a client: %s", bad)
                        await self._error(str(bad), "bad-event")
                        break
                    except (asyncio.IncompleteReadError, ConnectionError):
                        break
                    if event is None or not await self.handle_event(event):
                        break
            finally:
                await self.disconnect()
                self.writer.close()

        async def handle_event(self, event) -> bool:
            if Describe.is_type(event.type):
                await self.write_event((await self.proxy.info()).event())
                return True
            if Transcribe.is_type(event.type):
                return await self._forward(event, new_request=True)
            if AudioStart.is_type(event.type):
                try:
                    fmt = _check_format(event.data)
                except BadEvent as bad:
                    await self._error(str(bad), "bad-audio")
                    return False
                if self.upstream is None and not await self._connect():
                    return True
                await self._stop_verifier()
                self.verifier = Verifier(self.proxy, fmt)
                return await self._forward(event)
            if AudioChunk.is_type(event.type):
                if self.verifier is not None and event.payload:
                    self.verifier.push(event.payload)
                return await self._forward(event) if self.upstream is not None else True
            if AudioStop.is_type(event.type):
                if self.upstream is None:
                    return True
                if not await self._forward(event):
                    return True
                return await self._reply()
            log.debug("wyoming: ignoring a %s event", event.type)
            return True

        async def _connect(self) -> bool:
            try:
                self.upstream = _client(self.proxy.settings.asr_uri, UPSTREAM_TIMEOUT_S)
                await self.upstream.connect()
                return True
            except (OSError, asyncio.TimeoutError) as exc:
                self.upstream = None
                log.warning("wyoming: cannot reach the ASR at %s: %s", self.proxy.settings.asr_uri, exc)
                await self._error(f"the ASR behind the speaker proxy is unreachable ({exc})", "asr-unreachable")
                return False

        async def _forward(self, event, new_request: bool = False) -> bool:
            if new_request:
                await self._close_upstream()
                if not await self._connect():
                    return True
            try:
                await self.upstream.write_event(event)
                return True
            except (OSError, AttributeError) as exc:
                await self._close_upstream()
                await self._error(f"lost the ASR ({exc})", "asr-lost")
                return True

        async def _reply(self) -> bool:
            verdict = await self.verifier.finish() if self.verifier is not None else Verdict(None, False, None, 0.0)
            self.verifier = None
            transcript = None
            try:
                while True:
                    event = await self.upstream.read_event()
                    if event is None:
                        break
                    if Transcript.is_type(event.type):
                        transcript = Transcript.from_event(event)
                        break
                    if Error.is_type(event.type):        # the ASR's own error goes to the client as it is
                        await self._close_upstream()
                        await self.write_event(event)
                        return True
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("wyoming: the ASR did not answer: %s", exc)
            await self._close_upstream()
            if transcript is None:
                await self._error("the ASR returned no transcript", "asr-no-transcript")
                return True
            self.proxy.requests += 1
            reply = tagged_transcript(transcript.text, transcript.context, transcript.language, verdict,
                                      self.proxy.settings)
            # What people say stays out of the log unless asked for (debug): it is theirs.
            log.info("wyoming: %s (score %s, %.1f s of speech)", verdict.name or UNKNOWN_TAG, verdict.score,
                     verdict.speech_s)
            log.debug("wyoming: transcript %r", reply.text)
            await self.write_event(reply.event())
            return True

        async def _error(self, text: str, code: str) -> None:
            try:
                await self.write_event(Error(text=text, code=code).event())
            except (OSError, RuntimeError):
                pass

        async def _stop_verifier(self) -> None:
            if self.verifier is not None:
                await self.verifier.finish()
                self.verifier = None

        async def _close_upstream(self) -> None:
            if self.upstream is not None:
                try:
                    await self.upstream.disconnect()
                except OSError:
                    pass
                self.upstream = None

        async def disconnect(self) -> None:
            await self._stop_verifier()
            await self._close_upstream()

    return SpeakerProxyHandler


async def start_proxy(proxy: Proxy):
    """Start listening on ``proxy.settings.uri``; returns the wyoming AsyncServer (``await server.stop()``)."""
    from wyoming.server import AsyncServer

    handler = make_handler_class()
    server = AsyncServer.from_uri(proxy.settings.uri)
    await server.start(lambda reader, writer: handler(reader, writer, proxy))
    _start_watching(proxy)
    return server


def serve(proxy: Proxy) -> None:
    """Run the proxy until SIGTERM or Ctrl-C."""
    from wyoming.server import AsyncServer

    async def main() -> None:
        handler = make_handler_class()
        server = AsyncServer.from_uri(proxy.settings.uri)
        log.info("wyoming: speaker-aware ASR proxy on %s -> %s (unknown voices: %s)", proxy.settings.uri,
                 proxy.settings.asr_uri, proxy.settings.unknown)
        loop = asyncio.get_running_loop()
        # Off the event loop: reading profiles takes a moment, and clients keep streaming meanwhile.
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, _reload_logged, proxy))
        _start_watching(proxy)
        try:
            await server.run(lambda reader, writer: handler(reader, writer, proxy))
        except OSError as exc:
            raise StreamsvError(f"cannot listen on {proxy.settings.uri}: {exc.strerror or exc}") from None

    asyncio.run(main())


def _start_watching(proxy: Proxy) -> None:
    """The folder watch as a task of the running loop (kept on the proxy: a task nobody holds can be
    collected); ended with the loop."""
    if proxy.watch is not None:
        proxy.watching = asyncio.get_running_loop().create_task(_watch_profiles(proxy))


async def _watch_profiles(proxy: Proxy) -> None:
    """Reload when the profiles' folder changes (profiles.watch_s), as SIGHUP does; off the event loop."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(proxy.watch.interval_s)
        if await loop.run_in_executor(None, proxy.watch.changed):
            log.info("wyoming: profiles folder changed: reloading")
            await loop.run_in_executor(None, _reload_logged, proxy)


def _reload_logged(proxy: Proxy) -> None:
    """SIGHUP: read the profiles and calibration again; a failure keeps the ones in use."""
    try:
        proxy.reload()
    except StreamsvError as exc:
        log.error("wyoming: reload: %s; keeping the current profiles", exc)
        return
    log.info("wyoming: reloaded: %d profiles%s", len(proxy.centroids),
             "" if proxy.centroids else " (every voice will be reported unknown)")
