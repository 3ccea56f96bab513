"""``streamsv demo``: the whole system on a machine with no microphone.

Synthesises three voices with espeak-ng into a temporary folder, enrolls two
of them into a temporary profiles folder (the user's profiles are never
touched), builds a conversation with pauses in which the third, unenrolled
voice also speaks, and plays it through the full live pipeline in real time.
At the end it compares each turn's summary decision with who really spoke.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .errors import StreamsvError, shown
from .features import SAMPLE_RATE

if TYPE_CHECKING:
    from .embedder import Embedder
    from .profiles import Profile, ProfileStore

PAUSE_S = 1.2
STRANGER = "stranger"   # the voice that is never enrolled


@dataclass(frozen=True)
class Voice:
    name: str
    espeak: tuple[str, ...]     # espeak-ng voice/pitch/speed arguments


VOICES = (
    Voice("ada", ("-v", "en-us+f4", "-p", "65", "-s", "150")),
    Voice("bob", ("-v", "en-gb+m3", "-p", "30", "-s", "135")),
    Voice(STRANGER, ("-v", "en-gb-scotland+m7", "-p", "45", "-s", "165")),   # never enrolled
)

ENROLL_LINES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to water the plants in the kitchen every morning.",
    "I usually take the early train to work when the weather is nice.",
    "Our neighbours are planning a big party for the end of the summer.",
    "Could you tell me how far it is to the nearest post office?",
)

CONVERSATION = (
    ("ada", "Good morning. Did you sleep well last night? I heard the storm around three."),
    ("bob", "Not really, the wind kept banging the shutters, so I got up and made some tea."),
    ("ada", "We should fix those shutters this weekend before the next storm arrives."),
    ("stranger", "Hello there, sorry to interrupt. Is this the way to the railway station?"),
    ("bob", "Yes, go straight ahead past the bakery and turn left at the old church."),
    ("ada", "And if you reach the bridge, you have gone a little too far."),
)


def espeak_available() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise StreamsvError("streamsv demo synthesises its voices with espeak-ng, which is not installed "
                            "(Debian/Ubuntu/Raspberry Pi OS: sudo apt install espeak-ng)")
    return exe


def synthesize(voice: Voice, text: str, path: Path) -> np.ndarray:
    """Speak ``text`` with ``voice`` into ``path`` (WAV) and return it as 16 kHz mono float32."""
    from .sources import load_audio

    exe = espeak_available()
    try:
        subprocess.run([exe, *voice.espeak, "-w", str(path), text], check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as e:
        raise StreamsvError(f"espeak-ng failed for voice {voice.name}: {e.stderr.decode(errors='replace').strip()}") from None
    return load_audio(path)


def build_conversation(folder: Path, pause_s: float = PAUSE_S) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """The demo conversation as one waveform, plus (speaker, start_s, end_s) per turn."""
    voices = {v.name: v for v in VOICES}
    pause = np.zeros(int(pause_s * SAMPLE_RATE), dtype=np.float32)
    parts, turns, t = [pause], [], pause_s
    for i, (who, text) in enumerate(CONVERSATION):
        wave = synthesize(voices[who], text, folder / f"turn{i:02d}_{who}.wav")
        parts += [wave, pause]
        turns.append((who, t, t + len(wave) / SAMPLE_RATE))
        t += (len(wave) + len(pause)) / SAMPLE_RATE
    return np.concatenate(parts), turns


def enrollment_audio(folder: Path, voice: Voice) -> list[np.ndarray]:
    return [synthesize(voice, line, folder / f"enroll_{voice.name}_{i}.wav") for i, line in enumerate(ENROLL_LINES)]


def enroll_household(embedder: "Embedder", store: "ProfileStore", folder: Path) -> Iterator[tuple[Voice, "Profile"]]:
    """Enroll every voice but the stranger from its synthesised lines (written into ``folder``)
    into ``store``, replacing a profile of the same name; yields (voice, profile) as each is saved."""
    from .profiles import enroll

    for voice in VOICES:
        if voice.name != STRANGER:
            profile, _ = enroll(embedder, voice.name, enrollment_audio(folder, voice))
            store.save(profile, force=True)
            yield voice, profile


def turn_of(t: float, turns: list[tuple[str, float, float]]) -> str | None:
    for who, a, b in turns:
        if a <= t <= b + 0.35:   # the VAD's kept tail runs a little past the last word
            return who
    return None


def make_keep_folder(keep: Path) -> None:
    """``--keep``'s folder, made before any synthesis so that a bad path fails at once, in one line.
    A folder that already holds files is refused: the demo's copies would replace any of the same name."""
    try:
        keep.mkdir(parents=True, exist_ok=True)
        if any(keep.iterdir()):
            raise StreamsvError(f"--keep {shown(keep)}: the folder is not empty; give a new or empty one "
                                "(the demo's audio would replace files of the same name)")
    except OSError as e:
        raise StreamsvError(f"--keep {keep}: cannot make this folder ({e.strerror or e})") from None


def save_copies(folder: Path, keep: Path) -> None:
    """``--keep``: copy the generated audio."""
    make_keep_folder(keep)
    try:
        for f in folder.glob("*.wav"):
            shutil.copy(f, keep / f.name)
    except OSError as e:
        raise StreamsvError(f"--keep {keep}: cannot save the demo audio there ({e.strerror or e})") from None


def run_demo(cfg, embedder, realtime: bool = True, keep: Path | None = None) -> dict:
    """Synthesise, enroll, play, and report how well the turns were recognised."""
    import soundfile as sf
    from rich.console import Console

    from .app import run_listen
    from .profiles import ProfileStore

    espeak_available()
    if keep is not None:
        make_keep_folder(keep)
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="streamsv-demo-") as tmp:
        folder = Path(tmp)
        store = ProfileStore(folder / "profiles")
        console.print(f"[bold]streamsv demo[/]: synthesising voices with espeak-ng in {folder}")
        for v, prof in enroll_household(embedder, store, folder):
            mean, low = prof.consistency()
            console.print(f"  enrolled [green]{v.name}[/] ({' '.join(v.espeak)}): {prof.speech_s:.1f} s speech, "
                          f"consistency {mean:.2f}")
        wave, turns = build_conversation(folder)
        conv = folder / "conversation.wav"
        sf.write(conv, wave, SAMPLE_RATE)
        if keep is not None:
            save_copies(folder, keep)
        console.print(f"  conversation: {len(turns)} turns, {len(wave) / SAMPLE_RATE:.1f} s "
                      f"(the voice 'stranger' is not enrolled and should come out as unknown)")
        for who, a, b in turns:
            console.print(f"    {a:6.2f}-{b:6.2f} s  {who}")
        # Synthetic voices are not news for Home Assistant: the demo never publishes to MQTT.
        dcfg = cfg.with_overrides(**{"audio.source": str(conv), "profiles.dir": str(store.dir), "mqtt.url": None})
        decisions: list[dict] = []
        run_listen(dcfg, embedder, realtime=realtime, title="streamsv demo",
                   on_event=lambda ev: decisions.append(ev) if ev["event"] == "decision" else None)
    right = total = 0
    for d in decisions:
        who = turn_of(d["t"], turns)
        if who is None:
            continue
        total += 1
        expect = who if who != STRANGER else None
        right += d["speaker"] == expect
    acc = right / total if total else 0.0
    console.print(f"[bold]demo result[/]: {right}/{total} in-turn decisions correct ({acc:.0%}); model {embedder.fingerprint}")
    if total and acc < 0.8:
        console.print("[yellow]this model does not separate the synthetic voices well; "
                      "real voices are what it was trained on[/]")
    return {"correct": right, "total": total, "accuracy": acc}
