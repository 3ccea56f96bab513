#!/usr/bin/env python3
"""Turn end -> MQTT event latency on loopback, beside a bare paho publish in the same run.

A conversation (the demo's espeak-ng voices: two enrolled, one stranger; repeated --repeat
times) runs through the real pipeline and streamsv.sinks.mqtt.MqttSink into a mosquitto this tool
starts on a free loopback port (or --broker URL). For every turn, the clock starts when the
pipeline yields the turn's ``speech_end`` and stops when a subscriber in this process receives
the sink's ``end`` event for it. The baseline, timed the same way at the same moment, is one bare
``paho`` QoS 1 publish of the same payload from a second client (the two go out in alternating
order): the cost of MQTT itself, so the ratio is what the sink's backlog and publisher thread add.

Without --realtime the audio is processed as fast as it can be (turns end in bursts, tens of ms
apart, with decisions in between: a pessimistic load); --realtime paces it like a microphone.
Pin it for stable figures: ``taskset -c 0 python -m tools.bench_mqtt``.

    python -m tools.bench_mqtt [--repeat 5] [--realtime] [--broker mqtt://HOST:PORT] [--json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from streamsv.features import SAMPLE_RATE

TARGET_P95_MS = 100.0
WAIT_S = 10.0
BASELINE_TOPIC = "bench/baseline"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        sys.exit("error: needs mosquitto (apt-get install mosquitto), or --broker mqtt://HOST:PORT")
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("error: mosquitto did not start")


def material(folder: Path, repeat: int) -> tuple[Path, Path]:
    """Profiles of ada and bob, and the demo conversation repeated ``repeat`` times, as a WAV."""
    import soundfile as sf

    from streamsv import load_embedder
    from streamsv.demo import build_conversation, enroll_household
    from streamsv.profiles import ProfileStore

    list(enroll_household(load_embedder(), ProfileStore(folder / "profiles"), folder))
    wave, _ = build_conversation(folder)
    sf.write(folder / "conversation.wav", np.tile(wave, repeat), SAMPLE_RATE)
    return folder / "profiles", folder / "conversation.wav"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(args) -> dict:
    import paho.mqtt.client as paho

    from streamsv import load_embedder
    from streamsv.app import profile_loader
    from streamsv.config import Config
    from streamsv.sinks.mqtt import MqttSink
    from streamsv.pipeline import Pipeline
    from streamsv.profiles import ProfileStore
    from streamsv.sources import FileSource

    with tempfile.TemporaryDirectory(prefix="streamsv-bench-mqtt-") as tmp:
        folder = Path(tmp)
        broker = None
        if args.broker:
            url = args.broker
            host, port = url.split("://", 1)[1].rsplit(":", 1)
            port = int(port)
        else:
            broker, port = start_broker(folder)
            host, url = "127.0.0.1", f"mqtt://127.0.0.1:{port}"
        try:
            profiles, wav = material(folder, args.repeat)
            received: dict[tuple[str, float], float] = {}
            got = threading.Condition()

            def on_message(client, userdata, msg) -> None:
                now = time.monotonic()
                body = json.loads(msg.payload)
                if body.get("phase", "end") != "end":
                    return
                with got:
                    received[(msg.topic, body["t"])] = now
                    got.notify_all()

            sub = paho.Client(paho.CallbackAPIVersion.VERSION2)
            sub.on_message = on_message
            sub.connect(host, port)
            sub.subscribe([("streamsv/bench/event", 1), (BASELINE_TOPIC, 1)])
            sub.loop_start()
            raw = paho.Client(paho.CallbackAPIVersion.VERSION2)
            raw.connect(host, port)
            raw.loop_start()

            emb = load_embedder()
            cfg = Config().with_overrides(**{"mqtt.url": url, "mqtt.room": "bench", "profiles.dir": str(profiles)})
            store = ProfileStore(profiles)
            pipe = Pipeline(emb, FileSource(wav, realtime=args.realtime), cfg, profile_loader(store, emb))
            sink = MqttSink(cfg.mqtt, names=sorted(pipe.centroids)).start()
            deadline = time.monotonic() + WAIT_S
            while not sink.stats()["connected"] and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
            sent: dict[float, float] = {}
            for ev in pipe.run():
                if ev["event"] == "speech_end" and ev.get("decisions"):
                    # Both leave at the same instant; which goes first alternates, so neither queues
                    # behind the other every time.
                    began = time.monotonic()
                    if len(sent) % 2:
                        raw.publish(BASELINE_TOPIC, json.dumps({"t": ev["t"]}), qos=1)
                        sink.consume(ev)
                    else:
                        sink.consume(ev)
                        raw.publish(BASELINE_TOPIC, json.dumps({"t": ev["t"]}), qos=1)
                    sent[ev["t"]] = began
                else:
                    sink.consume(ev)
            with got:
                got.wait_for(lambda: len(received) >= 2 * len(sent), timeout=WAIT_S)
            sink.close()
            for c in (sub, raw):
                c.loop_stop()
                c.disconnect()
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(timeout=10)
    sink_ms = [(received[("streamsv/bench/event", t)] - t0) * 1000 for t, t0 in sent.items()
               if ("streamsv/bench/event", t) in received]
    base_ms = [(received[(BASELINE_TOPIC, t)] - t0) * 1000 for t, t0 in sent.items() if (BASELINE_TOPIC, t) in received]
    return {"turns": len(sent), "received": len(sink_ms), "realtime": args.realtime, "repeat": args.repeat,
            "sink_p50_ms": round(pct(sink_ms, 50), 2), "sink_p95_ms": round(pct(sink_ms, 95), 2),
            "baseline_p50_ms": round(pct(base_ms, 50), 2), "baseline_p95_ms": round(pct(base_ms, 95), 2),
            "dropped": sink.dropped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="times the 6-turn demo conversation is played")
    ap.add_argument("--realtime", action="store_true", help="pace the audio like a microphone")
    ap.add_argument("--broker", help="an existing broker, mqtt://HOST:PORT (default: start mosquitto)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        sys.exit("error: needs espeak-ng for the voices")
    r = run(args)
    if args.json:
        print(json.dumps(r))
        return 0
    ratio = lambda a, b: f"{a / b:.1f}x" if b else "-"
    print(f"turn end -> MQTT event on loopback, {r['turns']} turns ({r['received']} received, "
          f"{'real-time' if r['realtime'] else 'as fast as possible'}, {r['dropped']} dropped)")
    print(f"{'':24}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"{'streamsv MqttSink':24}{r['sink_p50_ms']:>10.2f}{r['sink_p95_ms']:>10.2f}")
    print(f"{'bare paho publish':24}{r['baseline_p50_ms']:>10.2f}{r['baseline_p95_ms']:>10.2f}")
    print(f"{'ratio':24}{ratio(r['sink_p50_ms'], r['baseline_p50_ms']):>10}{ratio(r['sink_p95_ms'], r['baseline_p95_ms']):>10}")
    verdict = "ok" if r["sink_p95_ms"] <= TARGET_P95_MS and r["received"] == r["turns"] else "MISSED"
    print(f"target p95 <= {TARGET_P95_MS:g} ms: {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
