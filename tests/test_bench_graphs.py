"""python -m tools.bench_graphs (two exports side by side, and the pipeline without its change
test) and python -m tools.bench_step (step graphs alone): plumbing on the shipped model; no
figure is asserted against a target. No torch needed."""
from __future__ import annotations

import json

from streamsv import bench, load_embedder
from streamsv.embedder import DEFAULT_WEIGHTS

from tools import bench_graphs

QUICK = ["--synthetic", "--seconds", "3", "--realtime-s", "0", "--warmup-s", "0", "--no-startup", "--json"]


def _embed_calls(embedder, overrides=None) -> int:
    """How often the bench pipeline embeds whole audio (its 3 profiles, then each change test)."""
    calls = []
    original = embedder.embed
    embedder.embed = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        bench.run_pipeline(embedder, bench.synthetic_speech(4.0, seed=3), realtime=False, overrides=overrides)
    finally:
        del embedder.embed
    return len(calls)


def test_nochange_system_runs_the_pipeline_without_the_change_test():
    nochange = bench_graphs.KIT.systems["fp32-nochange"]
    assert nochange.overrides == {"change.enabled": False} and not bench_graphs.KIT.systems["fp32"].overrides
    emb = load_embedder()
    assert _embed_calls(emb, nochange.overrides) == bench.N_PROFILES
    # The offline change test embeds its recent second (the default pools the stream's frames).
    assert _embed_calls(emb, {"change.embedding": "offline"}) > bench.N_PROFILES


def test_systems_side_by_side_and_before_needs_a_model(capsys):
    assert bench_graphs.main(["--systems", "before-fp32,fp32,fp32-nochange", *QUICK]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["systems"]) == ["fp32", "fp32-nochange"]
    assert any(n.startswith("before-fp32: skipped") for n in result["notes"])
    for figures in (s["figures"] for s in result["systems"].values()):
        assert figures["rtf"] > 0 and figures["decisions"] > 0


def test_before_is_the_graph_given_with_model(capsys):
    assert bench_graphs.main(["--systems", "before-int8,int8", "--model", str(DEFAULT_WEIGHTS), *QUICK]) == 0
    systems = json.loads(capsys.readouterr().out)["systems"]
    assert str(DEFAULT_WEIGHTS) in systems["before-int8"]["desc"] and systems["int8"]["desc"].startswith("shipped")
    assert all("int8" in s["desc"] for s in systems.values())


def test_bench_step_times_graphs_side_by_side(capsys, tmp_path):
    from tools import bench_step

    int8 = DEFAULT_WEIGHTS.with_name("student.int8.onnx")
    assert bench_step.main([str(DEFAULT_WEIGHTS), str(int8), "--frames", "3", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("3 frames a call") and len(lines) == 3
    assert str(DEFAULT_WEIGHTS) in lines[1] and "(1.00x)" in lines[1] and str(int8) in lines[2]
    pool = DEFAULT_WEIGHTS.with_name("student.pool.onnx")   # a pooling graph is timed on a window
    assert bench_step.main([str(pool), "--frames", "150", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("150 frames a call") and str(pool) in lines[1]
    assert float(lines[1].split("p50 ")[1].split()[0]) > 0
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    assert bench_step.main([str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
