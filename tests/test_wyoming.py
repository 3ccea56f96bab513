"""The speaker-aware Wyoming ASR proxy, spoken to by the wyoming library's own client, in front
of a stand-in ASR built with the wyoming library's server, all on loopback.

The voices are the demo's espeak-ng voices on the shipped model: ada and bob enrolled, the
stranger not.
"""
from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest

from conftest import demo_household, run_cli

pytest.importorskip("wyoming")

from wyoming.asr import Transcribe, Transcript  # noqa: E402
from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info  # noqa: E402
from wyoming.server import AsyncEventHandler, AsyncServer  # noqa: E402

from streamsv.wyoming_asr import Proxy, ProxySettings, start_proxy  # noqa: E402

SR = 16000
ASR_TEXT = "turn on the kitchen lights"
COMMAND = "Please turn on the kitchen lights and play some quiet music."
CHUNK_SAMPLES = 1024
TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FixedAsr(AsyncEventHandler):
    """Answers every request with the same text, and says how much audio it received."""

    def __init__(self, reader, writer) -> None:
        super().__init__(reader, writer)
        self.audio_bytes = 0
        self.language = None

    async def handle_event(self, event) -> bool:
        if Describe.is_type(event.type):
            model = AsrModel(name="tiny", attribution=Attribution("test", "http://localhost"), installed=True,
                             description="fixed text", version="1", languages=["en", "de"])
            await self.write_event(Info(asr=[AsrProgram(
                name="fixed-asr", attribution=Attribution("test", "http://localhost"), installed=True,
                description="stand-in", version="1", models=[model])]).event())
        elif Transcribe.is_type(event.type):
            self.language = Transcribe.from_event(event).language
        elif AudioStart.is_type(event.type):
            self.audio_bytes = 0
        elif AudioChunk.is_type(event.type):
            self.audio_bytes += len(event.payload or b"")
        elif AudioStop.is_type(event.type):
            await self.write_event(Transcript(text=ASR_TEXT, language=self.language,
                                              context={"asr": "fixed", "audio_bytes": self.audio_bytes}).event())
        return True


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Shipped model, ada + bob profiles, and one spoken command per voice (16 kHz float)."""
    from streamsv.config import Config, ScoringConfig
    from streamsv.demo import VOICES, synthesize

    folder = tmp_path_factory.mktemp("wyoming-voices")
    emb, store = demo_household(folder)
    commands = {v.name: synthesize(v, COMMAND, folder / f"command_{v.name}.wav") for v in VOICES}

    def profiles() -> dict:
        return {n: p.centroid for n, p in store.load_all(emb.fingerprint, emb.dim).items()}

    # The demo's voices are one synthesiser: its stranger's command scores 0.58 against bob on the
    # shipped model (0.49 on the one before), above the model's bar (0.48), where the enrolled voices'
    # commands score 0.92-0.96. These tests are about how the proxy handles known and unknown voices,
    # so their bar sits between the two.
    cfg = Config(scoring=ScoringConfig(threshold=0.6))
    return {"emb": emb, "cfg": cfg, "profiles": profiles, "commands": commands, "store_dir": store.dir}


def pcm16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


async def ask(port: int, wave: np.ndarray, rate: int = SR, channels: int = 1) -> tuple[object, int]:
    """One Assist-style request through the wyoming client; returns (reply event, bytes sent)."""
    if rate != SR or channels != 1:
        import soxr

        wave = soxr.resample(wave, SR, rate).astype(np.float32)
        wave = np.repeat(wave[:, None], channels, axis=1).reshape(-1)
    data = pcm16(wave)
    step = CHUNK_SAMPLES * 2 * channels
    async with AsyncTcpClient("127.0.0.1", port, connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
        for i in range(0, len(data), step):
            await client.write_event(AudioChunk(rate=rate, width=2, channels=channels, audio=data[i:i + step]).event())
            await asyncio.sleep(0)               # let other clients interleave
        await client.write_event(AudioStop().event())
        reply = await client.read_event()
    return reply, len(data)


async def with_servers(setup, scenario, asr_handler=FixedAsr, **settings):
    """Start a stand-in ASR (``asr_handler``; None: nothing listens on the ASR's port) and the
    proxy on free loopback ports, run ``scenario(port)``, stop both."""
    asr_port, proxy_port = free_port(), free_port()
    asr = None
    if asr_handler is not None:
        asr = AsyncServer.from_uri(f"tcp://127.0.0.1:{asr_port}")
        await asr.start(asr_handler)
    proxy = Proxy(ProxySettings(f"tcp://127.0.0.1:{proxy_port}", f"tcp://127.0.0.1:{asr_port}", **settings),
                  setup["cfg"], setup["emb"], setup["profiles"])
    server = await start_proxy(proxy)
    try:
        return await asyncio.wait_for(scenario(proxy_port), timeout=TIMEOUT_S * 2)
    finally:
        await server.stop()
        if asr is not None:
            await asr.stop()


def test_transcript_carries_the_speaker(setup):
    reply, sent = asyncio.run(with_servers(setup, lambda port: ask(port, setup["commands"]["ada"])))
    assert Transcript.is_type(reply.type)
    t = Transcript.from_event(reply)
    assert t.text == f"[ada] {ASR_TEXT}" and t.language == "en"
    assert t.context["asr"] == "fixed" and t.context["audio_bytes"] == sent     # the ASR got every byte
    who = t.context["speaker"]
    assert who["name"] == "ada" and who["accepted"] is True and who["score"] > 0.5 and who["refused"] is False


def test_unknown_voice_tagged_or_refused(setup):
    stranger = setup["commands"]["stranger"]
    reply, _ = asyncio.run(with_servers(setup, lambda port: ask(port, stranger)))
    t = Transcript.from_event(reply)
    assert t.text == f"[unknown] {ASR_TEXT}"
    assert t.context["speaker"]["name"] is None and t.context["speaker"]["accepted"] is False

    reply, _ = asyncio.run(with_servers(setup, lambda port: ask(port, stranger), unknown="refuse"))
    t = Transcript.from_event(reply)
    assert t.text == "" and t.context["speaker"]["refused"] is True

    # An enrolled voice still passes under "refuse"; --no-prefix leaves the text alone.
    reply, _ = asyncio.run(with_servers(setup, lambda port: ask(port, setup["commands"]["bob"]), unknown="refuse",
                                        prefix=False))
    t = Transcript.from_event(reply)
    assert t.text == ASR_TEXT and t.context["speaker"]["name"] == "bob"


def test_describe_reports_the_proxy_with_the_asr_models(setup):
    async def describe(port):
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=TIMEOUT_S) as client:
            await client.write_event(Describe().event())
            return await client.read_event()

    reply = asyncio.run(with_servers(setup, describe))
    info = Info.from_event(reply)
    assert [p.name for p in info.asr] == ["streamsv"]
    assert "fixed-asr" in info.asr[0].description
    assert [(m.name, m.languages) for m in info.asr[0].models] == [("tiny", ["en", "de"])]


def test_two_clients_at_once(setup):
    async def both(port):
        return await asyncio.gather(ask(port, setup["commands"]["ada"]),
                                    ask(port, setup["commands"]["bob"], rate=22050, channels=2))

    (ada, _), (bob, _) = asyncio.run(with_servers(setup, both))
    assert Transcript.from_event(ada).context["speaker"]["name"] == "ada"
    assert Transcript.from_event(bob).context["speaker"]["name"] == "bob"     # resampled and downmixed


def test_oversized_event_is_refused_and_the_proxy_keeps_serving(setup):
    async def abuse(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(json.dumps({"type": "audio-chunk", "payload_length": 1 << 40}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
        header = json.loads(line)
        extra = json.loads(await reader.readexactly(header["data_length"])) if header.get("data_length") else {}
        writer.close()
        reply, _ = await ask(port, setup["commands"]["ada"])
        return header["type"], extra, reply

    kind, extra, reply = asyncio.run(with_servers(setup, abuse))
    assert Error.is_type(kind) and extra["code"] == "bad-event" and "payload_length" in extra["text"]
    assert Transcript.from_event(reply).context["speaker"]["name"] == "ada"


def test_deeply_nested_json_is_a_bad_event_not_a_crash():
    # 60,000 '[' fit the 64 KB header line; the JSON parser raised RecursionError, which escaped the
    # bounded reader (a traceback in the log and no error event for the client).
    from streamsv.wyoming_asr import BadEvent, read_event_bounded

    async def read(data: bytes):
        reader = asyncio.StreamReader(limit=64 * 1024)
        reader.feed_data(data)
        reader.feed_eof()
        return await read_event_bounded(reader)

    nested = b"[" * 60_000
    for data in (nested + b"\n", b'{"type": "transcribe", "data_length": 60000}\n' + nested):
        with pytest.raises(BadEvent, match="not JSON"):
            asyncio.run(read(data))


def test_unreachable_asr_is_an_error_event(setup):
    reply, _ = asyncio.run(with_servers(setup, lambda port: ask(port, setup["commands"]["ada"][:SR]),
                                        asr_handler=None))
    assert Error.is_type(reply.type) and reply.data["code"] == "asr-unreachable"


class FailingAsr(FixedAsr):
    async def handle_event(self, event) -> bool:
        if AudioStop.is_type(event.type):
            await self.write_event(Error(text="model not loaded", code="asr-broken").event())
            return True
        return await super().handle_event(event)


def test_an_asr_error_reaches_the_client(setup):
    reply, _ = asyncio.run(with_servers(setup, lambda port: ask(port, setup["commands"]["ada"][:SR]),
                                        asr_handler=FailingAsr))
    assert Error.is_type(reply.type) and reply.data == {"text": "model not loaded", "code": "asr-broken"}


@pytest.mark.parametrize("args, message", [
    (["--asr-uri", "http://asr:10300"], "--asr-uri: expected tcp://HOST:PORT"),
    (["--asr-uri", "tcp://asr:10300", "--uri", "tcp://0.0.0.0"], "--uri: expected tcp://HOST:PORT"),
    (["--asr-uri", "tcp://asr:10300", "--unknown", "drop"], "--unknown: expected one of tag, refuse"),
])
def test_bad_arguments_are_one_line_errors(untrained_cli, capsys, args, message):
    code, out, err = run_cli(capsys, "wyoming", *args)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_the_wyoming_command_serves_and_stops_on_sigterm(setup, tmp_path):
    """`streamsv wyoming` as a real process: a request through it, then SIGTERM ends it cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    profiles = setup["store_dir"]

    async def scenario():
        asr_port, proxy_port = free_port(), free_port()
        asr = AsyncServer.from_uri(f"tcp://127.0.0.1:{asr_port}")
        await asr.start(FixedAsr)
        env = dict(os.environ, HOME=str(tmp_path))
        env.pop("STREAMSV_CONFIG", None)
        proc = subprocess.Popen([sys.executable, "-m", "streamsv.cli", "wyoming", "--uri",
                                 f"tcp://127.0.0.1:{proxy_port}", "--asr-uri", f"tcp://127.0.0.1:{asr_port}",
                                 "--profiles-dir", str(profiles)], stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", proxy_port), timeout=0.2).close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            reply, _ = await ask(proxy_port, setup["commands"]["bob"])
            proc.send_signal(signal.SIGHUP)            # profiles read again, the server keeps serving
            reloaded = await asyncio.wait_for(asyncio.to_thread(_wait_for_line, proc.stderr,
                                                                "wyoming: reloaded: 2 profiles"), TIMEOUT_S)
            proc.send_signal(signal.SIGTERM)
            began = time.monotonic()
            code = await asyncio.to_thread(proc.wait, 10)
            return reply, code, time.monotonic() - began, reloaded + proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
            await asr.stop()

    reply, code, stop_s, err = asyncio.run(scenario())
    assert Transcript.from_event(reply).text == f"[bob] {ASR_TEXT}"
    assert code == 0 and stop_s < 2.0 and "Traceback" not in err
    assert "wyoming: reloaded: 2 profiles" in err


def _wait_for_line(stream, text: str, limit: int = 200) -> str:
    """stderr read line by line until ``text`` appears (or ``limit`` lines / the end); what was read."""
    seen = []
    for _ in range(limit):
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            break
    return "".join(seen)


def test_profiles_and_calibration_are_read_once_per_server_and_on_reload(setup, monkeypatch):
    # Review finding: every request's Pipeline re-read the profiles and the confidence calibration
    # from disk. The proxy reads both once; reload() (SIGHUP) reads them again.
    from streamsv import confidence

    reads = {"profiles": 0, "calibration": 0}
    real_load = confidence.load

    def profiles():
        reads["profiles"] += 1
        return setup["profiles"]()

    def load(*args, **kwargs):
        reads["calibration"] += 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(confidence, "load", load)
    proxy_port, asr_port = free_port(), free_port()

    async def scenario():
        asr = AsyncServer.from_uri(f"tcp://127.0.0.1:{asr_port}")
        await asr.start(FixedAsr)
        proxy = Proxy(ProxySettings(f"tcp://127.0.0.1:{proxy_port}", f"tcp://127.0.0.1:{asr_port}"),
                      setup["cfg"], setup["emb"], profiles)
        server = await start_proxy(proxy)
        try:
            first = await ask(proxy_port, setup["commands"]["ada"])
            second = await ask(proxy_port, setup["commands"]["bob"])
            after_two = dict(reads)
            proxy.reload()
            third = await ask(proxy_port, setup["commands"]["ada"])
            return [first[0], second[0], third[0]], after_two
        finally:
            await server.stop()
            await asr.stop()

    replies, after_two = asyncio.run(scenario())
    assert [Transcript.from_event(r).context["speaker"]["name"] for r in replies] == ["ada", "bob", "ada"]
    assert after_two == {"profiles": 1, "calibration": 1}
    assert reads == {"profiles": 2, "calibration": 2}


def test_a_voice_enrolled_while_the_proxy_runs_is_named_without_a_reload_signal(setup, tmp_path):
    # profiles.watch_s: the proxy looks at its profiles' folder and reloads when it changes.
    import os
    import shutil

    from streamsv.app import profile_loader
    from streamsv.profiles import ProfilesWatch, ProfileStore

    store = ProfileStore(tmp_path / "profiles")
    store.ensure_dir()
    shutil.copy2(setup["store_dir"] / "bob.json", store.path("bob"))
    emb = setup["emb"]
    watch = ProfilesWatch(store, 0.05)
    proxy_port, asr_port = free_port(), free_port()

    async def scenario():
        asr = AsyncServer.from_uri(f"tcp://127.0.0.1:{asr_port}")
        await asr.start(FixedAsr)
        proxy = Proxy(ProxySettings(f"tcp://127.0.0.1:{proxy_port}", f"tcp://127.0.0.1:{asr_port}"),
                      setup["cfg"], emb, profile_loader(store, emb, watch), watch)
        server = await start_proxy(proxy)
        try:
            before = (await ask(proxy_port, setup["commands"]["ada"]))[0]
            # `streamsv profiles import` / `enroll` write a temp file and rename it into place.
            shutil.copy2(setup["store_dir"] / "ada.json", store.dir / ".incoming")
            os.replace(store.dir / ".incoming", store.path("ada"))
            for _ in range(100):
                if "ada" in proxy.centroids:
                    break
                await asyncio.sleep(0.05)
            after = (await ask(proxy_port, setup["commands"]["ada"]))[0]
            return before, after, sorted(proxy.centroids)
        finally:
            await server.stop()
            await asr.stop()

    before, after, names = asyncio.run(scenario())
    assert names == ["ada", "bob"]
    assert Transcript.from_event(before).context["speaker"]["name"] is None           # not enrolled yet
    assert Transcript.from_event(after).text == f"[ada] {ASR_TEXT}"


def test_a_client_that_goes_silent_is_closed_and_the_next_is_served(setup, monkeypatch):
    # QA: a satellite that lost power mid-request held a verifier thread and an ASR connection forever.
    import threading

    from streamsv import wyoming_asr

    monkeypatch.setattr(wyoming_asr, "IDLE_TIMEOUT_S", 0.5)

    def verifiers() -> int:
        return sum(t.name == "streamsv-wyoming-verify" for t in threading.enumerate())

    async def scenario(port):
        threads = verifiers()
        async with AsyncTcpClient("127.0.0.1", port, connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S) as client:
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=SR, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=SR, width=2, channels=1, audio=bytes(3200)).event())
            for _ in range(100):                            # the request's verifier starts
                busy = verifiers()
                if busy > threads:
                    break
                await asyncio.sleep(0.02)
            closed = await asyncio.wait_for(client.read_event(), 5.0)   # then nothing more is sent
        await asyncio.sleep(0.1)
        after = verifiers()
        reply, _ = await ask(port, setup["commands"]["bob"])
        return threads, busy, closed, after, reply

    threads, busy, closed, after, reply = asyncio.run(with_servers(setup, scenario))
    assert closed is None                                   # the proxy hung up
    assert busy == threads + 1 and after == threads         # and the request's verifier is gone
    assert Transcript.from_event(reply).text == f"[bob] {ASR_TEXT}"
