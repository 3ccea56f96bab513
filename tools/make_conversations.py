"""Build live-room test conversations from dev speakers (never training speakers).

This tool only *builds* audio and its ground truth; tools/bench_detection.py runs pipelines on
it and scores them (the two do not overlap).

A conversation is a household of three voices from one dev set (speechocean762 dev speakers,
ASC val/test, LibriSpeech test-other or urdu, in turn): two are enrolled, the third is a
stranger. The enrolled two give their first clips (by file name) up to 20 s of audio, at least
3 (what `streamsv enroll` asks for a good profile); those never appear in the talk. Turns of
1-8 s (one speaker's utterances, their leading and trailing silence trimmed, joined, at -26
dBFS) follow each other with gaps drawn from 0-800 ms; about 10% of turns start up to 0.5 s
before the previous one ends (people talk over each other). Consecutive turns are by different
voices, so every turn start is a speaker change. The conversation is then put in a room
(``CONDITIONS``):

- ``quiet``: a faint white hiss at -60 dBFS throughout (the room of the earlier benchmark);
- ``floor-60`` / ``floor-50`` / ``floor-40``: a continuous noise floor at that level (RMS dBFS),
  half white noise (a cheap microphone's self-noise) and half one of brown noise, mains hum with
  harmonics, a fan-like rumble (exercise bike) or a running tap (``../shared/data/noise``);
- ``babble``: five other dev speakers talking at once, 5-15 dB below the speech;
- ``tv``: a television-like background 5-15 dB below the speech: one other voice, band-limited,
  over music-like chords (held harmonic tones changing every 0.5-2 s).

Speakers are split by sorted index within each set: odd-numbered speakers make the *tuning*
conversations (VAD and change thresholds are chosen on them), even-numbered speakers the
*reporting* ones; babble and TV voices come from the other split, so no voice is both.

    python -m tools.make_conversations --out cache/conversations --condition floor-50   # .wav + .json
"""
from __future__ import annotations

import argparse
import functools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from streamsv.features import SAMPLE_RATE
from training import datasets

ENROLL_UTTERANCES = 3  # the fewest clips enrolled
ENROLL_TARGET_S = 20.0  # ... and more, in file-name order, until this much audio: a "good" profile, as `enroll` asks
MIN_TALK_UTTERANCES = 3  # clips left for the speaker's turns
DEFAULT_SET = "speechocean-dev"
SETS = ("speechocean-dev", "librispeech-test-other", "asc", "urdu")  # asc = ASC val + test speakers
SPLITS = ("tuning", "reporting")
TURNS = 12  # per conversation
VOICES = 3  # per household: two enrolled, one stranger
ENROLLED = 2
TURN_S = (1.0, 8.0)
GAP_S = (0.0, 0.8)
OVERLAP_SHARE = 0.10
OVERLAP_MAX_S = 0.5
SPEECH_DBFS = -26.0
HISS_DB = -60  # the quiet room's hiss
LEAD_S = 1.0  # room noise before the first turn and after the last (the floor is learnt there)
CONDITIONS = ("quiet", "floor-60", "floor-50", "floor-40", "babble", "tv")
FLOOR_COLOURS = ("brown", "hum", "fan", "tap")
NOISE_FILES = {"fan": "speech-commands/exercise_bike.opus", "tap": "speech-commands/running_tap.opus"}
BACKGROUND_SNR_DB = (5.0, 15.0)
BABBLE_VOICES = 5
MAINS_HZ = 50.0
TRIM_FRAME_S = 0.02
TRIM_DB = 35.0  # a clean recording: speech is what comes within this of its loudest frame
TRIM_FLOOR_PERCENTILE = 10  # a recording's own noise floor: its quieter frames' level
TRIM_ABOVE_FLOOR_DB = 10.0  # a noisy one: speech also stands this far above that floor ...
TRIM_MIN_DB = 20.0  # ... but the bar never comes nearer the loudest frame than this (soft onsets stay)
TRIM_RUN_FRAMES = 3  # speech starts and ends with this many loud frames in a row: a click is one or two
TRIM_MARGIN_S = 0.05


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
    condition: str = "quiet"
    split: str = "reporting"
    # Every enrolled voice of the household -> its enrollment files (target is one of them).
    enrolled: dict[str, list[str]] = field(default_factory=dict)
    dev_set: str = ""  # the dev set (SETS) the household's voices come from


def require_data() -> None:
    """Stop with one error line where the shared data is not there (every tool built on this one needs it)."""
    from streamsv.errors import StreamsvError

    if datasets.data_root(required=False) is None:
        raise StreamsvError("shared data not found (set STREAMSV_DATA)")


def split_speakers(utts: list[datasets.Utterance]) -> tuple[list[str], list[str]]:
    """(reporting speakers, tuning speakers): alternate in sorted order."""
    speakers = sorted({u.speaker for u in utts})
    return speakers[0::2], speakers[1::2]


def by_speaker(utts: list[datasets.Utterance]) -> dict[str, list[datasets.Utterance]]:
    out: dict[str, list[datasets.Utterance]] = {}
    for u in sorted(utts, key=lambda u: (u.speaker, u.path.name)):
        out.setdefault(u.speaker, []).append(u)
    return out


def enroll_count(utts: list[datasets.Utterance]) -> int:
    """How many of a speaker's first clips are enrolled: ENROLL_TARGET_S of audio, at least
    ENROLL_UTTERANCES, leaving MIN_TALK_UTTERANCES to talk with."""
    import soundfile as sf

    total, n = 0.0, 0
    for u in utts[: max(ENROLL_UTTERANCES, len(utts) - MIN_TALK_UTTERANCES)]:
        if n >= ENROLL_UTTERANCES and total >= ENROLL_TARGET_S:
            break
        total += sf.info(str(u.path)).duration
        n += 1
    return n


def set_utterances(set_name: str) -> list[datasets.Utterance]:
    if set_name == "asc":
        return datasets.dev_set("asc-val") + datasets.dev_set("asc-test")
    return datasets.dev_set(set_name)


def level(wave: np.ndarray, dbfs: float) -> np.ndarray:
    """``wave`` scaled to an RMS of ``dbfs``."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) + 1e-12
    return (wave * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def trim(wave: np.ndarray) -> np.ndarray:
    """``wave`` without its leading and trailing silence, keeping TRIM_MARGIN_S: read clips start
    and end with up to a second of it, a turn does not. Silence is a frame TRIM_DB below the
    loudest, or, in a recording with its own noise floor, under TRIM_ABOVE_FLOOR_DB above that
    floor (the bar at most TRIM_MIN_DB below the loudest); speech begins and ends with
    TRIM_RUN_FRAMES loud frames in a row. A bar relative to the peak alone kept the hiss (and
    the record button's click) before the first word of many speechocean762 clips, so a turn's
    true start lay up to 0.6 s before its voice and a change found at the voice counted as late."""
    hop = int(TRIM_FRAME_S * SAMPLE_RATE)
    n = len(wave) // hop
    if n == 0:
        return wave
    energy = 10 * np.log10(np.mean(np.square(wave[: n * hop].reshape(n, hop), dtype=np.float64), axis=1) + 1e-12)
    peak = energy.max()
    floor = float(np.percentile(energy, TRIM_FLOOR_PERCENTILE))
    bar = min(max(peak - TRIM_DB, floor + TRIM_ABOVE_FLOOR_DB), peak - TRIM_MIN_DB)
    loud = energy >= bar
    runs = np.flatnonzero(np.convolve(loud, np.ones(TRIM_RUN_FRAMES), "valid") == TRIM_RUN_FRAMES)
    if len(runs):
        first, last = runs[0], runs[-1] + TRIM_RUN_FRAMES - 1
    else:  # no run that long (a clip of clicks): its loud frames, whatever they are
        first, last = np.flatnonzero(loud)[[0, -1]]
    margin = int(TRIM_MARGIN_S * SAMPLE_RATE)
    return wave[max(0, first * hop - margin) : min(len(wave), (last + 1) * hop + margin)]


def _turn_audio(utts: list[datasets.Utterance], rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, str]:
    """About ``seconds`` of one speaker: utterances in random order, joined, cut at the length."""
    pieces, n, first = [], 0, None
    for i in rng.permutation(len(utts)):
        wave = trim(datasets.read_audio(utts[i].path))
        first = first or str(utts[i].path)
        pieces.append(wave)
        n += len(wave)
        if n >= seconds * SAMPLE_RATE:
            break
    wave = np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]
    return level(wave, SPEECH_DBFS), first


# ---------------------------------------------------------------- rooms


def coloured_noise(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise of ``n`` samples: white, brown (integrated white), mains hum or a file."""
    if colour == "white":
        x = rng.standard_normal(n)
    elif colour == "brown":
        x = np.cumsum(rng.standard_normal(n))
        x -= np.convolve(x, np.ones(1601) / 1601, mode="same")  # no drift below ~10 Hz
    elif colour == "hum":
        t = np.arange(n) / SAMPLE_RATE
        x = sum(np.sin(2 * np.pi * MAINS_HZ * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 4, 5))
        x = x + 0.1 * rng.standard_normal(n)
    elif colour in NOISE_FILES:
        src = datasets.read_audio(datasets.data_root() / "noise" / NOISE_FILES[colour])
        start = int(rng.integers(0, max(1, len(src) - n)))
        x = np.resize(src[start:], n).astype(np.float64)
    else:
        raise ValueError(f"unknown noise colour {colour!r}")
    return level(np.asarray(x, np.float64), 0.0)


def noise_floor(n: int, dbfs: float, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Half the power white, half ``colour``, at ``dbfs`` RMS in all."""
    mix = coloured_noise("white", n, rng) + coloured_noise(colour, n, rng)
    return level(mix, dbfs)


def babble(n: int, pool: list[datasets.Utterance], rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n, np.float32)
    for i in rng.choice(len(pool), size=BABBLE_VOICES, replace=False):
        voice = np.resize(datasets.read_audio(pool[i].path), n)
        out += level(np.roll(voice, int(rng.integers(0, n))), 0.0)
    return out


def tv(n: int, pool: list[datasets.Utterance], rng: np.random.Generator) -> np.ndarray:
    """One band-limited voice over held harmonic chords: a programme playing in the room."""
    voice = np.resize(datasets.read_audio(pool[int(rng.integers(len(pool)))].path), n).astype(np.float64)
    spectrum = np.fft.rfft(voice)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0  # a small loudspeaker
    voice = np.fft.irfft(spectrum, n)
    music = np.zeros(n)
    t = 0
    while t < n:
        length = int(rng.uniform(0.5, 2.0) * SAMPLE_RATE)
        root = 110 * 2 ** (rng.integers(0, 12) / 12)
        tt = np.arange(min(length, n - t)) / SAMPLE_RATE
        chord = sum(np.sin(2 * np.pi * root * r * h * tt) / h for r in (1, 1.26, 1.5) for h in (1, 2, 3))
        music[t : t + len(tt)] = chord * np.exp(-tt * 1.5)
        t += length
    return level(level(voice, 0.0) + 0.7 * level(music, 0.0), 0.0)


def put_in_room(speech: np.ndarray, condition: str, rng: np.random.Generator, others: list[datasets.Utterance]) -> np.ndarray:
    n = len(speech)
    if condition == "quiet":
        return (speech + level(rng.standard_normal(n), HISS_DB)).astype(np.float32)
    if condition.startswith("floor-"):
        colour = FLOOR_COLOURS[int(rng.integers(len(FLOOR_COLOURS)))]
        return (speech + noise_floor(n, -float(condition.split("-")[1]), colour, rng)).astype(np.float32)
    snr = rng.uniform(*BACKGROUND_SNR_DB)
    if condition == "babble":
        background = babble(n, others, rng)
    elif condition == "tv":
        background = tv(n, others, rng)
    else:
        raise ValueError(f"unknown condition {condition!r}; expected one of {', '.join(CONDITIONS)}")
    hiss = level(rng.standard_normal(n), HISS_DB)
    return (speech + level(background, SPEECH_DBFS - snr) + hiss).astype(np.float32)


# ---------------------------------------------------------------- conversations


def compose(voices: list[str], pool: dict[str, list[datasets.Utterance]], seed: int, split: str,
            turns: int = TURNS, n_enroll: dict[str, int] | None = None) -> tuple[np.ndarray, Conversation, np.random.Generator]:
    """One conversation's talk between ``voices`` before any room (the first ENROLLED are
    enrolled, from their first ``n_enroll[voice]`` clips, default ENROLL_UTTERANCES): the clean
    speech, its truth (condition unset) and the random generator where the room draws on."""
    n_enroll = {v: (n_enroll or {}).get(v, ENROLL_UTTERANCES if k < ENROLLED else 0) for k, v in enumerate(voices)}
    rng = np.random.default_rng(seed)
    spans: list[tuple[str, np.ndarray, str]] = []
    previous = None
    for _ in range(turns):
        speaker = str(rng.choice([v for v in voices if v != previous]))
        wave, path = _turn_audio(pool[speaker][n_enroll[speaker]:], rng, rng.uniform(*TURN_S))
        spans.append((speaker, wave, path))
        previous = speaker
    starts, t = [], LEAD_S
    for i, (_, wave, _) in enumerate(spans):
        if i:
            if rng.random() < OVERLAP_SHARE:
                t -= min(rng.uniform(0.0, OVERLAP_MAX_S), 0.5 * len(spans[i - 1][1]) / SAMPLE_RATE)
            else:
                t += rng.uniform(*GAP_S)
        starts.append(t)
        t += len(wave) / SAMPLE_RATE
    total = int((t + LEAD_S) * SAMPLE_RATE)
    speech = np.zeros(total, np.float32)
    out_turns = []
    for (speaker, wave, path), start in zip(spans, starts):
        i = int(round(start * SAMPLE_RATE))
        speech[i : i + len(wave)] += wave
        out_turns.append(Turn(speaker, round(i / SAMPLE_RATE, 4), round((i + len(wave)) / SAMPLE_RATE, 4), path))
    enrolled = {v: [str(u.path) for u in pool[v][:n_enroll[v]]] for v in voices[:ENROLLED]}
    target = voices[0]
    conv = Conversation(f"{split}-{seed}", target, enrolled[target], out_turns, round(total / SAMPLE_RATE, 4),
                        "", split, enrolled)
    return speech, conv, rng


def in_room(speech: np.ndarray, conv: Conversation, rng: np.random.Generator, condition: str,
            others: list[datasets.Utterance]) -> tuple[np.ndarray, Conversation]:
    """``compose``'s talk put in ``condition`` (``rng`` as compose left it: the same room every time)."""
    audio = put_in_room(speech, condition, rng, others)
    return audio, replace(conv, name=f"{condition}-{conv.name}", condition=condition)


def build(voices: list[str], pool: dict[str, list[datasets.Utterance]], seed: int, condition: str,
          others: list[datasets.Utterance], split: str, turns: int = TURNS,
          n_enroll: dict[str, int] | None = None) -> tuple[np.ndarray, Conversation]:
    """One conversation between ``voices`` (see ``compose``) in ``condition``."""
    speech, conv, rng = compose(voices, pool, seed, split, turns, n_enroll)
    return in_room(speech, conv, rng, condition, others)


def households(split: str, per_set: int, seed: int = 0) -> list[tuple[str, list[str], dict, list[datasets.Utterance]]]:
    """(set, voices, that set's speakers' utterances, other-split utterances for backgrounds), per_set per set."""
    out = []
    for k, set_name in enumerate(SETS):
        utts = set_utterances(set_name)
        reporting, tuning = split_speakers(utts)
        mine, theirs = (tuning, reporting) if split == "tuning" else (reporting, tuning)
        groups = by_speaker(utts)
        # Enough audio to enroll and still talk: the first 3 clips never appear in a turn.
        usable = [s for s in mine if len(groups[s]) >= ENROLL_UTTERANCES + MIN_TALK_UTTERANCES]
        others = [u for s in theirs for u in groups[s]]
        rng = np.random.default_rng(seed * 7919 + k)
        for _ in range(per_set):
            voices = [str(v) for v in rng.choice(usable, size=VOICES, replace=False)]
            out.append((set_name, voices, {v: groups[v] for v in voices}, others))
    return out


@functools.lru_cache(maxsize=2)
def talks(split: str = "reporting", per_set: int = 1, seed: int = 0) -> tuple[tuple, ...]:
    """Every household's talk, composed once (the rooms differ, the talk does not): per household
    (clean speech, truth, the room generator's state, background utterances)."""
    out = []
    for i, (set_name, voices, pool, others) in enumerate(households(split, per_set, seed)):
        n_enroll = {v: enroll_count(pool[v]) for v in voices[:ENROLLED]}  # the stranger talks with every clip
        speech, conv, rng = compose(voices, pool, seed * 1000 + i, split, n_enroll=n_enroll)
        speech.flags.writeable = False
        out.append((speech, replace(conv, dev_set=set_name), rng.bit_generator.state, others))
    return tuple(out)


def conversations(condition: str, split: str = "reporting", per_set: int = 1, seed: int = 0) -> list[tuple[np.ndarray, Conversation]]:
    """The conversations of one condition: ``per_set`` households from each dev set. The same
    households and turns are used in every condition (only the room differs)."""
    out = []
    for speech, conv, state, others in talks(split, per_set, seed):
        rng = np.random.default_rng()
        rng.bit_generator.state = state
        out.append(in_room(speech, conv, rng, condition, others))
    return out


def truth_frames(conv: Conversation, frame_s: float, speaker: str | None = None) -> np.ndarray:
    """Per frame: True when ``speaker`` (default: the target) is speaking at the frame's centre."""
    who = conv.target if speaker is None else speaker
    centres = (np.arange(int(conv.seconds / frame_s)) + 0.5) * frame_s
    out = np.zeros(len(centres), bool)
    for turn in conv.turns:
        if turn.speaker == who:
            out |= (centres >= turn.start) & (centres < turn.end)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write dev-speaker conversations in a room as .wav + .json")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "cache" / "conversations"))
    p.add_argument("--condition", default="floor-50", choices=CONDITIONS)
    p.add_argument("--split", default="reporting", choices=SPLITS)
    p.add_argument("--per-set", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    require_data()
    import soundfile as sf

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for audio, conv in conversations(a.condition, a.split, a.per_set, a.seed):
        sf.write(out / f"{conv.name}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        (out / f"{conv.name}.json").write_text(json.dumps(asdict(conv), indent=1))
        print(f"{conv.name}: {conv.seconds:.1f} s, {len(conv.turns)} turns, voices {sorted({t.speaker for t in conv.turns})}")
    return 0


if __name__ == "__main__":
    from streamsv.errors import run_tool

    run_tool(main)
