"""Build streaming-detection test conversations from dev speakers (never training speakers).

Each conversation has one *target* speaker, enrolled from their first 3 utterances (by file
name, as in tools/eval.py's enroll protocol; those utterances never appear in the
conversation), and turns by the target and by other dev speakers of the same set, separated by
pauses with a little background hiss. Speakers are split by index: even-numbered speakers host
conversations, odd-numbered ones are kept apart for threshold calibration
(tools/bench_detection.py), so calibration and test never share a voice.

    python tools/make_conversations.py --out cache/conversations            # writes .wav + .json
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

SAMPLE_RATE = 16000
ENROLL_UTTERANCES = 3
DEFAULT_SET = "speechocean-dev"
TURNS = 12  # per conversation
TARGET_SHARE = 0.4  # fraction of turns by the target
PAUSE_S = (0.2, 1.0)  # between turns; below the VAD hangover (0.3 s) turns can merge, as in life
HISS_DB = -60  # background level in the pauses (dBFS RMS), so VAD sees a live room, not digital zero


@dataclass
class Turn:
    speaker: str
    start: float
    end: float
    path: str


@dataclass
class Conversation:
    name: str
    target: str
    enroll_paths: list[str]
    turns: list[Turn]
    seconds: float


def split_speakers(utts: list[datasets.Utterance]) -> tuple[list[str], list[str]]:
    """(conversation speakers, calibration speakers): alternate in sorted order."""
    speakers = sorted({u.speaker for u in utts})
    return speakers[0::2], speakers[1::2]


def by_speaker(utts: list[datasets.Utterance]) -> dict[str, list[datasets.Utterance]]:
    out: dict[str, list[datasets.Utterance]] = {}
    for u in sorted(utts, key=lambda u: (u.speaker, u.path.name)):
        out.setdefault(u.speaker, []).append(u)
    return out


def build(target: str, pool: dict[str, list[datasets.Utterance]], seed: int, turns: int = TURNS) -> tuple[np.ndarray, Conversation]:
    """One conversation for `target` from speakers in `pool` (target included)."""
    rng = np.random.default_rng(seed)
    own = pool[target][ENROLL_UTTERANCES:]
    others = [u for spk, us in pool.items() if spk != target for u in us]
    n_target = max(1, round(turns * TARGET_SHARE))
    picks = list(rng.choice(len(own), size=min(n_target, len(own)), replace=False))
    chosen = [own[i] for i in picks] + [others[i] for i in rng.choice(len(others), size=turns - len(picks), replace=False)]
    order = rng.permutation(len(chosen))
    pieces, segs, t = [], [], 0.0
    hiss = 10 ** (HISS_DB / 20)
    for k in order:
        u = chosen[k]
        pause = rng.uniform(*PAUSE_S)
        pieces.append(rng.standard_normal(int(pause * SAMPLE_RATE)).astype(np.float32) * hiss)
        t += pause
        wave = datasets.read_audio(u.path)
        pieces.append(wave + rng.standard_normal(len(wave)).astype(np.float32) * hiss)
        segs.append(Turn(u.speaker, round(t, 4), round(t + len(wave) / SAMPLE_RATE, 4), str(u.path)))
        t += len(wave) / SAMPLE_RATE
    tail = rng.standard_normal(int(PAUSE_S[1] * SAMPLE_RATE)).astype(np.float32) * hiss
    audio = np.concatenate(pieces + [tail])
    conv = Conversation(f"{target.replace('/', '-')}-{seed}", target, [str(u.path) for u in pool[target][:ENROLL_UTTERANCES]],
                        segs, round(len(audio) / SAMPLE_RATE, 4))
    return audio, conv


def conversations(set_name: str = DEFAULT_SET, per_target: int = 1, seed: int = 0) -> list[tuple[np.ndarray, Conversation]]:
    """All conversations of a set: `per_target` for each conversation speaker."""
    utts = datasets.dev_set(set_name)
    hosts, _ = split_speakers(utts)
    pool = {spk: us for spk, us in by_speaker(utts).items() if spk in hosts}
    return [build(spk, pool, seed * 1000 + i * per_target + j) for i, spk in enumerate(hosts) for j in range(per_target)]


def truth_frames(conv: Conversation, frame_s: float) -> np.ndarray:
    """Per frame: True when the target is speaking at the frame's centre."""
    centres = (np.arange(int(conv.seconds / frame_s)) + 0.5) * frame_s
    out = np.zeros(len(centres), bool)
    for turn in conv.turns:
        if turn.speaker == conv.target:
            out |= (centres >= turn.start) & (centres < turn.end)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write dev-speaker conversations as .wav + .json")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "cache" / "conversations"))
    p.add_argument("--set", default=DEFAULT_SET, choices=["speechocean-dev", "librispeech-test-other"])
    p.add_argument("--per-target", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import soundfile as sf

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for audio, conv in conversations(a.set, a.per_target, a.seed):
        sf.write(out / f"{conv.name}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        (out / f"{conv.name}.json").write_text(json.dumps(asdict(conv), indent=1))
        share = sum(t.end - t.start for t in conv.turns if t.speaker == conv.target) / conv.seconds
        print(f"{conv.name}: {conv.seconds:.1f} s, {len(conv.turns)} turns, target speaks {100 * share:.0f}% of the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
