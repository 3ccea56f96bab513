"""The ``streamsv`` command line.

Every user-fixable problem is a StreamsvError; ``main`` prints it as
``error: <message>`` on stderr and exits 2, never a traceback.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import re
import sys
import time
import typing
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer

from . import app as application
from .enrollment import GOOD_SPEECH_S
from .errors import StreamsvError, os_reason, shown

EXIT_ERROR = 2
EXIT_REJECT = 1
MAX_ENROLL_SECONDS = 600.0    # --seconds: ten minutes of voice is far more than a profile needs
# After a service stops, skip the interpreter's teardown, which stands between SIGTERM and the
# promised exit within 2 s: it cost ~1 s of CPU (8 s wall on a loaded 2-core box) when the daemon
# still loaded torch; with the ONNX model it is ~0.2 s on an idle box. Everything is flushed
# first. In-process tests turn it off.
FAST_SERVICE_EXIT = True
# A number as listen's quick parse takes it (docs/performance.md: start-up); anything else goes
# to typer, which says what is wrong with it.
PLAIN_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")



class _QuietPipeGroup(typer.core.TyperGroup):
    """The top-level command group, catching output failures before typer does.

    typer turns a broken pipe into exit status 1, which for `verify` means "reject" and for
    `listen ... | head -1` is a false failure: the reader leaving is not an error, so it is exit 0
    (``verify`` keeps its decision's status: it writes through ``_say``). Any other failure to
    write stdout (``> /dev/full``) is one ``error:`` line and exit 2, not a traceback.
    """

    def invoke(self, ctx):
        with _output_failures():
            return super().invoke(ctx)


@contextlib.contextmanager
def _output_failures() -> Iterator[None]:
    """Around a command: a reader that left is exit 0, any other OSError one ``error:`` line."""
    try:
        yield
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(0) from None
    except OSError as e:
        # Never a traceback: an OSError that escaped a command is one line. Without a file
        # name it came from writing stdout (a full disk, /dev/full, a dead terminal).
        stdout_failed = e.filename is None or _stdout_failed()
        _silence_stdout()
        if stdout_failed:
            raise StreamsvError(f"cannot write the output: {os_reason(e)}") from None
        raise StreamsvError(f"{shown(e.filename)}: {os_reason(e)}") from None


def _stdout_failed() -> bool:
    try:
        sys.stdout.flush()
        return False
    except (OSError, ValueError):
        return True


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that the final flush at exit cannot fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    finally:
        os.close(devnull)


def _say(text: str) -> None:
    """Print a result line; a reader that left (``| head -c0``) does not change the exit status."""
    try:
        typer.echo(text)
    except BrokenPipeError:
        _silence_stdout()


app = typer.Typer(cls=_QuietPipeGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="On-device, real-time speaker verification.")
profiles_app = typer.Typer(no_args_is_help=True, help="List, show, delete, rename, export and import voice profiles.")
app.add_typer(profiles_app, name="profiles")
service_app = typer.Typer(no_args_is_help=True, help="Run streamsv as a systemd service.")
app.add_typer(service_app, name="service")


# Shared option declarations.
ConfigOpt = typer.Option(None, "--config", help="Settings file (YAML); default search: $STREAMSV_CONFIG, ~/.config/streamsv/config.yaml, /etc/streamsv/config.yaml.")
ProfilesOpt = typer.Option(None, "--profiles-dir", help="Profiles folder (default: $STREAMSV_PROFILES_DIR or ./profiles).")
ModelOpt = typer.Option(None, "--model", help="Model weights file (default: the shipped weights).")


# --------------------------------------------------------------------------- plumbing

def _load_config(config: Optional[Path], overrides: dict):
    """The settings file (search order in config.py) with the flags the user gave on top."""
    from .config import load_config

    cfg = load_config(str(config) if config is not None else None)
    given = {k: v for k, v in overrides.items() if v is not None}
    return cfg.with_overrides(**given) if given else cfg


def _config(config: Optional[Path], **overrides):
    cfg = _load_config(config, overrides)
    logging.basicConfig(level=getattr(logging, cfg.output.log_level.upper(), logging.INFO),
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    return cfg


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


# --------------------------------------------------------------------------- devices

@app.command()
def devices() -> None:
    """List audio input devices (use the index or part of the name with --device)."""
    from .sources import list_input_devices

    devs = list_input_devices()
    if not devs:
        _err("no input devices found")
        return
    for d in devs:
        mark = "*" if d.get("default") else " "
        typer.echo(f"{mark} [{d['index']}] {d['name']}  ({d['hostapi']}, {d['channels']} ch, {d['default_samplerate']:.0f} Hz)")
    typer.echo("* = the default input (used without --device)")


# --------------------------------------------------------------------------- enroll

@app.command()
def enroll(
    name: str = typer.Argument(..., help="Profile name: 1-64 of A-Z a-z 0-9 _ . -"),
    files: Optional[List[Path]] = typer.Argument(None, hidden=True),
    from_: Optional[List[Path]] = typer.Option(None, "--from", help="Enroll from audio files instead of the mic: --from a.wav b.flac ..."),
    seconds: float = typer.Option(GOOD_SPEECH_S, "--seconds", help="Voiced seconds to collect from the mic "
                                  f"({GOOD_SPEECH_S:g} s makes a good profile, from the mic or from files)."),
    device: Optional[str] = typer.Option(None, "--device", help="Input device: index or part of its name."),
    append: bool = typer.Option(False, "--append", help="Add this speech to an existing profile (keeps its embeddings, "
                                "recomputes the centroid)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing profile; keep a voice that sounds like "
                               "another profile; append a voice that does not sound like the profile."),
    json_out: bool = typer.Option(False, "--json", help="Progress and result as JSON lines (quality figures, verdict)."),
    config: Optional[Path] = ConfigOpt,
    profiles_dir: Optional[str] = ProfilesOpt,
    model: Optional[str] = ModelOpt,
) -> None:
    """Enroll a voice: from the microphone (default) or from files with --from.

    The recording is judged good, usable or refused from measured figures (speech seconds,
    level, SNR, clipping, noise- and tone-likeness, consistency); refused writes nothing.
    """
    from .enroll_command import run_enroll
    from .profiles import check_name

    check_name(name)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_ENROLL_SECONDS):
        raise StreamsvError(f"--seconds: expected more than 0 and at most {MAX_ENROLL_SECONDS:g}, got {seconds:g}")
    cfg = _config(config, **{"profiles.dir": profiles_dir, "model.path": model, "audio.device": device})
    paths = list(from_ or []) + list(files or [])
    run_enroll(name, paths, seconds, force=force, append=append, json_out=json_out, cfg=cfg,
               load_model=lambda: application.load_model(cfg.model), say=_say, warn=_err)


# --------------------------------------------------------------------------- listen

@app.command()
def listen(
    source: Optional[str] = typer.Option(None, "--source", help="mic (default), an audio file, or - for raw s16le mono on stdin (at audio.sample_rate: 16 kHz unless set)."),
    device: Optional[str] = typer.Option(None, "--device", help="Input device: index or part of its name."),
    realtime: bool = typer.Option(False, "--realtime", help="Play a file at wall-clock pace (as a mic would)."),
    json_out: Optional[bool] = typer.Option(None, "--json/--no-json", help="JSON lines (default when stdout is not a TTY)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Accept when the best cosine is at least this "
                                              "(for a full window; lower for shorter ones by duration_slope)."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Accept when the calibrated confidence "
                                                   "(0-1) is at least this, instead of a cosine --threshold."),
    min_margin: Optional[float] = typer.Option(None, "--min-margin", help="...and leads the runner-up by at least this."),
    turns: bool = typer.Option(False, "--turns", help="JSON: only turn-level events (ready, speech_start, speaker_change, a decision "
                               "when the label changes, speech_end with the turn's decision, final stats), for scripts."),
    service: bool = typer.Option(False, "--service", help="Run as a systemd service (implied when $NOTIFY_SOCKET is set): "
                                 "sd_notify READY/WATCHDOG/STATUS, SIGHUP reloads profiles and thresholds, "
                                 "SIGTERM stops cleanly, a failed microphone is reopened with backoff."),
    mqtt: Optional[str] = typer.Option(None, "--mqtt", help="Also publish to Home Assistant over MQTT: mqtt://HOST:PORT "
                                       "(mqtts:// for TLS; the password only from the config's mqtt.password_file or password_env)."),
    room: Optional[str] = typer.Option(None, "--room", help="This device's room for MQTT (default: mqtt.room, else the host name)."),
    config: Optional[Path] = ConfigOpt,
    profiles_dir: Optional[str] = ProfilesOpt,
    model: Optional[str] = ModelOpt,
) -> None:
    """Say live who is speaking: accept an enrolled name, or reject as unknown."""
    overrides = {"audio.source": source, "audio.device": device, "output.json": json_out,
                 "scoring.threshold": threshold, "scoring.min_margin": min_margin,
                 "scoring.min_confidence": min_confidence, "profiles.dir": profiles_dir, "model.path": model, "mqtt.url": mqtt, "mqtt.room": room}
    cfg = _config(config, **overrides)
    application.check_listen_inputs(cfg)
    from .service import NOTIFY_ENV

    if service or os.environ.get(NOTIFY_ENV):
        from .logs import setup_logging

        setup_logging(cfg.output.log_level)      # one line per record; journald adds the time
        emb = application.load_model(cfg.model)
        # SIGHUP re-reads the same file with the same flags on top: flags keep winning.
        code = application.run_service(cfg, emb, realtime=realtime, reload_config=lambda: _load_config(config, overrides),
                                       turns=turns)
        if FAST_SERVICE_EXIT:
            _exit_now(code)
        raise typer.Exit(code)
    emb = application.load_model(cfg.model)
    application.run_listen(cfg, emb, realtime=realtime, turns=turns)


def quick_listen_args(argv: list[str]) -> dict[str, Any] | None:
    """``listen``'s arguments read straight from its declaration above, or None.

    typer coerces every parameter through a pydantic TypeAdapter: importing pydantic and building
    the adapters is ~90 ms of CPU, a quarter of the daemon's start to READY (docs/performance.md).
    A plain ``listen`` command line (its own options, each at most once, as ``--name value``,
    ``--name=value`` or a flag; numbers written plainly) is read here instead, to the same values
    typer gives (tests/test_cli.py holds the two to each other). Anything else (help, a typo, an
    odd value) gives None, and typer parses it with its own messages.
    """
    if not argv or argv[0] != "listen":
        return None
    hints = typing.get_type_hints(listen)
    values: dict[str, Any] = {}
    by_name: dict[str, tuple[str, type, Any]] = {}   # option name -> (parameter, type, flag value)
    for param in inspect.signature(listen).parameters.values():
        info, kind = param.default, hints[param.name]
        if typing.get_origin(kind) is typing.Union:    # Optional[X]: X, or None when not given
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if not isinstance(info, typer.models.OptionInfo) or kind not in (bool, str, float, Path) \
                or info.default not in (None, False) or info.envvar or info.callback or info.parser:
            return None
        values[param.name] = info.default
        for decl in info.param_decls:
            on, _, off = decl.partition("/")
            if kind is not bool and off:
                return None
            by_name[on] = (param.name, kind, True)
            if off:
                by_name[off] = (param.name, kind, False)
    given: set[str] = set()
    rest = list(argv[1:])
    while rest:
        name, eq, value = rest.pop(0).partition("=")
        if name not in by_name:
            return None
        param, kind, flag = by_name[name]
        if param in given:
            return None
        given.add(param)
        if kind is bool:
            if eq:
                return None
            values[param] = flag
            continue
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        if value.startswith("-") and value != "-":
            return None
        if kind is float:
            if not PLAIN_NUMBER.fullmatch(value) or not math.isfinite(float(value)):
                return None
            values[param] = float(value)
        elif kind is Path:
            if not value:
                return None
            values[param] = Path(value)
        else:
            values[param] = value
    return values


def _run_quick_listen(kwargs: dict[str, Any]) -> int:
    """``listen`` called with ``quick_listen_args``' values, its exit status as typer gives it."""
    try:
        with _output_failures():
            listen(**kwargs)
    except typer.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except EOFError:                      # click's Abort: a blank line, exit 1
        _err("")
        return 1
    return 0


def _exit_now(code: int) -> None:
    """Flush every stream and log handler, then leave without interpreter teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass               # a closed pipe: nothing left to deliver
    logging.shutdown()
    os._exit(code)


# --------------------------------------------------------------------------- verify / embed

@app.command()
def verify(
    name: str = typer.Argument(..., help="Claimed profile name."),
    file: Path = typer.Argument(..., help="Audio file of the speaker."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Accept when the cosine is at least this."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Accept when the calibrated "
                                                   "confidence (0-1) is at least this, instead of --threshold."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object: speaker, accepted, score, confidence, ..."),
    config: Optional[Path] = ConfigOpt,
    profiles_dir: Optional[str] = ProfilesOpt,
    model: Optional[str] = ModelOpt,
) -> None:
    """Score FILE against NAME's profile (cosine and calibrated confidence); exit 0 on accept, 1 on reject."""
    from .profiles import check_name

    check_name(name)
    cfg = _config(config, **{"profiles.dir": profiles_dir, "model.path": model, "scoring.threshold": threshold,
                             "scoring.min_confidence": min_confidence})
    result = application.verify(cfg, name, file, load_model=lambda: application.load_model(cfg.model))
    _say(json.dumps(result.as_dict()) if json_out else result.line())
    raise typer.Exit(0 if result.accepted else EXIT_REJECT)


@app.command()
def embed(
    files: List[Path] = typer.Argument(..., help="Audio files."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
    model: Optional[str] = ModelOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Print the embedding of each whole file (unit vector)."""
    cfg = _config(config, **{"model.path": model})
    emb = application.load_model(cfg.model)
    for f in files:
        vec = application.embed_file(emb, f)
        if json_out:
            typer.echo(json.dumps({"file": str(f), "model": emb.fingerprint, "dim": int(vec.size),
                                   "embedding": [round(float(x), 6) for x in vec]}))
        else:
            typer.echo(f"{f}\t" + " ".join(f"{x:.6f}" for x in vec))


# --------------------------------------------------------------------------- calibrate

@app.command()
def calibrate(
    folder: Path = typer.Argument(..., help="One sub-folder per speaker, each with several recordings."),
    enroll_n: int = typer.Option(3, "--enroll-n", help="Recordings per speaker used to build its profile."),
    target_far: Optional[float] = typer.Option(None, "--target-far", help="Pick the threshold with at most this false-accept rate (e.g. 0.01) instead of the EER point."),
    save: bool = typer.Option(False, "--save", help="Save the confidence calibration fitted on these recordings into "
                              "the profiles folder (used instead of the shipped one for this model)."),
    force: bool = typer.Option(False, "--force", help="With --save: replace a calibration saved before for this model."),
    config: Optional[Path] = ConfigOpt,
    profiles_dir: Optional[str] = ProfilesOpt,
    model: Optional[str] = ModelOpt,
) -> None:
    """Derive an accept threshold and a confidence calibration from your own recordings and print them."""
    from .calibration import run_calibrate

    cfg = _config(config, **{"model.path": model, "profiles.dir": profiles_dir})
    run_calibrate(folder, enroll_n, target_far, save=save, force=force, cfg=cfg,
                  load_model=lambda: application.load_model(cfg.model), say=_say, warn=_err)


# --------------------------------------------------------------------------- profiles

@profiles_app.command("list")
def profiles_list(json_out: bool = typer.Option(False, "--json", help="One JSON object per profile."),
                  profiles_dir: Optional[str] = ProfilesOpt, config: Optional[Path] = ConfigOpt) -> None:
    """List enrolled profiles (name, speech, embeddings, model, created)."""
    cfg = _config(config, **{"profiles.dir": profiles_dir})
    store = application.open_store(cfg)
    names = store.names()
    if not names:
        _err(f"no profiles in {store.dir}")
        return
    if not json_out:
        typer.echo(f"{'name':<20} {'speech':>8} {'emb':>4}  {'model':<16}  created")
    for n in names:
        try:
            p = store.load(n)
            created = time.strftime('%Y-%m-%d %H:%M', time.localtime(p.created))
            if json_out:
                typer.echo(json.dumps({"name": n, "speech_s": round(p.speech_s, 2), "embeddings": len(p.embeddings),
                                       "model": p.model, "created": created, "readable": True}))
            else:
                # The model string comes from the file: escaped, it cannot break the line or drive the terminal.
                typer.echo(f"{n:<20} {p.speech_s:>6.1f} s {len(p.embeddings):>4}  {shown(p.model):<16}  {created}")
        except StreamsvError as e:
            typer.echo(json.dumps({"name": n, "readable": False, "error": str(e)}) if json_out
                       else f"{n:<20} UNREADABLE: {e}")


@profiles_app.command("show")
def profiles_show(name: str = typer.Argument(..., help="Profile name."),
                  json_out: bool = typer.Option(False, "--json", help="One JSON object."),
                  profiles_dir: Optional[str] = ProfilesOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Show one profile's details."""
    cfg = _config(config, **{"profiles.dir": profiles_dir})
    p = application.open_store(cfg).load(name)
    mean, low = p.consistency()
    info = {"name": p.name, "model": p.model, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(p.created)),
            "speech_s": round(p.speech_s, 2), "embeddings": len(p.embeddings), "dim": p.dim,
            "consistency_mean": round(mean, 4), "consistency_min": round(low, 4)}
    if json_out:
        typer.echo(json.dumps(info))
    else:
        for k, v in info.items():
            typer.echo(f"{k:17} {shown(v)}")


@profiles_app.command("delete")
def profiles_delete(name: str = typer.Argument(..., help="Profile name."), profiles_dir: Optional[str] = ProfilesOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Delete a profile."""
    cfg = _config(config, **{"profiles.dir": profiles_dir})
    application.open_store(cfg).delete(name)
    typer.echo(f"deleted {name!r}")


@profiles_app.command("rename")
def profiles_rename(old: str = typer.Argument(..., help="Current name."), new: str = typer.Argument(..., help="New name."),
                    force: bool = typer.Option(False, "--force", help="Replace a profile already called NEW."),
                    profiles_dir: Optional[str] = ProfilesOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Rename a profile."""
    cfg = _config(config, **{"profiles.dir": profiles_dir})
    application.open_store(cfg).rename(old, new, force=force)
    typer.echo(f"renamed {old!r} -> {new!r}")


@profiles_app.command("export")
def profiles_export(name: str = typer.Argument(..., help="Profile name."),
                    dest: Path = typer.Argument(..., help="File (or folder) to write."), force: bool = typer.Option(False, "--force", help="Replace an existing file."),
                    profiles_dir: Optional[str] = ProfilesOpt, config: Optional[Path] = ConfigOpt) -> None:
    """Copy a profile to a file (0600; it is biometric data: keep it private)."""
    if str(dest) == "-":   # not stdout: a terminal or a pipe would carry it past the file's 0600
        raise StreamsvError("profiles export writes a file (0600), not stdout: give a path, such as alice.json")
    cfg = _config(config, **{"profiles.dir": profiles_dir})
    out = application.open_store(cfg).export(name, dest, force=force)
    typer.echo(f"exported {name!r} -> {out}")


@profiles_app.command("import")
def profiles_import(file: Path = typer.Argument(..., help="Profile file (from profiles export)."),
                    name: Optional[str] = typer.Option(None, "--name", help="Store under this name."),
                    force: bool = typer.Option(False, "--force", help="Replace an existing profile of that name."), profiles_dir: Optional[str] = ProfilesOpt,
                    config: Optional[Path] = ConfigOpt, model: Optional[str] = ModelOpt) -> None:
    """Import a profile file made by this model."""
    cfg = _config(config, **{"profiles.dir": profiles_dir, "model.path": model})
    emb = application.load_model(cfg.model)
    p = application.open_store(cfg).import_(file, name=name, force=force, fingerprint=emb.fingerprint, dim=emb.dim)
    typer.echo(f"imported {p.name!r}")


# --------------------------------------------------------------------------- service

@service_app.command("install")
def service_install(
    print_only: bool = typer.Option(False, "--print", help="Print the unit file instead of writing it."),
    path: Optional[Path] = typer.Option(None, "--path", help="Where to write it (default /etc/systemd/system/streamsv.service)."),
    executable: Optional[str] = typer.Option(None, "--executable", help="Absolute path of streamsv for ExecStart (default: this one)."),
    network: bool = typer.Option(False, "--network", help="Let the service reach an MQTT broker over IP "
                                 "(the default unit has no network at all)."),
    force: bool = typer.Option(False, "--force", help="Replace a unit file already there with other contents."),
) -> None:
    """Install the systemd unit that runs `streamsv listen --service` at boot."""
    from .unit import UNIT_PATH, install_hints, install_unit

    target = path or UNIT_PATH
    text = install_unit(target, print_only=print_only, executable=executable, network=network, force=force)
    if print_only:
        typer.echo(text, nl=False)
    else:
        typer.echo(install_hints(target))


# --------------------------------------------------------------------------- wyoming

@app.command()
def wyoming(
    uri: str = typer.Option("tcp://0.0.0.0:10500", "--uri", help="Where Home Assistant reaches this proxy."),
    asr_uri: str = typer.Option(..., "--asr-uri", help="The real speech-to-text service, e.g. tcp://whisper:10300."),
    unknown: str = typer.Option("tag", "--unknown", help="An unknown voice: tag (transcript passes, speaker unknown) "
                                "or refuse (empty transcript)."),
    prefix: bool = typer.Option(True, "--prefix/--no-prefix", help="Start the text with the speaker's name in square brackets."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Accept when the best cosine is at least this."),
    min_speech_s: Optional[float] = typer.Option(None, "--min-speech-s", help="Speech before the first decision "
                                                 "(default: scoring.min_speech_s); short commands want less."),
    config: Optional[Path] = ConfigOpt,
    profiles_dir: Optional[str] = ProfilesOpt,
    model: Optional[str] = ModelOpt,
) -> None:
    """A speaker-aware Wyoming ASR proxy: transcripts come back with who spoke."""
    from .wyoming_asr import UNKNOWN_POLICIES, ProxySettings, check_uri

    if unknown not in UNKNOWN_POLICIES:
        raise StreamsvError(f"--unknown: expected one of {', '.join(UNKNOWN_POLICIES)}, got {unknown!r}")
    settings = ProxySettings(check_uri(uri, "--uri"), check_uri(asr_uri, "--asr-uri"), unknown, prefix)
    cfg = _config(config, **{"profiles.dir": profiles_dir, "model.path": model, "scoring.threshold": threshold,
                             "scoring.min_speech_s": min_speech_s})
    application.run_wyoming(settings, cfg, load_model=lambda: application.load_model(cfg.model))


# --------------------------------------------------------------------------- bench / demo

@app.command(add_help_option=False, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Speed and memory of the listen pipeline: the fp32 and int8 graphs side by side (options go to streamsv.bench)."""
    try:
        from . import bench as bench_mod
    except ImportError as e:
        raise StreamsvError(f"streamsv bench is not available in this install ({e})") from None
    rc = bench_mod.main(list(ctx.args))
    raise typer.Exit(int(rc or 0))


@app.command()
def demo(
    realtime: bool = typer.Option(True, "--realtime/--fast", help="Play the conversation at real-time pace."),
    json_out: Optional[bool] = typer.Option(None, "--json/--no-json", help="JSON lines (default when stdout is not a TTY)."),
    keep: Optional[Path] = typer.Option(None, "--keep", help="Also save the generated audio in this folder."),
    model: Optional[str] = ModelOpt,
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Enroll two synthetic voices and play a conversation through the live pipeline: start here."""
    from .demo import run_demo

    cfg = _config(config, **{"model.path": model, "output.json": json_out})
    emb = application.load_model(cfg.model)
    run_demo(cfg, emb, realtime=realtime, keep=keep)


# --------------------------------------------------------------------------- entry point

def _usage_error(e: Exception) -> None:
    """Click's usage errors in the one ``error: ...`` style, then exit; anything else is re-raised.
    Matched by shape, not class: typer vendors click from 0.2x on, so the class path varies."""
    name = type(e).__name__
    if name == "Abort":                     # end of input at a prompt
        sys.exit(1)
    if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
        raise e
    message = e.format_message().strip()
    if name == "NoArgsIsHelpError":         # bare `streamsv profiles`: the help is the answer
        if message:
            typer.echo(message, err=True)
    elif message:
        ctx = getattr(e, "ctx", None)
        where = ctx.command_path if ctx is not None else "streamsv"
        _err(f"error: {message} (see: {where} --help)")
    sys.exit(e.exit_code)


def main(argv: list[str] | None = None) -> None:
    # Started with stdout/stderr closed (`streamsv verify ... >&-`): Python leaves them None;
    # write into /dev/null rather than fail on the first print.
    for stream in ("stdout", "stderr"):
        if getattr(sys, stream) is None:
            setattr(sys, stream, open(os.devnull, "w"))
    try:
        # listen, the daemon, skips typer's parsing when its command line is plain (start-up).
        quick = quick_listen_args(list(sys.argv[1:] if argv is None else argv))
        if quick is not None:
            code = _run_quick_listen(quick)
        else:
            # standalone_mode=False: usage errors come back here to be printed in the one style.
            code = app(args=argv, prog_name="streamsv", standalone_mode=False)
    except StreamsvError as e:
        _err(f"error: {e}")
        sys.exit(EXIT_ERROR)
    except BrokenPipeError:
        # `streamsv listen --json | head`: the reader left; not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        _usage_error(e)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
