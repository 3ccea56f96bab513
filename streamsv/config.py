"""Settings: frozen dataclasses loaded from YAML, validated strictly, overridable by CLI flags.

Search order for the file (first hit wins): an explicit path (``--config``), ``$STREAMSV_CONFIG``,
``~/.config/streamsv/config.yaml``, ``/etc/streamsv/config.yaml``; with none of them, the defaults.
An explicit path or ``$STREAMSV_CONFIG`` that does not exist is an error (a typo there should not
silently run with defaults); the two standard locations are optional.

Every problem raises ``StreamsvError`` with one line that names the key:
``config: scoring.threshold: expected a number, got 'x' (in /etc/streamsv/config.yaml)``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import StreamsvError, shown
from .safeio import read_bounded
from .scoring import DEFAULT_DURATION_SLOPE, DEFAULT_MIN_MARGIN, DEFAULT_SMOOTHING_HOPS, DEFAULT_THRESHOLD

ENV_CONFIG = "STREAMSV_CONFIG"
ENV_PROFILES_DIR = "STREAMSV_PROFILES_DIR"
USER_CONFIG = Path("~/.config/streamsv/config.yaml")
SYSTEM_CONFIG = Path("/etc/streamsv/config.yaml")
DEFAULT_PROFILES_DIR = Path("profiles")
LOG_LEVELS = ("debug", "info", "warning", "error")
CHANGE_EMBEDDINGS = ("offline", "stream")  # change.embedding, change.pause_embedding: see ChangeConfig
MAX_CONFIG_BYTES = 256 << 10  # a settings file is a few KB; refuse to parse anything huge
# Checked on the YAML events before anything is built, so that nothing is expanded or recursed:
MAX_YAML_DEPTH = 8            # the file is section > key > value: 2 levels
MAX_SCALAR_CHARS = 4096       # a path is at most 4096 bytes on Linux
MAX_NUMBER_CHARS = 32         # no setting needs more digits
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class AudioConfig:
    device: str | int | None = None  # None = the system default input
    sample_rate: int = 16000
    block_ms: int = 30
    queue_s: float = 2.0  # capture queue bound; beyond it the oldest audio is dropped
    source: str = "mic"  # "mic" or a path to an audio file


@dataclass(frozen=True)
class VadConfig:
    engine: str = "webrtc"  # "webrtc" (webrtcvad + noise-floor gate) or "silero" (silero-vad ONNX)
    aggressiveness: int = 2
    start_ms: int = 90
    hangover_ms: int = 300
    padding_ms: int = 150
    snr_db: float = 6.0  # webrtc: a frame must stand this far above the running noise floor (0 = no gate)
    silero_threshold: float = 0.5  # silero: speech probability that opens a frame


@dataclass(frozen=True)
class ChangeConfig:
    """Speaker changes inside a segment (streamsv/change.py)."""

    enabled: bool = True
    # A cosine of the recent audio to the segment before it below this is a change. 0.45 with the
    # pause test (below) beat 0.4 without it on the tuning conversations of tools.bench_detection
    # (-50 dBFS and quiet: in-turn accuracy and boundary F1 both higher; docs/live-rooms.md) for
    # the base model; the 6-block fine-tune scored the same voice about 0.08 lower (its calibrated
    # threshold 0.473 where the base's was 0.556), and 0.37 / bridge 0.62, the old bars moved by as
    # much, did best of those tried on the tuning split (0.34-0.45, 0.58-0.70). The 2-block model
    # shipped since (threshold 0.480) was measured at the same bars.
    threshold: float = 0.37
    recent_s: float = 1.0  # the recent audio compared with the segment before it
    confirm_hops: int = 1  # hops in a row below the threshold before a change is called
    min_reference_s: float = 1.0  # segment audio before the recent window needed to test at all
    continuous: bool = True  # test every hop, half-way between decisions (a voice that takes over without a pause)
    min_pause_s: float = 0.1  # a pause inside a segment this long is tested once recent_s follows it (0 = never)
    # A segment that starts within this many seconds of the last one's end continues its voice
    # (window, smoother, change references, turn summary); the gap is a pause inside it, which the
    # pause test judges (0 = every segment is a new voice; so does min_pause_s 0, which turns the
    # pause test off). 1.0 s with bridge_threshold 0.7 won on the tuning conversations of
    # tools.bench_detection (boundary F1 0.513 -> 0.571 at -50 dBFS, 0.605 -> 0.665 quiet; in-turn
    # accuracy 0.819 -> 0.833 and 0.832 -> 0.829); 0.5 and 2.0 s did no better (docs/live-rooms.md,
    # third pass).
    bridge_s: float = 1.0
    # After a bridged gap, no decision until its pause test has spoken: deciding at once on the window
    # from before the gap names the previous voice for the next one's first second (in-turn 0.71, tuning).
    bridge_hold: bool = True
    # The pause test's threshold at a bridged gap. Half the gaps the VAD leaves are turn changes, and a
    # change missed there leaves two voices in the window while a false one only restarts it (as an
    # unbridged segment does), so the voice after a gap must score higher to be the same: 0.45 (the
    # gap test's EER point) lost in-turn accuracy, 0.55-0.7 gained it as they rose (tuning).
    bridge_threshold: float = 0.62  # 0.7 for the base model (see threshold)
    # Where the continuous test's recent embedding comes from (one of CHANGE_EMBEDDINGS): "offline"
    # embeds the last recent_s afresh (a model step over it, half-way between decisions: about half
    # the pipeline's CPU on continuous speech); "stream" pools the stream's own last recent_s of
    # frames at the decision's hop (no model step); the pause and gap tests: pause_embedding. "stream"
    # matched "offline" on the tuning conversations (-50 dBFS: in-turn 0.832 vs 0.833, boundary F1
    # 0.563 vs 0.571; quiet: 0.842 vs 0.829, 0.670 vs 0.665) at about a quarter less CPU
    # (docs/performance.md).
    embedding: str = "stream"
    # Where the pause and gap tests' embedding of the recent_s after a pause comes from (one of
    # CHANGE_EMBEDDINGS): "offline" embeds that audio afresh (a model step over recent_s, once per
    # candidate pause); "stream" pushes the audio pending for the next hop when the test is due
    # and pools the stream's own last frames (no step over recent_s; frames that carry the context
    # of the voice before the pause). On the tuning conversations (-50 dBFS and quiet) "stream" cost
    # 0.004 of in-turn accuracy and 0.005 of boundary F1 for 9% less CPU, and on the reporting ones
    # (every room) boundary F1 0.618 -> 0.609 [-0.016, -0.003] for 12% less: "offline" stays
    # (docs/live-rooms.md, seventh and twelfth passes).
    pause_embedding: str = "offline"
    # The continuous test's own threshold (None: threshold). 0.4-0.6 tried with "stream" (tuning):
    # above 0.45 more false splits and no fewer missed boundaries; 0.4 within noise of 0.45.
    continuous_threshold: float | None = None
    # A bridged gap's test when the segment after it closed before recent_s of it was heard (judged
    # on what there is as the next segment starts; None: threshold). At bridge_threshold (0.62, the
    # bar before 2026-11-30) 16 of these 87 tests' changes were turn boundaries on the tuning
    # conversations at -50 dBFS: a voice heard for under recent_s scores lower against itself.
    # At threshold (0.37): boundary F1 0.541 -> 0.559 at -50 dBFS and 0.625 -> 0.651 quiet, in-turn
    # accuracy the same (0.864, 0.860 -> 0.859); on the reporting split 0.555 -> 0.569 and
    # 0.619 -> 0.630, in-turn 0.839 -> 0.838 and 0.850 (docs/live-rooms.md, ninth pass).
    short_gap_threshold: float | None = None
    # No change where the audio before and after both score as the same enrolled voice, each a
    # little over the decision bar for its length (the window's, and recent_s's;
    # pipeline.PROFILE_VETO_MARGIN): the household's own voices are known, and a voice that goes on
    # scores as itself. Reporting split, every room: boundary F1 0.552 -> 0.559, in-turn accuracy
    # 0.808 either way (docs/live-rooms.md, tenth pass).
    profile_veto: bool = True
    # No change where neither side scores as any enrolled voice: each at least
    # pipeline.STRANGER_VETO_MARGIN under the decision bar for its length against every profile.
    # The decisions name nobody on either side, and a split would only restart a stranger's
    # window (a TV, guests). Reporting split, every room: boundary F1 0.559 -> 0.618, in-turn
    # accuracy 0.808 -> 0.810; -50 dBFS: 0.658 -> 0.710 and 0.842 -> 0.841 (docs/live-rooms.md,
    # eleventh pass). False: a change between two unknown voices is reported too.
    stranger_veto: bool = True
    # Every change test's bar comes down by this much per dB that the voice's window stands under
    # scoring.snr_ref_db above the noise floor, at most change.MAX_SNR_SHIFT (0.03): in noise one
    # voice's two stretches score less alike, and false splits outnumber missed turns. Tuning /
    # reporting split, every room: boundary F1 0.625 -> 0.629 / 0.618 -> 0.626 (-50 dBFS 0.733 ->
    # 0.751 / 0.710 -> 0.722), in-turn accuracy 0.814 -> 0.812 / 0.820 -> 0.818 (docs/live-rooms.md,
    # twelfth pass). 0 turns it off.
    snr_slope: float = 0.005


@dataclass(frozen=True)
class ScoringConfig:
    threshold: float = DEFAULT_THRESHOLD
    min_margin: float = DEFAULT_MIN_MARGIN
    min_speech_s: float = 1.0
    hop_s: float = 0.5
    window_s: float = 3.0
    smoothing_hops: int = DEFAULT_SMOOTHING_HOPS
    # The accept threshold is lowered by this much per second a window is short of window_s
    # (short windows score lower for the same voice); `streamsv calibrate` measures it.
    duration_slope: float = DEFAULT_DURATION_SLOPE
    # Accept on the calibrated confidence (0..1) instead of the cosine threshold when set: it is
    # turned into a cosine threshold per window length through the model's confidence calibration.
    min_confidence: float | None = None
    # The SNR-aware bar: a live decision's threshold is lowered by snr_slope per dB that its
    # window's speech stands less than snr_ref_db above the room's noise floor (at most
    # scoring.MAX_SNR_SHIFT; 0 turns it off). Noise pulls a voice's score against its own profile
    # down more than a stranger's: on the tuning conversations a lower bar won in the noisy rooms
    # (-40 dBFS, babble, TV) and lost in the quiet ones, so the bar follows the window's SNR. Tuned
    # there for the shipped model (slope 0.0035-0.007, reference 25-34 dB within 0.002 of each
    # other); reporting split, every room: in-turn accuracy 0.810 -> 0.820, -50 dBFS 0.841 -> 0.852,
    # quiet 0.861 -> 0.862, boundary F1 unchanged (docs/live-rooms.md, twelfth pass).
    snr_slope: float = 0.005
    snr_ref_db: float = 30.0


@dataclass(frozen=True)
class ProfilesConfig:
    dir: str | None = None  # None = $STREAMSV_PROFILES_DIR, else ./profiles
    watch_s: float = 2.0  # look for enrolled, changed or deleted profiles this often; 0 = only on a reload signal

    def resolved(self) -> Path:
        """The folder profiles live in, after the env fallback; ``~`` expanded."""
        if self.dir:
            return Path(self.dir).expanduser()
        from_env = os.environ.get(ENV_PROFILES_DIR)
        if from_env:   # checked as profiles.dir is in a file
            try:
                _text(from_env)
            except _Bad as e:
                raise StreamsvError(f"${ENV_PROFILES_DIR}: {e}") from None
            return Path(from_env).expanduser()
        return DEFAULT_PROFILES_DIR


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # None = the shipped weights
    variant: str = "fp32"  # the shipped model's graph: "fp32" or "int8" (ignored with a path)
    threads: int = 1  # ONNX Runtime intra-op threads for the model


@dataclass(frozen=True)
class OutputConfig:
    json: bool | None = None  # None = JSON lines when stdout is not a TTY
    stats_interval_s: float = 10.0
    log_level: str = "info"


@dataclass(frozen=True)
class MqttConfig:
    url: str | None = None  # mqtt://host:1883 or mqtts://host:8883 (TLS); None = no MQTT
    room: str | None = None  # this device's room in Home Assistant; None = the host name
    username: str | None = None
    password_file: str | None = None  # a file holding the password (never on the command line)
    password_env: str | None = None  # or the name of an environment variable holding it
    tls: bool = False  # also implied by mqtts://
    ca_file: str | None = None  # CA bundle for TLS; None = the system's
    discovery_prefix: str = "homeassistant"
    topic_prefix: str = "streamsv"
    backlog: int = 1000  # messages kept while the broker is away; beyond it the oldest are dropped


@dataclass(frozen=True)
class Config:
    audio: AudioConfig = field(default_factory=AudioConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    change: ChangeConfig = field(default_factory=ChangeConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    # Where the settings came from (a path, or None for defaults); for logs, not for equality.
    source: str | None = field(default=None, compare=False)

    def with_overrides(self, **overrides: Any) -> "Config":
        """A copy with ``{"section.key": value}`` replaced, validated like the file.

        The CLI passes only the flags the user gave: a ``None`` here sets the key to ``None``
        (valid only for the optional keys), it does not mean "leave alone".
        """
        tree = as_dict(self)
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in tree or not key or key not in tree[section]:
                raise StreamsvError(f"config: {dotted}: unknown key")
            tree[section][key] = value
        return _build(tree, where="", source=self.source)


def as_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict of every setting (for ``config show`` and round-trips)."""
    return {f.name: dataclasses.asdict(getattr(cfg, f.name)) for f in _sections()}


# --- validators: each returns the (possibly normalised) value or raises _Bad(problem) ---


class _Bad(Exception):
    pass


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 40


def _show(value: Any) -> str:
    text = _SHORT_REPR.repr(value)   # bounded work: never the repr of a whole huge container
    return text if len(text) <= 40 else text[:37] + "..."


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"expected an integer, got {_show(v)}")
        if not lo <= v <= hi:
            raise _Bad(f"out of range: {v} (allowed {lo}..{hi})")
        return v

    return check


def _num(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            hint = ""
            if isinstance(v, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", v.strip()):
                # YAML 1.1 (PyYAML) reads 5e-1 as text: a float needs its dot, as in 5.0e-1.
                hint = " (YAML reads an exponent without a dot as text: write 0.5 or 5.0e-1)"
            raise _Bad(f"expected a number, got {_show(v)}{hint}")
        v = float(v)
        if not math.isfinite(v):
            raise _Bad(f"expected a finite number, got {v}")
        if v < lo or v > hi or (lo_open and v == lo):
            bound = f"> {lo:g} and <= {hi:g}" if lo_open else f"{lo:g}..{hi:g}"
            shown_v = f"{v:g}" if float(f"{v:g}") == v else repr(v)   # 3600.0001 is not "3600"
            raise _Bad(f"out of range: {shown_v} (allowed {bound})")
        return v

    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise _Bad(f"expected one of {', '.join(options)}, got {_show(v)}")
        if v.lower() not in options:
            raise _Bad(f"expected one of {', '.join(options)}, got {_show(v)}")
        return v.lower()

    return check


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_show(v)}")
    if not v.strip():
        raise _Bad("must not be empty")
    if _CONTROL_CHARS.search(v):
        raise _Bad(f"must not contain control characters (NUL, newline...), got {_show(v)}")
    return v


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else check(v)


def _device(v: Any) -> str | int | None:
    # A PortAudio index (int) or a name / ALSA name such as "plughw:1,0" (str).
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise _Bad(f"expected a device name or index, got {_show(v)}")
    if isinstance(v, int) and v < 0:
        raise _Bad(f"out of range: {v} (device index must be >= 0)")
    if isinstance(v, str) and not v.strip():
        raise _Bad("must not be empty (leave it out for the default device)")
    return _text(v) if isinstance(v, str) else v


def _optional_bool(v: Any) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    raise _Bad(f"expected true, false or null, got {_show(v)}")


def _block_ms(v: Any) -> int:
    v = _int(10, 1000)(v)
    if v % 10:
        raise _Bad(f"out of range: {v} (must be a multiple of 10 ms, the VAD frame grid)")
    return v


# webrtcvad only accepts these capture rates natively; anything else would be resampled anyway,
# so a typo like 1600 is far more likely than a real need for another rate.
_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


def _rate(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"expected an integer, got {_show(v)}")
    if v not in _RATES:
        raise _Bad(f"out of range: {v} (allowed {', '.join(map(str, _RATES))})")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"expected true or false, got {_show(v)}")
    return v


def _pattern(regex: str, what: str) -> Callable[[Any], str]:
    compiled = re.compile(regex)

    def check(v: Any) -> str:
        if not isinstance(v, str) or not compiled.fullmatch(v):
            raise _Bad(f"expected {what}, got {_show(v)}")
        return v

    return check


def _mqtt_url(v: Any) -> str:
    from .sinks.mqtt import parse_mqtt_url  # one parser for the check and the connection

    if not isinstance(v, str):
        raise _Bad(f"expected a URL such as mqtt://host:1883, got {_show(v)}")
    try:
        parse_mqtt_url(v)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return v


_ROOM = _pattern(r"[A-Za-z0-9_-]{1,64}", "a room name of 1-64 letters, digits, _ or -")
_TOPIC_PREFIX = _pattern(r"[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}", "topic levels of letters, digits, _ or - joined by /")
_ENV_NAME = _pattern(r"[A-Za-z_][A-Za-z0-9_]{0,127}", "an environment variable name")


CHECKS: dict[str, Callable[[Any], Any]] = {
    "audio.device": _device,
    "audio.sample_rate": _rate,
    "audio.block_ms": _block_ms,
    "audio.queue_s": _num(0.0, 60.0, lo_open=True),
    "audio.source": _text,
    "vad.aggressiveness": _int(0, 3),
    "vad.start_ms": _int(0, 5000),
    "vad.hangover_ms": _int(0, 10000),
    "vad.padding_ms": _int(0, 5000),
    "vad.engine": _choice(("webrtc", "silero")),
    "vad.snr_db": _num(0.0, 60.0),
    "vad.silero_threshold": _num(0.0, 1.0, lo_open=True),
    "change.enabled": _bool,
    "change.threshold": _num(-1.0, 1.0),
    "change.recent_s": _num(0.2, 10.0),
    "change.confirm_hops": _int(1, 20),
    "change.min_reference_s": _num(0.0, 60.0),
    "change.continuous": _bool,
    "change.min_pause_s": _num(0.0, 10.0),
    "change.bridge_s": _num(0.0, 10.0),
    "change.bridge_hold": _bool,
    "change.bridge_threshold": _num(-1.0, 1.0),
    "change.embedding": _choice(CHANGE_EMBEDDINGS),
    "change.pause_embedding": _choice(CHANGE_EMBEDDINGS),
    "change.continuous_threshold": _optional(_num(-1.0, 1.0)),
    "change.short_gap_threshold": _optional(_num(-1.0, 1.0)),
    "change.profile_veto": _bool,
    "change.stranger_veto": _bool,
    "change.snr_slope": _num(0.0, 0.1),
    "scoring.threshold": _num(-1.0, 1.0),
    "scoring.min_margin": _num(0.0, 2.0),
    "scoring.min_speech_s": _num(0.0, 60.0),
    "scoring.hop_s": _num(0.0, 10.0, lo_open=True),
    "scoring.window_s": _num(0.0, 30.0, lo_open=True),
    "scoring.smoothing_hops": _int(1, 100),
    "scoring.duration_slope": _num(0.0, 1.0),
    "scoring.min_confidence": _optional(_num(0.0, 1.0, lo_open=True)),
    "scoring.snr_slope": _num(0.0, 0.1),
    "scoring.snr_ref_db": _num(0.0, 100.0),
    "profiles.dir": _optional(_text),
    "profiles.watch_s": _num(0.0, 3600.0),
    "model.path": _optional(_text),
    "model.variant": _choice(("fp32", "int8")),
    "model.threads": _int(1, 64),
    "output.json": _optional_bool,
    "output.stats_interval_s": _num(0.0, 86400.0, lo_open=True),
    "output.log_level": _choice(LOG_LEVELS),
    "mqtt.url": _optional(_mqtt_url),
    "mqtt.room": _optional(_ROOM),
    "mqtt.username": _optional(_text),
    "mqtt.password_file": _optional(_text),
    "mqtt.password_env": _optional(_ENV_NAME),
    "mqtt.tls": _bool,
    "mqtt.ca_file": _optional(_text),
    "mqtt.discovery_prefix": _TOPIC_PREFIX,
    "mqtt.topic_prefix": _TOPIC_PREFIX,
    "mqtt.backlog": _int(1, 100000),
}


def _sections() -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(Config) if f.name != "source")


def _build(tree: Any, where: str, source: str | None) -> Config:
    """Validate a parsed tree (possibly partial) and turn it into a Config."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise StreamsvError(f"config: expected a mapping of sections at the top level, got {_show(tree)}{where}")
    sections = {f.name: f.default_factory for f in _sections()}  # type: ignore[misc]
    built = {}
    for name in tree:
        if name not in sections:
            raise StreamsvError(f"config: {name}: unknown section (known: {', '.join(sections)}){where}")
    for name, factory in sections.items():
        raw = tree.get(name)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise StreamsvError(f"config: {name}: expected a mapping of settings, got {_show(raw)}{where}")
        known = {f.name for f in dataclasses.fields(factory)}
        values = {}
        for key, value in raw.items():
            dotted = f"{name}.{key}"
            if key not in known:
                raise StreamsvError(f"config: {dotted}: unknown key (known: {', '.join(sorted(known))}){where}")
            try:
                values[key] = CHECKS[dotted](value)
            except _Bad as bad:
                raise StreamsvError(f"config: {dotted}: {bad}{where}") from None
        built[name] = factory(**values)
    cfg = Config(**built, source=source)
    if cfg.scoring.hop_s > cfg.scoring.window_s:
        raise StreamsvError(
            f"config: scoring.hop_s: out of range: {cfg.scoring.hop_s:g} "
            f"(must not exceed scoring.window_s = {cfg.scoring.window_s:g}){where}"
        )
    return cfg


@functools.lru_cache(maxsize=1)
def _yaml() -> tuple[Any, type, Any]:
    """PyYAML, its strict loader and a scalar resolver, made at the first settings text: importing
    yaml is ~12 ms of a daemon's start, and most starts read no settings file."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def mapping_no_dupes(loader: StrictLoader, node: yaml.MappingNode) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen[key] = True
        return loader.construct_mapping(node, deep=True)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping_no_dupes)
    return yaml, StrictLoader, yaml.resolver.Resolver()


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _check_shape(text: str) -> None:
    """Walk the YAML events (a flat stream: no recursion, nothing expanded) and refuse, before
    anything is built: aliases (billion laughs), nesting deeper than MAX_YAML_DEPTH, keys that
    are not plain scalars, and scalars or numbers too long for any setting."""
    yaml, loader, resolver = _yaml()
    stack: list[list] = []          # per open collection: [is_mapping, items seen]
    for event in yaml.parse(text, Loader=loader):
        mark = event.start_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        is_key = bool(stack) and stack[-1][0] and stack[-1][1] % 2 == 0
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent, yaml.ScalarEvent, yaml.AliasEvent)):
            if stack:
                stack[-1][1] += 1
        if isinstance(event, yaml.AliasEvent):
            raise _Shape(f"YAML aliases (*name) are not allowed in settings{at}")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if is_key:
                raise _Shape(f"keys must be plain names, not a list or mapping{at}")
            stack.append([isinstance(event, yaml.MappingStartEvent), 0])
            if len(stack) > MAX_YAML_DEPTH:
                raise _Shape(f"nested deeper than {MAX_YAML_DEPTH} levels{at}")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            value = event.value
            if len(value) > MAX_SCALAR_CHARS:
                raise _Shape(f"a value of {len(value)} characters (at most {MAX_SCALAR_CHARS}){at}")
            if (event.implicit[0] and len(value) > MAX_NUMBER_CHARS
                    and resolver.resolve(yaml.ScalarNode, value, (True, False)) in _NUMBER_TAGS):
                raise _Shape(f"a number of {len(value)} characters (at most {MAX_NUMBER_CHARS}){at}")


class _Shape(Exception):
    pass


def parse_config(text: str, source: str | None = None) -> Config:
    """Parse and validate YAML text; ``source`` only labels error messages."""
    where = f" (in {source})" if source else ""
    yaml, loader, _ = _yaml()
    try:
        _check_shape(text)
        tree = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except _Shape as exc:
        raise StreamsvError(f"config: refused: {exc}{where}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise StreamsvError(f"config: malformed YAML{at}: {problem}{where}") from None
    return _build(tree, where, source)


def find_config(path: str | os.PathLike | None = None) -> Path | None:
    """The file ``load_config`` would read, or None for the defaults."""
    if path is not None and str(path) != "":
        return Path(path).expanduser()
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env).expanduser()
    for candidate in (USER_CONFIG.expanduser(), SYSTEM_CONFIG):
        if os.path.isfile(candidate):   # False, not an exception, for an unreadable home
            return candidate
    return None


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load settings following the search order; defaults when no file is found."""
    found = find_config(path)
    if found is None:
        return Config()
    label = f"config: {shown(found)}"
    try:
        # Bounded: a device (/dev/zero), a FIFO or a growing file cannot make us read forever.
        raw, _ = read_bounded(found, MAX_CONFIG_BYTES, label)
    except StreamsvError as exc:
        msg = str(exc)
        if msg == f"{label}: no such file":
            msg += f" (from {'--config' if path else '$' + ENV_CONFIG})"
        elif msg.endswith("is a folder, expected a file"):
            msg = f"{label}: is a folder, expected a YAML file"
        elif "Permission denied" in msg:
            msg = f"{label}: permission denied"
        raise StreamsvError(msg) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamsvError(f"{label}: not UTF-8 text") from None
    return parse_config(text, source=shown(found))
