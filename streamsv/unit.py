"""``streamsv service install``: the systemd unit, from the one file shipped with the package.

``streamsv/systemd/streamsv.service`` is the unit as installed by default (package data). Install
reads it and changes only what differs per machine: the ExecStart path (the running streamsv),
ProtectHome (read-only when that path is under /home), the watchdog period, and, with
``--network``, the address-family lines that let the service reach an MQTT broker over IP.
Each change replaces a line that must appear exactly once; a damaged file is an error.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from pathlib import Path

from .errors import StreamsvError, shown
from .safeio import atomic_write, read_bounded

UNIT_NAME = "streamsv.service"
UNIT_FILE = Path(__file__).parent / "systemd" / UNIT_NAME     # package data: the unit with its defaults
UNIT_PATH = Path("/etc/systemd/system") / UNIT_NAME
UNIT_MODE = 0o644
MAX_UNIT_BYTES = 64 * 1024                 # the shipped unit is ~4 KB
EXEC_ARGS = " listen --service"            # what ExecStart runs after the executable
HOME_PREFIXES = ("/home/", "/root/", "/run/user/")
# --network: AF_UNIX carries sd_notify and ALSA plugins; IP reaches the broker. PrivateNetwork=no,
# and no IPAddressDeny (any IP deny would block the broker too).
NETWORK_COMMENT = ("# AF_UNIX carries sd_notify and ALSA plugins; IP reaches the MQTT broker (service install\n"
                   "# --network); still no netlink and no raw sockets.")
NETWORK_DIRECTIVES = {"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "PrivateNetwork": "no", "IPAddressDeny": None}


def shipped_unit() -> str:
    """The unit file as shipped (the defaults: /usr/local/bin/streamsv, no network)."""
    try:
        raw, _ = read_bounded(UNIT_FILE, MAX_UNIT_BYTES, f"service: the shipped unit file {shown(UNIT_FILE)}")
        return raw.decode("utf-8")
    except StreamsvError as e:
        raise StreamsvError(f"{e}; reinstall streamsv") from None
    except UnicodeDecodeError:
        raise StreamsvError(f"service: the shipped unit file {shown(UNIT_FILE)} is not UTF-8 text; reinstall streamsv") from None


def directive(text: str, key: str) -> str:
    """The value of the one ``key=`` line in ``text``."""
    return text.splitlines()[_line_of(text.splitlines(), key)].partition("=")[2]


def _line_of(lines: list[str], key: str) -> int:
    found = [i for i, line in enumerate(lines) if line.startswith(key + "=")]
    if len(found) != 1:
        raise StreamsvError(f"service: the shipped unit file {UNIT_FILE} has {len(found)} {key}= lines, "
                            f"expected 1; reinstall streamsv")
    return found[0]


def _set(lines: list[str], key: str, value: str | None) -> None:
    """Replace the one ``key=`` line (or drop it when ``value`` is None)."""
    i = _line_of(lines, key)
    if value is None:
        del lines[i]
    else:
        lines[i] = f"{key}={value}"


def default_executable() -> list[str]:
    """How systemd should start streamsv, as a command's words: the installed console script, else
    this Python."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "streamsv" and argv0.exists():
        return [str(argv0.resolve())]
    found = shutil.which("streamsv")
    if found:
        return [str(Path(found).resolve())]
    return [str(Path(sys.executable).resolve()), "-m", "streamsv.cli"]  # cli.py runs main() as a module


def exec_word(word: str) -> str:
    """``word`` (a path, or a constant argument) as one word of the ExecStart= line. systemd splits
    the line at whitespace and expands ``%`` specifiers, so a word with a space is double-quoted
    and ``%`` doubled: "/opt/my dir/streamsv" stays one path (``$`` is left alone: systemd does not
    expand it in the executable's name). systemd refuses quotes and backslashes in an executable's
    name, and a control character (a newline would start a directive of its own) could inject
    one: such a path is refused here with its reason."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in word):
        raise StreamsvError(f"service: the executable path {shown(word)} holds a control character")
    if any(c in word for c in "\"'\\"):
        raise StreamsvError(f"service: the executable path {shown(word)} holds a quote or a backslash, "
                            "which systemd does not accept in ExecStart; install streamsv under another path")
    word = word.replace("%", "%%")
    return f'"{word}"' if re.search(r"\s", word) else word


def unit_text(executable: str | None = None, watchdog_s: int | None = None, network: bool = False) -> str:
    """The unit file. ``executable`` defaults to the running streamsv (as installed); ``watchdog_s``
    to the shipped WatchdogSec; ``network`` lets the service reach an MQTT broker over IP (the
    default unit has no network at all)."""
    command = [executable] if executable else default_executable()
    if not command[0].startswith("/"):
        raise StreamsvError(f"service: executable must be an absolute path, got {shown(command[0])}")
    lines = shipped_unit().split("\n")
    _set(lines, "ExecStart", " ".join(map(exec_word, command)) + EXEC_ARGS)
    # ProtectHome=yes hides /home: a streamsv installed in a venv there could not even start.
    if command[0].startswith(HOME_PREFIXES):
        _set(lines, "ProtectHome", "read-only")
    if watchdog_s is not None:
        _set_watchdog(lines, watchdog_s)
    if network:
        _open_network(lines)
    return "\n".join(lines)


def _set_watchdog(lines: list[str], watchdog_s: int) -> None:
    """WatchdogSec, and the comment above it that says how often the pings go (half of it)."""
    i = _line_of(lines, "WatchdogSec")
    lines[i] = f"WatchdogSec={watchdog_s}s"
    if i > 0 and lines[i - 1].startswith("#"):
        lines[i - 1] = re.sub(r"every \S+s ", f"every {watchdog_s / 2:g}s ", lines[i - 1], count=1)


def _open_network(lines: list[str]) -> None:
    """The address-family block for a broker over IP: its comment and three directives."""
    i = _line_of(lines, "RestrictAddressFamilies")
    start = i
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    lines[start:i] = NETWORK_COMMENT.split("\n")
    for key, value in NETWORK_DIRECTIVES.items():
        _set(lines, key, value)


def install_unit(path: str | os.PathLike = UNIT_PATH, print_only: bool = False, executable: str | None = None,
                 network: bool = False, force: bool = False) -> str:
    """Write the unit file atomically (0644) unless ``print_only``; returns its text. A unit already
    there with other contents (an older install, or the admin's own edits) is replaced only with
    ``force``; the same contents are left as they are."""
    text = unit_text(executable, network=network)
    if print_only:
        return text
    target = Path(path)
    if not target.parent.is_dir():
        raise StreamsvError(f"service: {target.parent}: no such folder (is systemd installed?)")
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise StreamsvError(f"service: {target}: {exc.strerror or exc}") from None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        # The temp-and-rename write would replace a device node, FIFO or symlink with a file.
        raise StreamsvError(f"service: {target}: exists and is not a regular file; refusing to replace it")
    if existing is not None and not force:
        try:
            same = read_bounded(target, MAX_UNIT_BYTES)[0].decode("utf-8", "replace") == text
        except (OSError, StreamsvError):
            same = False
        if same:
            return text
        raise StreamsvError(f"service: {target} exists with other contents; use --force to replace it "
                            "(or --print to compare)")
    try:
        atomic_write(target, text, mode=UNIT_MODE)
    except PermissionError:
        raise StreamsvError(f"service: cannot write {target}: permission denied (run with sudo, or use --print)") from None
    except OSError as exc:
        raise StreamsvError(f"service: cannot write {target}: {exc.strerror or exc}") from None
    return text


def install_hints(path: str | os.PathLike = UNIT_PATH) -> str:
    """What to run after ``install_unit`` (printed by the CLI); the user is the unit's own."""
    user = directive(shipped_unit(), "User")
    return (
        f"wrote {path}\n"
        "next:\n"
        f"  id {user} >/dev/null 2>&1 || sudo useradd --system --no-create-home "
        f"--shell /usr/sbin/nologin --groups audio {user}\n"
        "  sudo systemctl daemon-reload\n"
        "  sudo systemctl enable --now streamsv\n"
        "  journalctl -u streamsv -f"
    )
