"""Start-up of the daemon itself: fresh ``streamsv listen`` processes timed to their ``ready`` event
(issue 11: start-up to READY <= 0.3 s), this checkout beside another one in the same run.

    taskset -c 0 python -m tools.bench_startup --repeat 10                      # this checkout
    git worktree add /tmp/before HEAD~3
    taskset -c 0 python -m tools.bench_startup --against /tmp/before --repeat 10  # before / after
    taskset -c 0 python -m tools.bench_startup --against /tmp/a --this /tmp/b       # two other commits

Each start is the console script's own path (``streamsv.cli.main``) on a file source at real-time
pace, JSON output, three profiles of 36 embeddings each (a good 20 s enrollment holds about that
many) in a temporary folder, no settings file: wall time from the process's spawn to the ready line,
and the process's CPU time up to it (its rusage once it is stopped at the ready line; the file is
paced, so it does next to nothing in between). The checkouts alternate start by start, so a busy
machine slows both alike; medians with the [min-max] spread. ``--bytecode cached`` (the default)
runs with Python's bytecode cached, as an installed daemon has it (pip compiles at install): an
untimed first start per checkout writes it into a temporary folder. ``--bytecode source`` keeps the
environment's setting (with PYTHONDONTWRITEBYTECODE=1 every start compiles the package's sources).
A microphone start also opens PortAudio (sounddevice), which this does not measure.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streamsv.errors import StreamsvError

HERE = Path(__file__).resolve().parents[1]
N_PROFILES = 3
EMBEDDINGS_PER_PROFILE = 36
WINDOW_S = 3.0
AUDIO_S = 4.0
START_TIMEOUT_S = 60.0
CONSOLE_SCRIPT = "import sys; from streamsv.cli import main; sys.argv[0] = 'streamsv'; sys.exit(main())"


def write_profiles(folder: Path, wave: np.ndarray, variant: str) -> None:
    """N_PROFILES profiles of real embeddings of ``wave`` (the content does not matter to start-up,
    their size does: the daemon parses every one before READY)."""
    from streamsv import load_embedder
    from streamsv.features import SAMPLE_RATE
    from streamsv.profiles import ProfileStore, new_profile

    emb = load_embedder(variant=variant)
    window = int(WINDOW_S * SAMPLE_RATE)
    starts = np.linspace(0, len(wave) - window, EMBEDDINGS_PER_PROFILE).astype(int)
    vectors = np.stack([emb.embed(wave[s:s + window]) for s in starts])
    store = ProfileStore(folder)
    for i in range(N_PROFILES):
        store.save(new_profile(f"p{i}", np.roll(vectors, i, axis=0), 20.0, emb.fingerprint))


def start_once(root: Path, args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one fresh ``streamsv listen`` from ``root`` to its ready line. ``cwd``
    must hold no checkout: ``python -c`` looks in it before PYTHONPATH."""
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CONSOLE_SCRIPT, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=cwd)
    try:
        line = proc.stdout.readline()
        wall = time.monotonic() - started
    finally:
        # os.kill, not proc.poll()/send_signal: those may reap the child, and then wait4 has no
        # rusage left to read. An exited, unreaped child is a zombie; killing it is harmless.
        os.kill(proc.pid, signal.SIGKILL)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = -1
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
    if b'"event":"ready"' not in line:
        raise StreamsvError(f"{root}: streamsv listen gave no ready event: {err.splitlines()[-1] if err else line!r}")
    return wall, usage.ru_utime + usage.ru_stime


def listen_args(root: Path, tmp: Path, variant: str) -> list[str]:
    """The listen command line timed: the file at real-time pace, JSON, the bench's profiles."""
    args = ["listen", "--source", str(tmp / "talk.wav"), "--realtime", "--json", "--profiles-dir", str(tmp / "profiles")]
    if variant != "fp32":
        args += ["--model", str(root / "streamsv" / "weights" / f"student.{variant}.onnx")]
    return args


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools.bench_startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--against", type=Path, help="another checkout's root (a git worktree of another commit)")
    p.add_argument("--this", type=Path, default=HERE, help="the checkout measured as 'this' (default: this one)")
    p.add_argument("--repeat", type=int, default=10, help="starts per checkout, alternating")
    p.add_argument("--variant", default="fp32", choices=["fp32", "int8"], help="the shipped model's variant")
    p.add_argument("--bytecode", default="cached", choices=["cached", "source"],
                   help="cached: as an installed daemon (the default); source: the environment's setting")
    a = p.parse_args(argv)
    if a.repeat < 1:
        raise StreamsvError("--repeat: at least 1")
    for flag, root in (("--this", a.this), ("--against", a.against)):
        if root is not None and not (root / "streamsv" / "cli.py").is_file():
            raise StreamsvError(f"{flag}: {root} is not a streamsv checkout (no streamsv/cli.py)")
    roots = {"this": a.this.resolve()}
    if a.against is not None:
        roots = {"against": a.against.resolve(), "this": a.this.resolve()}
    import soundfile as sf

    from streamsv.bench import synthetic_speech
    from streamsv.features import SAMPLE_RATE

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        wave = synthetic_speech(AUDIO_S)
        sf.write(tmp_path / "talk.wav", wave, SAMPLE_RATE)
        write_profiles(tmp_path / "profiles", wave, a.variant)
        env = {k: v for k, v in os.environ.items() if k != "STREAMSV_CONFIG"}
        env.update(HOME=tmp, OMP_NUM_THREADS="1")        # HOME: no user settings file is read
        if a.bytecode == "cached":
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(tmp_path / "bytecode")
        commands = {name: listen_args(root, tmp_path, a.variant) for name, root in roots.items()}
        for name, root in roots.items():
            start_once(root, commands[name], env, tmp_path)  # untimed: page cache, bytecode
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in roots}
        for _ in range(a.repeat):
            for name, root in roots.items():
                results[name].append(start_once(root, commands[name], env, tmp_path))
    print(f"tools.bench_startup: streamsv listen to its ready event, {a.variant}, {a.repeat} starts each, alternating, "
          f"bytecode {a.bytecode}; median [min-max] s")
    for name, root in roots.items():
        walls, cpus = [r[0] for r in results[name]], [r[1] for r in results[name]]
        print(f"  {name:8s} {root}: READY wall {spread(walls)}  CPU {spread(cpus)}")
    if "against" in results:
        ratio = statistics.median(r[1] for r in results["against"]) / statistics.median(r[1] for r in results["this"])
        print(f"  CPU against / this: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    from streamsv.errors import run_tool

    run_tool(main)  # a bad option value: one error line, not a traceback
