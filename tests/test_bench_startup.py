"""tools.bench_startup: fresh `streamsv listen` processes timed to their ready event (issue 11)."""
from __future__ import annotations

import re

import pytest

from streamsv.errors import StreamsvError
from tools import bench_startup

REPO = bench_startup.HERE


def test_two_checkouts_are_timed_start_by_start(capsys):
    # The same checkout on both sides: both are measured, and the ratio is about 1.
    assert bench_startup.main(["--against", str(REPO), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"(against|this) .*READY wall ([\d.]+) .*CPU ([\d.]+)", out)
    assert [r[0] for r in rows] == ["against", "this"], out
    assert all(0 < float(cpu) < 30 and 0 < float(wall) < 60 for _, wall, cpu in rows), out
    assert "CPU against / this:" in out


def test_a_folder_that_is_no_checkout_is_refused(tmp_path):
    with pytest.raises(StreamsvError, match="not a streamsv checkout"):
        bench_startup.main(["--against", str(tmp_path)])
    with pytest.raises(StreamsvError, match="--repeat"):
        bench_startup.main(["--repeat", "0"])


def test_a_start_that_never_gets_ready_is_an_error(tmp_path):
    broken = tmp_path / "checkout"
    (broken / "streamsv").mkdir(parents=True)
    (broken / "streamsv" / "__init__.py").write_text("")
    (broken / "streamsv" / "cli.py").write_text("def main():\n    raise SystemExit('no model here')\n")
    with pytest.raises(StreamsvError, match="no ready event"):
        bench_startup.main(["--against", str(broken), "--repeat", "1"])
