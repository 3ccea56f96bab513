#!/usr/bin/env python3
"""Latency of the live pipeline at real-time pace.

Plays a conversation through the real pipeline (FileSource --realtime → VAD →
streaming embedder → scoring), exactly as `streamsv listen --source FILE
--realtime` does, and prints per-hop model compute p50/p95 and
capture-to-decision latency p50/p95 (capture of the hop's last sample →
decision emitted).

Audio: --audio FILE, else two speechocean762 dev speakers from ../shared/data
(enrolled from 3 utterances each, talking in turns), else espeak-ng voices.

    python -m tools.bench_latency [--seconds 30] [--model PATH|untrained] [--threads 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from streamsv.features import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
PAUSE_S = 0.8


def data_dir() -> Path | None:
    d = Path(os.environ.get("STREAMSV_DATA") or REPO.parent / "shared" / "data")
    return d if d.is_dir() else None


def dev_material() -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]] | None:
    """Enrollment clips for two dev speakers, and their later utterances as conversation turns."""
    from streamsv.sources import load_audio

    d = data_dir()
    if d is None:
        return None
    spk = (d / "speechocean762" / "dev-speakers.txt").read_text().split()[:2]
    utts = {s: sorted((d / "speechocean762" / "train" / s).glob("*.opus")) for s in spk}
    enroll = {s: [load_audio(p) for p in u[:3]] for s, u in utts.items()}
    turns = [load_audio(utts[s][3 + k]) for k in range(8) for s in spk]
    return enroll, turns


def espeak_material(folder: Path) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    from streamsv.demo import CONVERSATION, ENROLL_LINES, VOICES, synthesize

    voices = {v.name: v for v in VOICES}
    enroll = {v.name: [synthesize(v, t, folder / f"e_{v.name}_{i}.wav") for i, t in enumerate(ENROLL_LINES)]
              for v in VOICES[:2]}
    turns = [synthesize(voices[w], t, folder / f"t{i}.wav") for i, (w, t) in enumerate(CONVERSATION * 2)]
    return enroll, turns


def pct(values, q):
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio", help="audio file to play (profiles are then enrolled from its first seconds)")
    ap.add_argument("--seconds", type=float, default=30.0, help="play at most this many seconds")
    ap.add_argument("--model", help="weights file; 'untrained' for a random model (plumbing only)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--variant", default=None, choices=["fp32", "int8"], help="the shipped model's variant (default fp32)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args(argv)

    import soundfile as sf

    import streamsv
    from streamsv.config import Config
    from streamsv.errors import StreamsvError
    from streamsv.pipeline import Pipeline
    from streamsv.profiles import enroll
    from streamsv.sources import FileSource, load_audio

    try:
        if args.model == "untrained":
            from training.model import untrained_embedder  # torch: a random model is exported in memory

            emb = untrained_embedder(0)
        else:
            emb = streamsv.load_embedder(args.model, variant=args.variant, threads=args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            if args.audio:
                wave = load_audio(args.audio)[: int(args.seconds * SAMPLE_RATE)]
                enroll_clips = {"a": [wave[: 3 * SAMPLE_RATE]], "b": [wave[-3 * SAMPLE_RATE:]]}
                what = args.audio
            else:
                material = dev_material()
                what = "speechocean762 dev speakers"
                if material is None:
                    material = espeak_material(tmp)
                    what = "espeak-ng voices"
                enroll_clips, turns = material
                pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
                wave = np.concatenate([x for t in turns for x in (t, pause)])[: int(args.seconds * SAMPLE_RATE)]
            profiles = {n: enroll(emb, n, clips, trim=not args.audio)[0].centroid for n, clips in enroll_clips.items()}
            path = tmp / "bench.wav"
            sf.write(path, wave, SAMPLE_RATE)
            cfg = Config().with_overrides(**{"output.stats_interval_s": 86400.0})
            events = list(Pipeline(emb, FileSource(path, realtime=True), cfg, profiles).run())
    except StreamsvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    decisions = [e for e in events if e["event"] == "decision"]
    stats = events[-1]
    out = {
        "audio": what, "model": emb.fingerprint, "threads": args.threads,
        "audio_s": stats["audio_s"], "decisions": len(decisions),
        "hop_compute_p50_ms": pct([d["compute_ms"] for d in decisions], 50),
        "hop_compute_p95_ms": pct([d["compute_ms"] for d in decisions], 95),
        "capture_to_decision_p50_ms": pct([d["latency_ms"] for d in decisions], 50),
        "capture_to_decision_p95_ms": pct([d["latency_ms"] for d in decisions], 95),
        "rtf": stats["rtf"],
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"real-time pace, {out['audio_s']:.1f} s of {what}, model {out['model']}, {args.threads} thread(s), "
              f"{out['decisions']} decisions (hop 0.5 s, window 3 s)")
        print(f"per-hop compute        p50 {out['hop_compute_p50_ms']} ms   p95 {out['hop_compute_p95_ms']} ms")
        print(f"capture-to-decision    p50 {out['capture_to_decision_p50_ms']} ms   p95 {out['capture_to_decision_p95_ms']} ms")
        print(f"RTF (processing / audio) {out['rtf']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
