"""streamsv bench plumbing (an untrained student; no figure is asserted against a target) and the
detection benchmark's frame bookkeeping."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from streamsv import bench
from streamsv.errors import StreamsvError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_detection as bd  # noqa: E402
import make_conversations as mc  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


def test_synthetic_speech_is_taken_for_speech_by_the_vad():
    from streamsv.vad import voiced

    wave = bench.synthetic_speech(4.0)
    assert wave.dtype == np.float32 and len(wave) == 64000
    assert sum(map(len, voiced(wave))) / 16000 > 3.0


def test_pipeline_run_times_every_hop():
    from streamsv.embedder import Embedder

    wave = bench.synthetic_speech(4.0, seed=2)
    res = bench.run_pipeline(Embedder.untrained(seed=0), wave, realtime=False)
    # Decisions from min_speech_s (1 s) on, every 0.5 s hop, for ~4 s of voiced audio.
    assert 4 <= res.decisions <= 7
    assert len(res.hop_ms) == res.decisions and all(h > 0 for h in res.hop_ms)
    assert 0 < res.busy_s and res.audio_s == pytest.approx(4.0, abs=0.05)


def test_bench_json_has_every_figure(capsys):
    rc = bench.main(["--model", "untrained", "--audio", "", "--seconds", "3", "--realtime-s", "2",
                     "--no-teacher", "--no-startup", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    student = out["systems"]["student"]
    assert student["once"]["params"] > 0 and student["once"]["macs_per_s"] > 0
    assert "all" not in student  # the numpy runtime is single-threaded: no second setting to time
    for threads in ("1",):
        figs = student[threads]
        for key in ("hop_p50_ms", "hop_p95_ms", "hop_p99_ms", "rtf", "latency_p50_ms", "latency_p95_ms"):
            assert figs[key] is not None and figs[key] > 0, key
        assert figs["hop_p50_ms"] <= figs["hop_p95_ms"] <= figs["hop_p99_ms"]


def test_int8_variant_keeps_embeddings_and_counts():
    from streamsv.embedder import Embedder

    emb = Embedder.untrained(seed=0)
    q = bench.apply_variant(emb, "int8")
    wave = bench.synthetic_speech(3.0)
    assert float(emb.embed(wave) @ q.embed(wave)) > 0.99
    assert q.num_parameters == emb.num_parameters and q.fingerprint == emb.fingerprint
    assert any("Quantized" in type(m).__name__ or "quantized" in type(m).__module__ for m in q.encoder.network.modules())
    for variant in ("torch", "numpy-exact", "numpy-tanh"):
        assert float(emb.embed(wave) @ bench.apply_variant(emb, variant).embed(wave)) > 0.9999, variant
    assert bench.apply_variant(emb, "numpy") is emb
    with pytest.raises(ValueError):
        bench.apply_variant(emb, "nope")


def test_bench_refuses_bad_options():
    with pytest.raises(StreamsvError, match="--seconds"):
        bench.main(["--seconds", "0.5"])
    with pytest.raises(StreamsvError, match="--realtime-s"):
        bench.main(["--realtime-s", "1"])


def test_startup_child_reports_ready_and_memory(tmp_path):
    import soundfile as sf

    path = tmp_path / "a.wav"
    sf.write(path, bench.synthetic_speech(2.5), 16000, subtype="FLOAT")
    out = bench.startup("student", "untrained", str(path))
    assert 0 < out["ready_s"] < out["first_decision_s"]
    assert out["rss_steady_mb"] > 10 and out["rss_peak_mb"] >= out["rss_steady_mb"]


# ------------------------------------------------------------ detection benchmark bookkeeping


def test_detection_trace_holds_decisions_until_the_next_event():
    events = [
        {"event": "speech_start", "t": 0.2},
        {"event": "decision", "t": 1.2, "accepted": True, "speaker": "target"},
        {"event": "decision", "t": 1.7, "accepted": False, "speaker": None},
        {"event": "decision", "t": 2.2, "accepted": True, "speaker": "target"},
        {"event": "speech_end", "t": 2.5},
    ]
    trace = bd.detection_trace(events, 300)
    on = np.flatnonzero(trace)
    assert trace[120:170].all() and trace[220:250].all()
    assert len(on) == 50 + 30


def test_truth_frames_and_summary():
    conv = mc.Conversation("c", "a", [], [mc.Turn("a", 0.5, 1.5, ""), mc.Turn("b", 2.0, 3.0, "")], 4.0)
    truth = mc.truth_frames(conv, 0.01)
    assert truth.sum() == 100 and truth[50:150].all()
    part = {"tp": 80, "tn": 290, "fa": 10, "miss": 20, "cpu_s": 0.4, "audio_s": 4.0, "delays": [1.0]}
    s = bd.summarise([part], 0.5)
    assert s["detection_accuracy"] == pytest.approx(92.5)
    assert s["detection_error_rate"] == pytest.approx(30.0)
    assert s["core_s_per_audio_s"] == pytest.approx(0.1)
