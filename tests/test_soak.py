"""The soak harness: a 10-minute-of-audio run through the whole pipeline, and its pass/fail rules."""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_soak():
    from tools import soak

    return soak


def have_speech() -> bool:
    d = Path(os.environ.get("STREAMSV_DATA") or REPO.parent / "shared" / "data")
    return (d / "speechocean762" / "dev-speakers.txt").is_file() or shutil.which("espeak-ng") is not None


@pytest.mark.skipif(not have_speech(), reason="needs ../shared/data or espeak-ng for speech")
def test_ten_minute_soak_passes():
    res = subprocess.run([sys.executable, "-m", "tools.soak", "--minutes", "10"], capture_output=True, text=True,
                         cwd=REPO, timeout=600)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert out.rstrip().endswith("soak: PASS"), out
    m = re.search(r"soak: audio ([\d.]+) h in ([\d.]+) s wall", out)
    assert m and abs(float(m.group(1)) - 10 / 60) < 0.01, out
    growth = float(re.search(r"growth ([+-][\d.]+) MB", out).group(1))
    assert growth <= 10.0
    events = re.search(r"soak: events (\{.*\});", out).group(1)
    # speech really went through: segments opened and closed, decisions made, reloads served
    for kind in ("speech_start", "speech_end", "decision", "profiles_reloaded"):
        assert f"'{kind}'" in events, events


def sample(mod, audio_s, rss, **sizes):
    return mod.Sample(audio_s, audio_s / 10, rss, {k: v for k, v in sizes.items()})


def make_soak(mod, samples):
    s = mod.Soak(minutes=10, sample_s=60, warmup_s=60, reload_every_s=0)
    s.samples = samples
    s.events = collections.Counter()
    return s


def test_report_passes_flat_rss_and_bounded_containers(capsys):
    mod = load_soak()
    samples = [sample(mod, t, 300.0 + (0.1 if t > 60 else 0), q=(5, None), lat=(min(t, 100), 100)) for t in range(0, 601, 60)]
    assert mod.report(make_soak(mod, samples), samples[-1], 30.0, 10.0) == 0
    assert capsys.readouterr().out.rstrip().endswith("soak: PASS")


def test_report_fails_on_rss_growth(capsys):
    mod = load_soak()
    samples = [sample(mod, t, 300.0 + t / 30, q=(5, None)) for t in range(0, 601, 60)]  # +18 MB
    assert mod.report(make_soak(mod, samples), samples[-1], 30.0, 10.0) == 1
    assert "growth +18.0 MB" in capsys.readouterr().out


def test_report_fails_on_a_growing_container(capsys):
    mod = load_soak()
    samples = [sample(mod, t, 300.0, pending=(t // 10, None)) for t in range(0, 601, 60)]
    assert mod.report(make_soak(mod, samples), samples[-1], 30.0, 10.0) == 1
    assert "growing containers: pending 30->60" in capsys.readouterr().out


def test_container_sizes_finds_nested_buffers():
    mod = load_soak()

    class Inner:
        def __init__(self):
            self.frames = collections.deque(range(7), maxlen=10)

    class Outer:
        def __init__(self):
            self.inner = Inner()
            self.pending = [1, 2, 3]
            self.name = "x"

    sizes = mod.container_sizes(Outer(), "p")
    assert sizes == {"p.inner.frames": (7, 10), "p.pending": (3, None)}
