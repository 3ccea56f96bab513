"""Property-based: random and mutated profile JSON and config YAML thrown at the loaders.

Whatever the bytes, a loader returns a valid result or raises StreamsvError (one line for the
user): never another exception, never a hang (hypothesis' deadline), and a bad profile never
spoils a good one beside it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from streamsv.config import Config, parse_config
from streamsv.errors import StreamsvError
from streamsv.profiles import ProfileStore, new_profile

DIM = 8
MODEL = "m1"
SETTINGS = settings(max_examples=150, deadline=2000, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies: JSON

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-10**60, max_value=10**60)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
EXTREMES = [1e308, -1e308, 1e-320, 0.0, -0.0, 10**400, True, False, None, "0.5", [], {}, float("nan"),
            float("inf"), 3.5e38, 2**63]
PROFILE_KEYS = ["format", "version", "name", "model", "created", "speech_s", "dim", "centroid", "embeddings"]
YAML_HOT = list(":-[]{}&*!?|>#'\"\t\n ,%@`\\") + ["\x00", "\x1b", "\u202e"]


def good_profile(seed: int = 0, name: str = "bob") -> dict:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(3, DIM)).astype(np.float32)
    data = new_profile(name, e / np.linalg.norm(e, axis=1, keepdims=True), 7.0, MODEL).to_json()
    data["created"] = 1.7e9          # not the clock: hypothesis replays must draw the same text
    return data


@st.composite
def mutated_profile_text(draw) -> bytes:
    data = good_profile(draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "delete", "extreme-in-vector", "row", "nest"]))
        key = draw(st.sampled_from(PROFILE_KEYS + ["extra"]))
        if kind == "set":
            data[key] = draw(json_values)
        elif kind == "delete":
            data.pop(key, None)
        elif kind == "extreme-in-vector" and isinstance(data.get("embeddings"), list) and data["embeddings"]:
            row = draw(st.integers(0, len(data["embeddings"]) - 1))
            if isinstance(data["embeddings"][row], list) and data["embeddings"][row]:
                col = draw(st.integers(0, len(data["embeddings"][row]) - 1))
                data["embeddings"][row][col] = draw(st.sampled_from(EXTREMES))
        elif kind == "row" and isinstance(data.get("embeddings"), list):
            data["embeddings"].append(draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=DIM + 2)))
        elif kind == "nest":
            depth = draw(st.integers(1, 40))
            data[key] = json.loads("[" * depth + "1" + "]" * depth)
    text = json.dumps(data)                      # writes NaN/Infinity and huge ints as they are
    edit = draw(st.sampled_from(["none", "truncate", "insert", "digits"]))
    if edit == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif edit == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(alphabet=st.sampled_from(list('[]{}",:0123456789eE.-+ \\') + ["\x00"]),
                                        max_size=30)) + text[at:]
    elif edit == "digits":
        text = text.replace('"speech_s": 7.0', '"speech_s": ' + "7" * draw(st.integers(1, 6000)))
    return text.encode("utf-8", "surrogatepass")


profile_bytes = (mutated_profile_text()
                 | json_values.map(lambda v: json.dumps(v).encode())
                 | st.binary(max_size=300)
                 | st.integers(1, 100_000).map(lambda n: b"[" * n)
                 | st.integers(1, 100_000).map(lambda n: b'{"a":' * n))


@pytest.fixture
def store(tmp_path):
    s = ProfileStore(tmp_path / "profiles")
    e = np.random.default_rng(9).normal(size=(3, DIM)).astype(np.float32)
    s.save(new_profile("alice", e / np.linalg.norm(e, axis=1, keepdims=True), 9.0, MODEL))
    return s


def _valid(prof) -> bool:
    return (prof.dim == DIM and np.isfinite(prof.embeddings).all() and np.isfinite(prof.centroid).all()
            and (np.linalg.norm(prof.embeddings, axis=1) > 0).all() and math.isfinite(prof.created)
            and 0 <= prof.created and math.isfinite(prof.speech_s))


@SETTINGS
@given(raw=profile_bytes)
def test_random_profile_files_never_crash_the_loaders_or_spoil_alice(store, tmp_path, raw):
    alice_bytes = store.path("alice").read_bytes()
    alice = store.load("alice").centroid
    bob = store.path("bob")
    bob.write_bytes(raw)
    os.chmod(bob, 0o600)
    loaded = store.load_all(MODEL, DIM)                         # must not raise for a bad file
    assert "alice" in loaded and np.array_equal(loaded["alice"].centroid, alice)
    if "bob" in loaded:
        assert _valid(loaded["bob"])
    try:
        assert _valid(store.load("bob"))
    except StreamsvError as e:
        assert "\n" not in str(e)
    other = ProfileStore(tmp_path / "other")
    try:
        assert _valid(other.import_(bob, name="carol", force=True, fingerprint=MODEL, dim=DIM))
    except StreamsvError as e:
        assert "\n" not in str(e)
    assert store.path("alice").read_bytes() == alice_bytes
    assert sorted(os.listdir(store.dir)) == ["alice.json", "bob.json"]


# --------------------------------------------------------------------------- strategies: YAML

SECTIONS = {"audio": ["device", "sample_rate", "block_ms", "queue_s", "source"],
            "vad": ["aggressiveness", "start_ms", "hangover_ms", "padding_ms"],
            "scoring": ["threshold", "min_margin", "min_speech_s", "hop_s", "window_s", "smoothing_hops",
                        "duration_slope"],
            "profiles": ["dir"], "model": ["path"], "output": ["json", "stats_interval_s", "log_level"],
            "nope": ["x"]}
yaml_values = st.one_of(
    st.integers(min_value=-10**80, max_value=10**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from([".nan", ".inf", "-.inf", "null", "~", "true", "no", "0x1F", "0o17", "1_000", "190:20:30",
                     "[1, 2]", "{a: 1}", "&a 1", "*a", "!!python/object:os.system x", "!!binary aGk=",
                     "!!set {a, b}", "2001-12-14", '"a\\0b"', '"\\x1b[31m"', "|\n    x", "'", '"', "[",
                     "{", "? x", "- a", "9" * 5000, "[" * 3000 + "]" * 3000, "{a: " * 200 + "1" + "}" * 200]),
    st.text(max_size=30).map(json.dumps),       # quoted strings with any characters
)


@st.composite
def yaml_documents(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        section = draw(st.sampled_from(sorted(SECTIONS)))
        lines.append(f"{section}:")
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from(SECTIONS[section]) | st.sampled_from(["[a]", "{b: 1}", "? [c]", "1", "null"]))
            lines.append(f"  {key}: {draw(yaml_values)}")
    return "\n".join(lines) + "\n"


@st.composite
def mutated_example_yaml(draw) -> str:
    text = (REPO / "config.example.yaml").read_text()
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        else:
            text = text[:at] + "".join(draw(st.lists(st.sampled_from(YAML_HOT), min_size=1, max_size=6))) + text[at:]
    return text


yaml_texts = yaml_documents() | mutated_example_yaml() | st.text(max_size=200)


@SETTINGS
@given(text=yaml_texts)
def test_random_config_yaml_is_a_config_or_one_line(text):
    try:
        cfg = parse_config(text, "fuzz.yaml")
    except StreamsvError as e:
        assert "\n" not in str(e) and "\x00" not in str(e) and "\x1b" not in str(e)
    else:
        assert isinstance(cfg, Config)
