"""python -m tools.bench_ab: a git revision's daemon package timed beside the checkout's, round-robin
in fresh processes. Plumbing only: no figure is asserted against a target (needs the checkout's git)."""
from __future__ import annotations

import json
import shutil

import pytest

from tools import bench_ab

needs_git = pytest.mark.skipif(shutil.which("git") is None or not (bench_ab.REPO / ".git").exists(),
                               reason="needs git and the checkout's history")
QUICK = ["--synthetic", "--seconds", "2", "--warmup-s", "0", "--repeat", "1"]


def test_round_robin_puts_each_side_first_as_often():
    assert bench_ab.order(1) == ["base", "this"]
    assert bench_ab.order(4) == ["base", "this", "this", "base", "base", "this", "this", "base"]


def test_report_gives_medians_spreads_and_the_ratio():
    def run(rtf):
        return {setting: {"rtf": rtf, "hop_p50_ms": 10 * rtf} for setting in bench_ab.CHANGE_TEST}

    summary = bench_ab.summarise({"base": [run(0.004), run(0.006), run(0.005)], "this": [run(0.002), run(0.004), run(0.001)]})
    assert summary["base"]["change off"]["rtf"] == (0.005, 0.004, 0.006)
    assert summary["paired"]["change on"]["rtf"] == (2.0, 1.5, 5.0)  # 0.004/0.002, 0.006/0.004, 0.005/0.001
    table = bench_ab.report(summary, "header")
    assert "| RTF | 0.00500 [0.00400-0.00600] | 0.00200 [0.00100-0.00400] | 2.50x | 2.00x [1.50-5.00] |" in table
    assert "|   hop: VAD ms | - | - | - | - |" in table  # a figure no pass gave is a dash, not a zero


@needs_git
def test_a_bad_revision_is_one_error_line(capsys):
    assert bench_ab.main(["--base", "no-such-revision-here", *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: bench_ab: cannot export streamsv/ at 'no-such-revision-here'")


@needs_git
def test_both_sides_run_their_own_package(capsys, monkeypatch):
    measured = []
    real = bench_ab.one_pass

    def spy(package, system, wave, warmup_s):
        measured.append((package.__name__, type(system).__module__))
        return real(package, system, wave, warmup_s)

    monkeypatch.setattr(bench_ab, "one_pass", spy)
    assert bench_ab.main(["--base", "HEAD", "--json", *QUICK]) == 0
    assert measured == [("streamsv_base", "streamsv_base.embedder"), ("streamsv", "streamsv.embedder")]
    summary = json.loads(capsys.readouterr().out)
    for side in bench_ab.SIDES:
        for setting in bench_ab.CHANGE_TEST:
            figures = summary[side][setting]
            assert 0 < figures["rtf"][0] and 0 < figures["hop_p50_ms"][0] <= figures["hop_p95_ms"][0]
            assert figures["stage_step_ms"][0] > 0 and figures["network_ms_per_s"][0] > 0
            assert 0 < figures["log_mel_ms_per_s"][0] < figures["outside_ms_per_s"][0]
