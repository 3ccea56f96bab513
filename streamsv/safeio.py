"""Files that may be hostile, and files that must never be seen half-written.

Reading: bounded in size, regular files only, never blocking; the one trust check for files that
decide who is who (profiles, a user's confidence calibration). Writing: ``atomic_write`` (temp
file, fsync, rename), for profiles, the confidence calibration and the systemd unit.

A size check on ``st_size`` is not a bound: it is 0 for ``/dev/zero`` and for a FIFO, and a file
can grow between the check and the read. So the file is opened without blocking (a FIFO with no
writer would otherwise hang ``open``), refused unless it is a regular file, and read for at most
``limit + 1`` bytes: one byte more than allowed proves it too large without reading the rest.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from .errors import StreamsvError, os_reason, shown

READ_STEP = 1 << 20
UNSAFE_MODE_BITS = stat.S_IWGRP | stat.S_IWOTH    # another user could have written the file
PRIVATE_MODE = 0o600                              # what atomic_write gives a file unless told otherwise
TMP_PREFIX = ".tmp-"                              # atomic_write's temporary files


def read_bounded(path: str | os.PathLike, limit: int, what: str | None = None,
                 follow_symlinks: bool = True) -> tuple[bytes, os.stat_result]:
    """(contents, fstat of the opened file) of a regular file of at most ``limit`` bytes.

    ``what`` labels error messages (default: the path). With ``follow_symlinks=False`` a symbolic
    link is refused instead of followed. Every failure is a one-line StreamsvError.
    """
    label = what or shown(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise StreamsvError(f"{label}: no such file") from None
    except ValueError:          # an embedded NUL byte
        raise StreamsvError(f"{label}: invalid path (contains a NUL byte)") from None
    except OSError as e:
        if not follow_symlinks and os.path.islink(path):
            raise StreamsvError(f"{label}: is a symbolic link; refusing to follow it") from None
        raise StreamsvError(f"{label}: cannot read ({os_reason(e)})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise StreamsvError(f"{label}: is a folder, expected a file")
        if not stat.S_ISREG(st.st_mode):
            raise StreamsvError(f"{label}: not a regular file (a device, FIFO or socket); refusing to read it")
        os.set_blocking(fd, True)
        parts, total = [], 0
        while total <= limit:
            block = os.read(fd, min(READ_STEP, limit + 1 - total))
            if not block:
                break
            parts.append(block)
            total += len(block)
        if total > limit:
            raise StreamsvError(f"{label}: too large (more than {limit} bytes)")
        return b"".join(parts), st
    except OSError as e:
        raise StreamsvError(f"{label}: cannot read ({os_reason(e)})") from None
    finally:
        os.close(fd)


def check_trusted(st: os.stat_result, path: str | os.PathLike, where: str, kind: str, why: str) -> None:
    """Refuse, as ssh does, what another user could have written: ``st`` (of ``path``) owned by
    someone other than the effective user or root, or writable by group or others. ``where`` and
    ``kind`` name it in the message ("profiles folder /x", "it"); ``why`` says what it decides."""
    if st.st_uid not in (os.geteuid(), 0):
        raise StreamsvError(f"{where}: {kind} is owned by another user (uid {st.st_uid}); refusing to trust it ({why}: "
                            f"it must belong to you or root)")
    if st.st_mode & UNSAFE_MODE_BITS:
        raise StreamsvError(f"{where}: {kind} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                            f"refusing to trust it (fix: chmod go-w {shown(path)})")


def atomic_write(path: Path, text: str, replace: bool = True, mode: int = PRIVATE_MODE) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never half of one;
    the file gets ``mode`` before it appears under its name.

    ``replace=False`` creates ``path`` exclusively: if it exists (even if it appeared a moment
    ago, from another process) FileExistsError is raised and nothing is changed. The temporary
    file beside it is ``.tmp-*`` with ``path``'s suffix (the profile store sweeps up leftovers).
    """
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path, text, mode)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _link_exclusive(tmp: str, path: Path, text: str, mode: int) -> None:
    """A hard link fails with EEXIST if ``path`` exists: an atomic create-if-absent of a whole file."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # A file system without hard links (FAT): still exclusive, though written in place.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
