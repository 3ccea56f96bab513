"""Profile load time: this checkout's loader against a baseline git revision, side by side.

    taskset -c 0 python -m tools.bench_profile_load --baseline e43591c

Each round loads one profile (N embeddings of DIM values, as `enroll --append` builds them) once
in a fresh process per side, alternating baseline and current, so both see the same machine
load; prints the median of each side and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 7
LOADS_PER_ROUND = 9

CHILD = r"""
import json, statistics, sys, tempfile, time
import numpy as np
from streamsv.profiles import ProfileStore, new_profile
n, dim, loads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
store = ProfileStore(tempfile.mkdtemp() + "/p")
e = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
store.save(new_profile("alice", e / np.linalg.norm(e, axis=1, keepdims=True), 60.0, "m"))
times = []
for _ in range(loads):
    t0 = time.perf_counter()
    store.load("alice")
    times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="git revision whose streamsv/profiles.py is the baseline")
    ap.add_argument("--embeddings", type=int, default=200)
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(f"git -C {REPO} archive {args.baseline} streamsv | tar -x -C {tmp}", shell=True, check=True)
        sides = {"baseline": tmp, "current": str(REPO)}
        medians: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(ROUNDS):
            for name, root in sides.items():
                # Run in the side's root: its streamsv/ comes first on the path ('' for -c).
                out = subprocess.run([sys.executable, "-c", CHILD, str(args.embeddings), str(args.dim),
                                      str(LOADS_PER_ROUND)], capture_output=True, text=True, check=True, cwd=root,
                                     env={**os.environ, "PYTHONPATH": root})
                medians[name].append(float(out.stdout))
    base, cur = statistics.median(medians["baseline"]), statistics.median(medians["current"])
    print(f"profile of {args.embeddings} x {args.dim}: load median baseline {base * 1e3:.1f} ms, "
          f"current {cur * 1e3:.1f} ms, current/baseline {cur / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
