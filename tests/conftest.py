"""Shared fixtures: the shipped model (ONNX Runtime, no torch), real speech when available.

No torch here: the daemon's tests run where torch is not installed. Tests that need torch (the
parity of the ONNX graphs with the torch definition, training) import it themselves, marked
``torch`` or behind ``pytest.importorskip("torch")``."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SR = 16000


def data_dir() -> Path | None:
    """../shared/data beside the checkout, or $STREAMSV_DATA; None when absent."""
    d = Path(os.environ.get("STREAMSV_DATA") or REPO.parent / "shared" / "data")
    return d if d.is_dir() else None


def dev_speakers() -> list[str]:
    d = data_dir()
    if d is None:
        return []
    f = d / "speechocean762" / "dev-speakers.txt"
    return [s.strip() for s in f.read_text().split() if s.strip()] if f.is_file() else []


def dev_utterances(speaker: str) -> list[Path]:
    d = data_dir()
    return sorted((d / "speechocean762" / "train" / speaker).glob("*.opus")) if d else []


@pytest.fixture(scope="session")
def embedder():
    """The shipped model on ONNX Runtime, one thread: what the daemon runs."""
    from streamsv.embedder import load_embedder

    return load_embedder()


@pytest.fixture(scope="session")
def untrained(embedder):
    """Plumbing tests' model (the name is historical): now the shipped model, since a random
    model would need torch to export, and the daemon's tests run without it."""
    return embedder


def _espeak(text: str, path: Path, voice: str = "en-us+m3") -> np.ndarray | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    subprocess.run([exe, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    from streamsv.sources import load_audio

    return load_audio(path)


@pytest.fixture(scope="session")
def speech_clips(tmp_path_factory) -> list[np.ndarray]:
    """A few seconds-long clips of real speech (dev speaker), else espeak-ng speech; skip if neither."""
    from streamsv.sources import load_audio

    spk = dev_speakers()
    if spk:
        return [load_audio(p) for p in dev_utterances(spk[0])[:3]]
    tmp = tmp_path_factory.mktemp("espeak")
    clips = [_espeak(t, tmp / f"{i}.wav") for i, t in enumerate((
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Please remember to water the plants in the kitchen every morning.",
        "I usually take the early train to work when the weather is nice."))]
    if clips[0] is None:
        pytest.skip("needs ../shared/data or espeak-ng for real speech")
    return clips


def with_pauses(clips: list[np.ndarray], pause_s: float = 1.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate clips with silence between; returns audio and (start, end) of each clip."""
    pause = np.zeros(int(pause_s * SR), dtype=np.float32)
    parts, spans, t = [pause], [], pause_s
    for c in clips:
        parts += [c.astype(np.float32), pause]
        spans.append((t, t + len(c) / SR))
        t += (len(c) + len(pause)) / SR
    return np.concatenate(parts), spans


@pytest.fixture
def untrained_cli(monkeypatch, untrained, tmp_path):
    """The CLI on the session's shipped model (loaded once), with profiles and HOME in tmp_path
    (no user config leaks in)."""
    from streamsv import app

    monkeypatch.setattr(app, "load_model", lambda path: untrained)
    monkeypatch.delenv("STREAMSV_CONFIG", raising=False)
    monkeypatch.setenv("STREAMSV_PROFILES_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HOME", str(tmp_path))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr); a traceback is always a failure."""
    from streamsv import cli

    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def refused(result, *needles: str) -> str:
    """A ``run_cli`` result that is a usage refusal: exit 2 and exactly one ``error:`` line on
    stderr, holding every needle; returns that line."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def clips(tmp_path, speech_clips) -> list[Path]:
    """``speech_clips`` written as WAV files in tmp_path."""
    import soundfile as sf

    paths = []
    for i, c in enumerate(speech_clips):
        p = tmp_path / f"clip{i}.wav"
        sf.write(p, c, SR)
        paths.append(p)
    return paths


def twice(path: Path) -> list[str]:
    """``path`` and a copy of it beside it: a recording's speech twice over for ``enroll --from``
    (which refuses the same file given twice)."""
    copy = path.with_name(path.stem + "-again" + path.suffix)
    if not copy.exists():
        copy.write_bytes(path.read_bytes())
    return [str(path), str(copy)]


def speaker_folders(root: Path, speakers: list[str], per_speaker: int) -> Path:
    """``calibrate``'s layout: one sub-folder per dev speaker under root, holding links to the
    first ``per_speaker`` of their utterances (the data is never copied)."""
    for s in speakers:
        (root / s).mkdir(parents=True)
        for u in dev_utterances(s)[:per_speaker]:
            (root / s / u.name).symlink_to(u)
    return root


def demo_household(folder: Path):
    """The demo's ada and bob enrolled on the shipped model into folder/profiles, their audio
    synthesised in folder: (embedder, store). Skips without espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng for the voices")
    from streamsv.demo import enroll_household
    from streamsv.embedder import load_embedder
    from streamsv.profiles import ProfileStore

    emb = load_embedder()
    store = ProfileStore(folder / "profiles")
    list(enroll_household(emb, store, folder))
    return emb, store
