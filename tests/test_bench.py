"""streamsv bench and python -m tools.bench plumbing (the shipped model; no figure is asserted
against a target). No torch needed. (The detection benchmark's bookkeeping: test_bench_detection.py.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamsv import bench
from streamsv.embedder import DEFAULT_WEIGHTS
from streamsv.errors import StreamsvError

from tools import bench as tools_bench

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("hop_p50_ms", "hop_p95_ms", "hop_p99_ms", "rtf", "latency_p50_ms", "latency_p95_ms", "stage_step_ms")
QUICK = ["--seconds", "3", "--realtime-s", "2", "--warmup-s", "1", "--no-startup", "--json"]
SHIPPED_PARAMS = 508_994     # the shipped graph's (two blocks)
BASELINE_PARAMS = 1_090_374  # tools/baseline's numpy runtime: the base's six blocks


def test_synthetic_speech_is_taken_for_speech_by_the_vad():
    from streamsv.vad import voiced

    wave = bench.synthetic_speech(4.0)
    assert wave.dtype == np.float32 and len(wave) == 64000
    assert sum(map(len, voiced(wave))) / 16000 > 3.0


def test_resonator_is_the_two_pole_filter_it_stands_for():
    """numpy's truncated impulse response = scipy's recursive filter, to far below any level
    that matters (the daemon does not depend on scipy; the synthetic audio must not change)."""
    lfilter = pytest.importorskip("scipy.signal").lfilter
    x = np.random.default_rng(0).standard_normal(3000)
    for hz in (300.0, 1500.0, 3100.0):
        r = np.exp(-np.pi * bench.FORMANT_BANDWIDTH_HZ / 16000)
        reference = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * hz / 16000), r * r], x)
        assert np.max(np.abs(bench.resonator(x, hz) - reference)) < 1e-6 * np.max(np.abs(reference))


def test_pipeline_run_times_every_hop_and_its_stages(embedder):
    wave = bench.synthetic_speech(4.0, seed=2)
    res = bench.run_pipeline(embedder, wave, realtime=False, stages=True)
    # Decisions from min_speech_s (1 s) on, every 0.5 s hop, for ~4 s of voiced audio.
    assert 4 <= res.decisions <= 7
    assert len(res.hop_ms) == res.decisions and all(h > 0 for h in res.hop_ms)
    assert 0 < res.busy_s and res.audio_s == pytest.approx(4.0, abs=0.05)
    # Every hop pushes audio through log-mel and the model step, and pools the window.
    for stage in ("vad", "log_mel", "step", "pool"):
        assert len(res.stage_ms[stage]) == res.decisions and all(v > 0 for v in res.stage_ms[stage]), stage
    parts = [sum(res.stage_ms[k][i] for k in ("vad", "log_mel", "step", "pool", "rest")) for i in range(res.decisions)]
    assert np.allclose(parts, res.hop_ms)
    # The wrappers are gone afterwards.
    from streamsv import features, vad

    assert "encode" not in vars(embedder.encoder) and features.StreamingLogMel.push.__name__ == "push"
    assert vad.Segmenter.process.__name__ == "process"


def test_daemon_bench_json_has_every_figure_side_by_side(capsys):
    """The daemon's bench measures what the daemon has: fp32 and int8, on synthetic audio that
    the result names as such when no --audio is given."""
    assert bench.main(["--repeat", "2", *QUICK]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["systems"]) == ["fp32", "int8"] and out["target_system"] == "fp32"
    assert out["audio"] == bench.SYNTHETIC_AUDIO and out["prog"] == "streamsv bench"
    for name, system in out["systems"].items():
        figs = system["figures"]
        assert figs["params"] == SHIPPED_PARAMS, name
        assert len(system["runs"]) == 2
        for key in FIGURES:
            assert figs[key] is not None and figs[key] > 0, (name, key)
            lo, hi = figs[key + "_spread"]
            assert lo <= figs[key] <= hi
    assert out["systems"]["fp32"]["figures"]["macs_per_s"] > 0  # counted at export, no torch here
    assert "int8" in out["systems"]["int8"]["desc"]


def test_tools_bench_adds_the_numpy_baseline_on_the_same_audio(capsys, tmp_path):
    """python -m tools.bench: the baseline beside the daemon's graphs, one run, one recording."""
    import soundfile as sf

    path = tmp_path / "talk.wav"
    sf.write(path, bench.synthetic_speech(3.0, seed=4), 16000)
    assert tools_bench.main(["--systems", "numpy-baseline,fp32", "--audio", str(path), *QUICK]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["systems"]) == ["numpy-baseline", "fp32"] and out["audio"] == f"file {path}"
    assert "tools/baseline" in out["systems"]["numpy-baseline"]["desc"] and out["prog"] == "tools.bench"
    assert out["systems"]["numpy-baseline"]["figures"]["params"] == BASELINE_PARAMS
    assert out["systems"]["fp32"]["figures"]["params"] == SHIPPED_PARAMS
    for name, system in out["systems"].items():
        assert all(system["figures"][key] > 0 for key in FIGURES), name
    # The baseline runs only its own weights: beside another model it is left out, with a note.
    assert tools_bench.main(["--systems", "numpy-baseline,fp32", "--model", str(DEFAULT_WEIGHTS), "--audio", str(path),
                             *QUICK]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["systems"]) == ["fp32"] and any(n.startswith("numpy-baseline: skipped (--model given") for n in out["notes"])


def test_tools_bench_without_dev_speech_says_so(monkeypatch, tmp_path):
    """No shared data (or a data folder without the set) and no --audio: one clear error line and
    exit status 2, not a silent switch to synthetic audio."""
    (tmp_path / "empty").mkdir()
    for data in (tmp_path / "missing", tmp_path / "empty"):
        monkeypatch.setenv("STREAMSV_DATA", str(data))
        with pytest.raises(StreamsvError, match=r"no dev speech .*; pass --audio FILE, or --synthetic"):
            tools_bench.main(["--systems", "fp32", *QUICK])
    out = subprocess.run([sys.executable, "-m", "tools.bench", "--systems", "fp32", "--no-startup"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: bench: no dev speech") and out.stderr.count("\n") == 1, out.stderr


def test_bench_on_audio_without_speech_says_so_and_claims_no_target(capsys, tmp_path):
    # Silence makes no decision: RTF is then the VAD's alone, and no "ok" may stand beside it.
    import soundfile as sf

    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(5 * 16000, np.float32), 16000)
    assert bench.main(["--systems", "fp32", "--audio", str(path), "--seconds", "5", "--repeat", "1",
                       "--realtime-s", "0", "--no-startup"]) == 0
    out = capsys.readouterr().out
    assert "fp32: no decision was made" in out
    rtf = next(line for line in out.splitlines() if line.startswith("| RTF"))
    assert " ok" not in rtf and "MISSED" not in rtf, rtf


def test_report_shows_ratios_against_the_first_system():
    figures = {"hop_p95_ms": 4.0, "rtf": 0.01}
    result = {"audio": "a", "clock": "wall", "audio_s": 3, "repeat": 1, "notes": [], "target_system": "fp32",
              "systems": {"numpy-baseline": {"desc": "n", "figures": figures},
                          "fp32": {"desc": "f", "figures": {"hop_p95_ms": 2.0, "rtf": 0.0025}}}}
    text = bench.report(result)
    assert "| hop compute p95 ms | 4.00 | 2.00 (2.0x) | <= 2 ok |" in text
    assert "| RTF (whole pipeline) | 0.0100 | 0.0025 (4.0x) | <= 0.0025 ok |" in text


def test_bench_refuses_bad_options():
    with pytest.raises(StreamsvError, match="--seconds"):
        bench.main(["--seconds", "0.5"])
    with pytest.raises(StreamsvError, match="--realtime-s"):
        bench.main(["--realtime-s", "1"])
    with pytest.raises(StreamsvError, match="unknown system"):
        bench.main(["--systems", "fp32,numpy", "--seconds", "2", "--no-startup"])
    with pytest.raises(StreamsvError, match="unknown system 'teacher'"):  # a tools.bench system, not the daemon's
        bench.main(["--systems", "fp32,teacher", "--seconds", "2", "--no-startup"])


def test_startup_child_reports_ready_and_memory(tmp_path):
    import soundfile as sf

    path = tmp_path / "a.wav"
    sf.write(path, bench.synthetic_speech(2.5), 16000, subtype="FLOAT")
    for kind, module in (("fp32", "streamsv.bench"), ("numpy-baseline", "tools.bench")):
        out = bench.startup(kind, None, str(path), module)
        assert 0 < out["ready_s"] < out["first_decision_s"], kind
        assert out["torch_loaded"] is False, kind
        assert out["rss_steady_mb"] > 10 and out["rss_peak_mb"] >= out["rss_steady_mb"], kind



def test_startup_child_reads_its_profiles_and_caches_bytecode(tmp_path):
    # As an installed daemon starts: profiles read, not embedded, and no source compiled (docs/performance.md).
    import soundfile as sf

    path, profiles, cache = tmp_path / "a.wav", tmp_path / "p.npz", tmp_path / "bytecode"
    wave = bench.synthetic_speech(2.5)
    sf.write(path, wave, 16000, subtype="FLOAT")
    emb, _ = bench.load_student("fp32", None)
    np.savez(profiles, **bench.bench_profiles(emb, wave))
    out = bench.startup("fp32", None, str(path), "streamsv.bench", str(profiles), str(cache))
    assert 0 < out["ready_cpu_s"] and 0 < out["ready_s"] < out["first_decision_s"]
    assert list(cache.rglob("streamsv/pipeline.*.pyc")), "the child wrote no bytecode into the cache"
