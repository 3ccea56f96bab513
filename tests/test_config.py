"""Config loading: search order, strict validation with one-line errors, overrides."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from streamsv import config as config_mod
from streamsv.config import Config, as_dict, load_config, parse_config
from streamsv.errors import StreamsvError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.example.yaml"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real user or system config leaks into a test."""
    monkeypatch.delenv("STREAMSV_CONFIG", raising=False)
    monkeypatch.delenv("STREAMSV_PROFILES_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", tmp_path / "etc" / "config.yaml")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(text: str) -> str:
    with pytest.raises(StreamsvError) as info:
        parse_config(text, source="test.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_example_file_loads_and_equals_defaults():
    cfg = load_config(str(EXAMPLE))
    assert cfg == Config()
    assert cfg.source == str(EXAMPLE)


def test_example_file_lists_every_setting():
    tree = yaml.safe_load(EXAMPLE.read_text())
    defaults = as_dict(Config())
    assert {s: set(v) for s, v in tree.items()} == {s: set(v) for s, v in defaults.items()}
    # every setting carries a comment line just above it
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line!r}"


def test_defaults_when_nothing_found():
    cfg = load_config(None)
    assert cfg == Config() and cfg.source is None


def test_search_order(tmp_path, monkeypatch):
    system = write(config_mod.SYSTEM_CONFIG, "scoring:\n  threshold: 0.1\n")
    assert load_config(None).scoring.threshold == 0.1
    user = write(tmp_path / "home/.config/streamsv/config.yaml", "scoring:\n  threshold: 0.2\n")
    assert load_config(None).scoring.threshold == 0.2
    env = write(tmp_path / "env.yaml", "scoring:\n  threshold: 0.3\n")
    monkeypatch.setenv("STREAMSV_CONFIG", str(env))
    assert load_config(None).scoring.threshold == 0.3
    explicit = write(tmp_path / "explicit.yaml", "scoring:\n  threshold: 0.4\n")
    cfg = load_config(str(explicit))
    assert cfg.scoring.threshold == 0.4 and cfg.source == str(explicit)
    assert system.exists() and user.exists()


def test_missing_explicit_or_env_file_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(StreamsvError, match=r"nope\.yaml: no such file \(from --config\)"):
        load_config(str(tmp_path / "nope.yaml"))
    monkeypatch.setenv("STREAMSV_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(StreamsvError, match=r"gone\.yaml: no such file \(from \$STREAMSV_CONFIG\)"):
        load_config(None)


def test_partial_file_keeps_other_defaults():
    cfg = parse_config("vad:\n  aggressiveness: 3\naudio:\n  device: 'plughw:1,0'\n")
    assert cfg.vad.aggressiveness == 3
    assert cfg.audio.device == "plughw:1,0"
    assert cfg.scoring == Config().scoring


def test_empty_file_and_empty_sections_are_defaults():
    assert parse_config("") == Config()
    assert parse_config("# only a comment\n") == Config()
    assert parse_config("audio:\nvad:\n") == Config()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("scoring:\n  threshold: x\n", "config: scoring.threshold: expected a number, got 'x' (in test.yaml)"),
        ("scoring:\n  threshold: '0.8'\n", "config: scoring.threshold: expected a number, got '0.8'"),
        ("scoring:\n  threshold: 1.5\n", "config: scoring.threshold: out of range: 1.5 (allowed -1..1)"),
        ("scoring:\n  threshold: .nan\n", "config: scoring.threshold: expected a finite number"),
        ("scoring:\n  threshold: true\n", "config: scoring.threshold: expected a number, got True"),
        ("scoring:\n  tresh: 0.5\n", "config: scoring.tresh: unknown key"),
        ("scoring:\n  smoothing_hops: 2.5\n", "config: scoring.smoothing_hops: expected an integer, got 2.5"),
        ("scoring:\n  smoothing_hops: 0\n", "config: scoring.smoothing_hops: out of range: 0 (allowed 1..100)"),
        ("scoring:\n  hop_s: 0\n", "config: scoring.hop_s: out of range: 0 (allowed > 0 and <= 10)"),
        ("scoring:\n  hop_s: 4\n", "config: scoring.hop_s: out of range: 4 (must not exceed scoring.window_s = 3)"),
        ("vad:\n  aggressiveness: 4\n", "config: vad.aggressiveness: out of range: 4 (allowed 0..3)"),
        ("vad:\n  start_ms: -10\n", "config: vad.start_ms: out of range: -10"),
        ("audio:\n  sample_rate: 1600\n", "config: audio.sample_rate: out of range: 1600"),
        ("audio:\n  block_ms: 25\n", "config: audio.block_ms: out of range: 25 (must be a multiple of 10"),
        ("audio:\n  queue_s: 0\n", "config: audio.queue_s: out of range: 0"),
        ("audio:\n  device: [1, 2]\n", "config: audio.device: expected a device name or index, got [1, 2]"),
        ("audio:\n  device: -1\n", "config: audio.device: out of range: -1"),
        ("audio:\n  source: ''\n", "config: audio.source: must not be empty"),
        ("output:\n  json: 'yes please'\n", "config: output.json: expected true, false or null"),
        ("output:\n  log_level: loud\n", "config: output.log_level: expected one of debug, info, warning, error"),
        ("output:\n  stats_interval_s: 0\n", "config: output.stats_interval_s: out of range"),
        ("profiles:\n  dir: 5\n", "config: profiles.dir: expected a string, got 5"),
        ("profiles:\n  watch_s: -1\n", "config: profiles.watch_s: out of range"),
        ("profiles:\n  watch_s: 3600.0001\n", "config: profiles.watch_s: out of range: 3600.0001 (allowed 0..3600)"),
        ("profiles:\n  watch_s: .nan\n", "config: profiles.watch_s:"),
        ("model:\n  path: {a: 1}\n", "config: model.path: expected a string"),
        ("audoi:\n  device: 1\n", "config: audoi: unknown section (known: audio, vad, scoring"),
        ("audio: 5\n", "config: audio: expected a mapping of settings, got 5"),
        ("- a\n- b\n", "config: expected a mapping of sections at the top level"),
        ("scoring:\n  threshold: 0.5\n  threshold: 0.6\n", "config: malformed YAML at line 3, column 3: duplicate key 'threshold'"),
        ("scoring:\n  threshold: [0.5\n", "config: malformed YAML at line 3"),
        ("scoring:\n\tthreshold: 0.5\n", "config: malformed YAML at line 2"),
        ("a: !!python/object:os.system x\n", "config: malformed YAML"),
    ],
)
def test_validation_errors_are_one_line_and_name_the_key(text, expected):
    msg = error_of(text)
    assert msg.startswith(expected), msg


def test_accepted_values_are_normalised():
    cfg = parse_config("scoring:\n  threshold: 1\noutput:\n  log_level: DEBUG\n  json: false\naudio:\n  device: 2\n")
    assert cfg.scoring.threshold == 1.0 and isinstance(cfg.scoring.threshold, float)
    assert cfg.output.log_level == "debug"
    assert cfg.output.json is False
    assert cfg.audio.device == 2


def test_file_errors_name_the_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "vad:\n  aggressiveness: 9\n")
    with pytest.raises(StreamsvError, match=rf"vad.aggressiveness: out of range: 9 .*\(in {bad}\)$"):
        load_config(str(bad))
    with pytest.raises(StreamsvError, match="is a folder"):
        load_config(str(tmp_path))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StreamsvError, match="not UTF-8 text"):
        load_config(str(binary))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of mode")
def test_unreadable_file(tmp_path):
    locked = write(tmp_path / "locked.yaml", "{}\n")
    locked.chmod(0)
    with pytest.raises(StreamsvError, match="permission denied"):
        load_config(str(locked))


def test_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.scoring.threshold = 0.1  # type: ignore[misc]


def test_with_overrides():
    base = parse_config("scoring:\n  threshold: 0.6\n", source="x.yaml")
    cfg = base.with_overrides(**{"scoring.threshold": 0.8, "audio.device": "plughw:1,0", "output.json": True})
    assert cfg.scoring.threshold == 0.8 and cfg.audio.device == "plughw:1,0" and cfg.output.json is True
    assert base.scoring.threshold == 0.6  # the original is untouched
    assert cfg.vad == base.vad and cfg.source == "x.yaml"
    assert cfg.with_overrides() == cfg


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"scoring.threshold": "high"}, "config: scoring.threshold: expected a number, got 'high'"),
        ({"scoring.threshold": 2}, "config: scoring.threshold: out of range: 2"),
        ({"scoring.nope": 1}, "config: scoring.nope: unknown key"),
        ({"nope.threshold": 1}, "config: nope.threshold: unknown key"),
        ({"threshold": 1}, "config: threshold: unknown key"),
        ({"audio.sample_rate": None}, "config: audio.sample_rate: expected an integer, got None"),
    ],
)
def test_override_errors(overrides, expected):
    with pytest.raises(StreamsvError) as info:
        Config().with_overrides(**overrides)
    assert str(info.value).startswith(expected), str(info.value)


def test_profiles_dir_resolution(tmp_path, monkeypatch):
    assert Config().profiles.resolved() == Path("profiles")
    monkeypatch.setenv("STREAMSV_PROFILES_DIR", str(tmp_path / "state"))
    assert Config().profiles.resolved() == tmp_path / "state"
    cfg = Config().with_overrides(**{"profiles.dir": "~/voices"})
    assert cfg.profiles.resolved() == Path(os.environ["HOME"]) / "voices"


def test_as_dict_round_trips():
    cfg = parse_config("vad:\n  hangover_ms: 500\n")
    assert parse_config(yaml.safe_dump(as_dict(cfg))) == cfg


def test_duration_slope_is_validated_and_defaults_to_the_scoring_constant():
    from streamsv.scoring import DEFAULT_DURATION_SLOPE

    assert Config().scoring.duration_slope == DEFAULT_DURATION_SLOPE
    assert parse_config("scoring:\n  duration_slope: 0.0\n").scoring.duration_slope == 0.0
    assert "scoring.duration_slope: out of range: 1.5" in error_of("scoring:\n  duration_slope: 1.5\n")
    assert "scoring.duration_slope: expected a number" in error_of("scoring:\n  duration_slope: steep\n")
    assert Config().with_overrides(**{"scoring.duration_slope": 0.2}).scoring.duration_slope == 0.2


def test_bridge_settings_are_validated_with_one_line_errors():
    # change.bridge_s: a segment this close to the last one continues its voice (streamsv/pipeline.py).
    assert Config().change.bridge_s >= 0 and isinstance(Config().change.bridge_hold, bool)
    assert parse_config("change:\n  bridge_s: 0.8\n").change.bridge_s == 0.8
    assert "change.bridge_s: out of range: -0.5" in error_of("change:\n  bridge_s: -0.5\n")
    assert "change.bridge_s: expected a number" in error_of("change:\n  bridge_s: long\n")
    assert "change.bridge_hold" in error_of("change:\n  bridge_hold: maybe\n")
    assert "change.bridge_threshold: out of range" in error_of("change:\n  bridge_threshold: 1.5\n")


def test_change_embedding_is_one_of_its_sources():
    assert parse_config("change:\n  embedding: Stream\n", source="test.yaml").change.embedding == "stream"
    assert Config().change.embedding == "stream"
    assert parse_config("change:\n  continuous_threshold: null\n", source="test.yaml").change.continuous_threshold is None
    msg = error_of("change:\n  embedding: online\n")
    assert "change.embedding" in msg and "offline, stream" in msg


def test_a_yaml_exponent_read_as_text_says_how_to_write_it(tmp_path):
    # PyYAML follows YAML 1.1: 5e-1 is a string there, 5.0e-1 a float.
    from streamsv.config import load_config
    from streamsv.errors import StreamsvError

    path = tmp_path / "c.yaml"
    path.write_text("scoring:\n  threshold: 5e-1\n")
    with pytest.raises(StreamsvError, match=r"expected a number, got '5e-1' \(YAML reads an exponent"):
        load_config(path)
    path.write_text("scoring:\n  threshold: 5.0e-1\n")
    assert load_config(path).scoring.threshold == 0.5
