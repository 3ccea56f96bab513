"""The package's import graph has no cycles (issue 12): read from the source with ast, so a
cycle through a function-level import counts too; only ``if TYPE_CHECKING:`` blocks are left out
(they never run). And what a real `streamsv listen` has loaded when it is READY (issue 11)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

PACKAGE = "streamsv"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST):
    """Import nodes anywhere in the tree except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports at run time."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from . import x` imports the submodule x when there is one, else a name of the package.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            while t and t not in known:          # `import streamsv.sinks.mqtt.x`: the nearest module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_the_walk_sees_imports_of_every_kind():
    # The graph is only as good as the parse: relative, function-level, `from . import module`,
    # and subpackage imports must all be edges, TYPE_CHECKING ones must not.
    g = package_graph()
    assert "streamsv.errors" in g["streamsv.cli"]            # module level, relative
    assert "streamsv.app" in g["streamsv.cli"]               # `from . import app as application`
    assert "streamsv.calibration" in g["streamsv.cli"]       # inside a function
    assert "streamsv.sinks" in g["streamsv.app"]             # a subpackage
    assert "streamsv.embedder" in g["streamsv"]              # load_embedder's function-level import
    assert "from .config import Config" in (ROOT / "service.py").read_text()   # under TYPE_CHECKING:
    assert "streamsv.config" not in g["streamsv.service"]    # ...so not an edge


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_the_package():
    found = cycles(package_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_sinks_depend_on_events_not_on_the_runtime_around_them():
    # A sink consumes events (wyoming-openwakeword's shape): it never reaches back into the
    # pipeline that makes them or the systemd runtime that hosts it.
    g = package_graph()
    sinks = [name for name in g if name.startswith("streamsv.sinks")]
    assert "streamsv.sinks.mqtt" in sinks
    for name in sinks:
        assert not g[name] & {"streamsv.pipeline", "streamsv.service", "streamsv.app"}, (name, g[name])


# What `streamsv listen` must not load before it is READY (issue 11's start-up): pydantic (typer's
# coercion, ~90 ms: listen's plain command lines skip it), webrtcvad's wrapper and the
# importlib.metadata it looks its version up with (15-35 ms: vad.py calls the C engine), yaml
# without a settings file, rich with JSON output, sounddevice for a file, and never torch or onnx
# (the daemon runs on onnxruntime).
NOT_BEFORE_READY = ("pydantic", "typer._adapters", "webrtcvad", "importlib.metadata", "yaml", "rich", "sounddevice",
                    "torch", "onnx")
MODULES_AT_READY = """
import json, sys
import streamsv.sinks.jsonl as jsonl
consume = jsonl.JsonWriter.consume
def at_ready(self, event):
    if event["event"] == "ready":
        with open(sys.argv[1], "w") as f:
            json.dump(sorted(sys.modules), f)
    consume(self, event)
jsonl.JsonWriter.consume = at_ready
from streamsv import cli
cli.main(["listen", "--source", sys.argv[2], "--json"])
"""


def test_listen_loads_none_of_the_heavy_modules_before_ready(tmp_path):
    wav, seen = tmp_path / "quiet.wav", tmp_path / "modules.json"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    env = {k: v for k, v in os.environ.items() if k != "STREAMSV_CONFIG"}
    env.update(HOME=str(tmp_path), STREAMSV_PROFILES_DIR=str(tmp_path / "profiles"))
    r = subprocess.run([sys.executable, "-c", MODULES_AT_READY, str(seen), str(wav)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and '"event":"ready"' in r.stdout, r.stderr
    loaded = set(json.loads(seen.read_text()))
    assert {"numpy", "onnxruntime", "streamsv.pipeline", "typer"} <= loaded     # the probe saw a real start
    early = sorted(m for m in loaded if m.split(".")[0] in NOT_BEFORE_READY or m in NOT_BEFORE_READY)
    assert early == [], early
