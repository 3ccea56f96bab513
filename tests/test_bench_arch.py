"""python -m tools.bench_arch: candidate architectures exported untrained and timed beside the
shipped one. Plumbing on a tiny architecture; no figure is asserted against a target. Needs torch."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from tools import bench_arch  # noqa: E402

TINY = "tiny:width=32,n_blocks=1,chunk_frames=8,conv_kernel=3,groups=2,attention_hidden=16"
QUICK = ["--synthetic", "--seconds", "3", "--warmup-s", "0", "--rounds", "1"]


def test_a_tiny_architecture_exports_and_times_beside_the_shipped_baseline(capsys):
    assert bench_arch.main(["--candidates", bench_arch.BASELINE, "--arch", TINY, "--variants", "fp32", "--no-trained",
                            "--startup", "--json", *QUICK]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == [bench_arch.BASELINE, "tiny"]  # the baseline is the first row
    base, tiny = rows[bench_arch.BASELINE], rows["tiny"]
    assert base["params"] == 508_994 and base["desc"] == "as shipped"  # the shipped dimensions, read from its graph
    assert tiny["params"] < base["params"] and tiny["step_macs_per_push"] < base["step_macs_per_push"]
    assert tiny["nodes"] < base["nodes"]
    for row in rows.values():
        assert row["step_macs_per_frame_push"] < row["step_macs_per_push"]
        assert 0 < row["step1_p50_ms"] and 0 < row["step25_p50_ms"] <= row["step25_p90_ms"]
        for change in ("pipeline_on", "pipeline_off"):
            assert row[change]["rtf"] > 0 and row[change]["decisions"] > 0
        assert row["pipeline_on"]["ready_s"] > 0 and row["pipeline_on"]["torch_loaded"] is False  # the child: no torch
    table = bench_arch.report(result)
    baseline_lines = [line for line in table.splitlines() if line.startswith("| shipped/fp32 |")]
    assert len(baseline_lines) == 3 and "(1.0x)" in baseline_lines[0]  # a row in each table; its ratio to itself
    assert any(line.startswith("| tiny/fp32 |") for line in table.splitlines())
    assert "meet the speed bar with the change test off:" in table


@pytest.mark.parametrize("args, message", [
    (["--arch", "x:width=abc"], "width must be a whole number"),
    (["--arch", "x:depth=3"], "is not key=value"),
    (["--arch", "x:width=100,groups=3"], "not a multiple of groups"),
    (["--arch", "x:chunk_frames=4"], "chunk_frames 4 must be at least conv_kernel"),
    (["--arch", "shipped:width=64"], "is taken"),
    (["--candidates", "huge"], "unknown candidate 'huge'"),
    (["--variants", "fp16"], "--variants"),
])
def test_bad_arguments_are_one_line_errors(capsys, args, message):
    assert bench_arch.main([*args, *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
