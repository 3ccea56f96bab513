"""Voice profiles on disk: one versioned JSON file per person.

Profiles are biometric data, so: no pickle (plain JSON), files 0600 in a 0700
folder, atomic writes (temp file, fsync, rename, fsync folder), and strict
names so a name can never address a path outside the folder. A profile records
the fingerprint of the model that made it; embeddings from another model live
in a different space, so such a profile is refused with a re-enroll message.

Profile files are also untrusted input (hand-edited, planted, damaged):
- reading is bounded (size, JSON depth, number length, number of embeddings) and every field is
  validated (no unknown or repeated keys, a centroid that is its embeddings' own), so a bad file
  is one warning and every other profile keeps working; an imported file is read the same way;
- like ssh with a key file, a folder or file writable by group/others or owned by another user
  is refused (a planted ``alice.json`` made from bob's voice would verify bob as alice);
- streamsv creates the folder 0700 but never changes the mode of an existing one;
- a new profile is created exclusively (two ``enroll dave`` at once: exactly one wins);
- temp files left by a killed writer are removed at the next start.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StreamsvError, os_reason, shown
from .safeio import TMP_PREFIX, atomic_write, check_trusted, read_bounded

FORMAT = "streamsv-profile"
VERSION = 1
# Every key a version 1 profile has (Profile.to_json); the format has no extension keys, so any
# other is refused: a key this streamsv ignores could be read by another as something else.
KEYS = frozenset(("format", "version", "name", "model", "created", "speech_s", "dim", "centroid", "embeddings"))
SUFFIX = ".json"
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DIR_MODE = 0o700
MAX_PROFILE_BYTES = 16 << 20   # ~thousands of embeddings; anything bigger is not ours
MAX_NUMBER_CHARS = 40          # a float32 written by json is ~20 characters
NUMBER_TYPES = frozenset((int, float))
MAX_DIM = 4096                 # embedding size; ours is 256
MAX_EMBEDDINGS = 200           # per profile (~1 MB at 256 values): bounds memory however often --append runs
# A stored centroid must be centroid_of(its embeddings), value by value within this. Measured on
# five speechocean762 profiles (2026-12): an export/import round trip differs by 0 (float32 survives
# JSON exactly), a float64 mean by <= 4.5e-8, values rounded to 6 decimals by 5e-7; dropping one
# of ~25 embeddings moves it by >= 2.3e-3, another speaker's centroid by >= 0.18.
CENTROID_TOLERANCE = 1e-4
MAX_MODEL_CHARS = 256
MAX_SPEECH_S = 1e6
# created: 1970 .. 2100. Beyond it time.localtime overflows and one profile breaks `profiles list`.
MAX_TIMESTAMP = 4102444800.0
MIN_NORM = 1e-6                # a zero vector has no direction: no cosine against it
STALE_TMP_S = 60.0             # a writer finishes in milliseconds; an older temp file is a leftover
TRUST_REASON = "profiles decide who is who"   # why a profile another user could write is refused

log = logging.getLogger("streamsv.profiles")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe profile name, else raise StreamsvError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name or name.startswith("."):
        # repr() escapes control and bidi characters, so the message cannot spoof the terminal.
        shown_name = repr(name) if len(str(name)) <= 40 else f"{str(name)[:32]!r}... ({len(name)} characters)"
        raise StreamsvError(
            f"invalid profile name {shown_name}: use 1-64 ASCII letters, digits, _ . - (not starting with '.', no '..')")
    return name


@dataclass
class Profile:
    name: str
    embeddings: np.ndarray        # (n, dim) unit vectors, one per enrollment piece
    speech_s: float               # voiced seconds that went into the enrollment
    model: str                    # fingerprint of the embedder that made it
    created: float                # unix time
    centroid: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        self.embeddings = np.atleast_2d(np.asarray(self.embeddings, dtype=np.float32))
        if self.embeddings.shape[0] == 0:
            raise StreamsvError(f"profile {self.name!r}: no enrollment embeddings")
        if self.centroid is None:
            self.centroid = centroid_of(self.embeddings)
        self.centroid = np.asarray(self.centroid, dtype=np.float32)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def consistency(self) -> tuple[float, float]:
        """(mean, min) cosine of each enrollment embedding to the centroid: low means mixed or noisy audio."""
        sims = self.embeddings @ self.centroid / np.maximum(np.linalg.norm(self.embeddings, axis=1), 1e-9)
        return float(sims.mean()), float(sims.min())

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "model": self.model,
            "created": self.created,
            "speech_s": round(float(self.speech_s), 3),
            "dim": self.dim,
            "centroid": [float(x) for x in self.centroid],
            "embeddings": [[float(x) for x in row] for row in self.embeddings],
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> "Profile":
        """Validate a parsed profile field by field; anything odd is a one-line StreamsvError."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StreamsvError(f"{where}: not a streamsv profile")
        version = data.get("version")
        if type(version) is not int or version != VERSION:
            raise StreamsvError(f"{where}: unsupported profile version {_brief(version)} (this streamsv reads {VERSION})")
        try:
            unknown = sorted(set(data) - KEYS)
            if unknown:
                more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
                raise _Malformed(f"unknown key {_brief(unknown[0])}{more}")
            name = data.get("name")
            if not isinstance(name, str):
                raise _Malformed(f"name: expected a string, got {_brief(name)}")
            model = data.get("model")
            if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_CHARS:
                raise _Malformed(f"model: expected a fingerprint string, got {_brief(model)}")
            created = _number(data.get("created"), "created", 0.0, MAX_TIMESTAMP)
            speech_s = _number(data.get("speech_s"), "speech_s", 0.0, MAX_SPEECH_S)
            emb = _matrix(data.get("embeddings"), "embeddings", MAX_EMBEDDINGS)
            cen = _matrix([data.get("centroid")], "centroid", 1)[0]
            if cen.shape != (emb.shape[1],):
                raise _Malformed(f"centroid has {cen.size} values, embeddings have {emb.shape[1]}")
            # Scoring uses the centroid alone: one that is not these embeddings' (bob's beside
            # alice's embeddings) would verify someone the profile's own data does not describe.
            if np.max(np.abs(cen - centroid_of(emb))) > CENTROID_TOLERANCE:
                raise _Malformed("the centroid is not the mean of the embeddings")
            if "dim" in data and (type(data["dim"]) is not int or data["dim"] != emb.shape[1]):
                raise _Malformed(f"dim {_brief(data['dim'])} does not match the {emb.shape[1]}-value embeddings")
            return cls(name=name, embeddings=emb, speech_s=speech_s, model=model, created=created, centroid=cen)
        except _Malformed as e:
            raise StreamsvError(f"{where}: malformed profile ({e})") from None
        except StreamsvError as e:
            raise StreamsvError(f"{where}: {e}") from None


class _Malformed(Exception):
    pass


def _brief(value: object) -> str:
    """A short description of a JSON value for a message (never the whole of a huge value)."""
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'mapping'} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: object, what: str, lo: float, hi: float) -> float:
    if type(value) not in (int, float):      # bool is an int subclass: type() keeps it out
        raise _Malformed(f"{what}: expected a number, got {_brief(value)}")
    x = float(value)
    if not (math.isfinite(x) and lo <= x <= hi):
        raise _Malformed(f"{what}: out of range: {_brief(value)} (allowed {lo:g}..{hi:g})")
    return x


def _matrix(rows: object, what: str, max_rows: int) -> np.ndarray:
    """A list of 1..``max_rows`` equal-length lists of finite numbers, each row non-zero, as float32."""
    if not isinstance(rows, list) or not rows:
        raise _Malformed(f"{what}: expected a non-empty list of vectors, got {_brief(rows)}")
    if len(rows) > max_rows:
        raise _Malformed(f"{what}: {len(rows)} vectors, more than the {max_rows} a profile holds")
    width = None
    for row in rows:
        if not isinstance(row, list) or not row or len(row) > MAX_DIM:
            raise _Malformed(f"{what}: expected vectors of 1..{MAX_DIM} numbers, got {_brief(row)}")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise _Malformed(f"{what}: vectors of different lengths ({width} and {len(row)})")
        if not NUMBER_TYPES.issuperset(map(type, row)):   # type(), not isinstance: a bool is no number
            bad = next(x for x in row if type(x) not in NUMBER_TYPES)
            raise _Malformed(f"{what}: expected numbers, got {_brief(bad)}")
    with np.errstate(over="ignore", invalid="ignore"):
        m = np.asarray(rows, dtype=np.float64).astype(np.float32)
    if not np.isfinite(m).all():
        raise _Malformed(f"{what}: non-finite or out-of-range values")
    if (np.linalg.norm(m.astype(np.float64), axis=1) < MIN_NORM).any():
        raise _Malformed(f"{what}: a zero vector (it has no direction to score against)")
    return m


def _file_identity(st: os.stat_result) -> tuple:
    """What changes whenever a file's contents, mode or owner can have: a rename over it (inode), a
    write (size, mtime; ctime too, which no one but the clock sets), a chmod or chown (ctime)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


def centroid_of(embeddings: np.ndarray) -> np.ndarray:
    c = np.asarray(embeddings, dtype=np.float32).mean(axis=0)
    n = float(np.linalg.norm(c))
    return (c / n if n > 0 else c).astype(np.float32)


def new_profile(name: str, embeddings: list[np.ndarray] | np.ndarray, speech_s: float, model: str) -> Profile:
    """A new profile of at most MAX_EMBEDDINGS embeddings (evenly thinned beyond: what a reader accepts)."""
    return Profile(name=check_name(name), embeddings=bounded_embeddings(np.stack(list(embeddings))), speech_s=speech_s,
                   model=model, created=time.time())


# --------------------------------------------------------------------------- parsing


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Malformed(f"a number of {len(text)} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Malformed(f"a number of {len(text)} characters")
    return float(text)


def _no_constant(text: str) -> float:
    raise _Malformed(f"{text}: non-finite numbers are not allowed")


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object hook: a key given twice is refused (json keeps the last one silently, so a file
    could show one value to a reader that keeps the first and act on another)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        repeated = next(key for key, n in Counter(key for key, _ in pairs).items() if n > 1)
        raise _Malformed(f"key {_brief(repeated)} given more than once")
    return out


def parse_profile_json(raw: bytes, where: str) -> object:
    """Parse the (size-capped) bytes of a profile file with every other bound checked as it parses.

    Numbers longer than MAX_NUMBER_CHARS, NaN/Infinity and repeated keys are refused by the
    parser's hooks. Deep nesting is caught as RecursionError: CPython's C parser checks the
    recursion limit at every level (measured: 200,000 '[' raise it cleanly, in the main thread and
    in others), which is cheaper than scanning the bytes first (+94% load time for a 200-embedding
    profile, against +29% for the number hooks; the repeated-key hook runs once per object, and a
    profile has one).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamsvError(f"{where}: corrupt profile file (not UTF-8 JSON text)") from None
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant,
                          object_pairs_hook=_no_repeated_keys)
    except _Malformed as e:
        raise StreamsvError(f"{where}: malformed profile ({e})") from None
    except RecursionError:
        raise StreamsvError(f"{where}: malformed profile (JSON nested too deeply)") from None
    except (json.JSONDecodeError, ValueError):
        raise StreamsvError(f"{where}: corrupt profile file (not valid JSON)") from None


class ProfileStore:
    """The profiles folder. ``fingerprint`` (the current model's) gates what ``load`` accepts."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory).expanduser()
        # load_all's last reads: name -> (the file's identity when read, the profile). A reload
        # re-parses only the files that changed: parsing is ~50 ms per 200-embedding profile, and a
        # daemon reloads in its audio loop whenever one profile is enrolled or removed.
        self._unchanged: dict[str, tuple[tuple, Profile]] = {}

    # -- the folder

    def folder_stat(self) -> os.stat_result | None:
        """The folder's stat (following a symlink to it), None if absent; refused if untrusted."""
        try:
            st = os.stat(self.dir)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            reason = os_reason(e) if isinstance(e, OSError) else "invalid path"
            raise StreamsvError(f"profiles folder {shown(self.dir)}: {reason}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StreamsvError(f"profiles folder {shown(self.dir)}: not a folder")
        check_trusted(st, self.dir, f"profiles folder {shown(self.dir)}", "it", TRUST_REASON)
        return st

    def ensure_dir(self) -> None:
        """Create the folder 0700 if absent; an existing one is checked, never chmod'ed. Everything
        written into the folder (profiles, ``calibrate --save``'s calibration) comes through here."""
        if self.folder_stat() is not None:
            return
        try:
            self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as e:
            raise StreamsvError(f"profiles folder {shown(self.dir)}: {os_reason(e)}") from None
        self.folder_stat()

    def _entries(self) -> list[str]:
        try:
            return sorted(os.listdir(self.dir))
        except OSError as e:
            raise StreamsvError(f"profiles folder {shown(self.dir)}: {os_reason(e)}") from None

    def remove_stale_temps(self, now: float | None = None) -> list[str]:
        """Delete temp files a killed writer left (each may hold a whole voice profile)."""
        if self.folder_stat() is None:
            return []
        now = time.time() if now is None else now
        removed = []
        for entry in self._entries():
            if not (entry.startswith(TMP_PREFIX) and entry.endswith(SUFFIX)):
                continue
            p = self.dir / entry
            try:
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and now - st.st_mtime > STALE_TMP_S:
                    p.unlink()
                    removed.append(entry)
            except OSError as e:
                log.warning("cannot remove leftover %s: %s", shown(p), os_reason(e))
        if removed:
            log.info("removed %d leftover temp file(s) of an interrupted write in %s", len(removed), shown(self.dir))
        return removed

    # -- names and files

    def path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}{SUFFIX}"

    @staticmethod
    def _profile_name(entry: str) -> str | None:
        """The profile a folder entry holds by its name (None: a temp file or anything else)."""
        stem = entry[: -len(SUFFIX)]
        if entry.endswith(SUFFIX) and NAME_RE.fullmatch(stem) and ".." not in stem and not stem.startswith("."):
            return stem
        return None

    def names(self) -> list[str]:
        if self.folder_stat() is None:
            return []
        return [name for name in map(self._profile_name, self._entries()) if name is not None]

    def exists(self, name: str) -> bool:
        p = self.path(name)
        try:
            os.lstat(p)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StreamsvError(f"profiles folder {shown(self.dir)}: {os_reason(e)}") from None

    def _read(self, name: str, cache: dict[str, tuple[tuple, Profile]] | None = None) -> Profile:
        """``cache``: profiles read before, kept by the file's identity; one whose file is still that
        file, unchanged, is not read again, and what is read is added."""
        p = self.path(name)
        if self.folder_stat() is None or not self.exists(name):
            raise StreamsvError(f"no profile named {name!r} in {shown(self.dir)}")
        if cache is not None and name in cache:
            identity, prof = cache[name]
            try:
                if _file_identity(os.lstat(p)) == identity:
                    return prof
            except OSError:
                pass                       # gone or unreadable since: the read below says why
        where = shown(p)
        raw, st = read_bounded(p, MAX_PROFILE_BYTES, where, follow_symlinks=False)
        check_trusted(st, p, where, "the profile file", TRUST_REASON)
        prof = Profile.from_json(parse_profile_json(raw, where), where)
        if cache is not None:
            cache[name] = (_file_identity(st), prof)   # the opened file's: what was actually read
        return prof

    def load(self, name: str, fingerprint: str | None = None, dim: int | None = None,
             cache: dict[str, tuple[tuple, Profile]] | None = None) -> Profile:
        """One profile; ``fingerprint``/``dim`` (the current model's) refuse one it cannot be scored against."""
        prof = self._read(name, cache)
        p = shown(self.path(name))
        if prof.name != name:
            raise StreamsvError(f"{p}: file holds profile {prof.name!r}, expected {name!r}")
        if fingerprint is not None and prof.model != fingerprint:
            raise StreamsvError(
                f"profile {name!r} was made by another model ({shown(prof.model)}, current {fingerprint}); "
                f"re-enroll with: streamsv enroll {name} --force")
        if dim is not None and prof.dim != dim:
            # A hand-edited or foreign file with the right fingerprint: scoring it would crash.
            raise StreamsvError(
                f"{p}: profile has {prof.dim}-dimensional embeddings, the model makes {dim}; "
                f"re-enroll with: streamsv enroll {name} --force")
        return prof

    def signature(self) -> tuple:
        """What a reload would read, in brief: the folder's device and inode (a folder deleted and made
        again, or a filesystem mounted or unmounted there, changes them), each profile file's name,
        inode, size, modification time, mode and owner (a rewrite in place, a replacement by rename,
        a chmod each change it), or why the folder is absent or cannot be read. A temp file being
        written does not count: its rename does."""
        try:
            folder = self.folder_stat()
            if folder is None:
                return (("absent",),)
            files = [("folder", folder.st_dev, folder.st_ino)]
            with os.scandir(self.dir) as entries:        # a stat per entry without pathlib's cost
                for entry in entries:
                    if self._profile_name(entry.name) is None:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue                              # deleted between the listing and here
                    files.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid))
            return tuple(sorted(files))
        except (StreamsvError, OSError) as e:
            return (("unreadable", str(e)),)

    def load_all(self, fingerprint: str | None = None, dim: int | None = None) -> dict[str, Profile]:
        """Every loadable profile; a bad file is logged and skipped, every other one still loads.

        An untrusted folder (writable by others, another user's) is refused as a whole. A file
        unchanged since the last call (same inode, size, times, mode and owner) is not parsed again.
        """
        self.remove_stale_temps()
        names = self.names()
        self._unchanged = {n: kept for n, kept in self._unchanged.items() if n in names}
        out = {}
        for name in names:
            try:
                out[name] = self.load(name, fingerprint, dim, self._unchanged)
            except StreamsvError as e:
                self._unchanged.pop(name, None)
                log.warning("skipping profile: %s", e)
        return out

    def save(self, profile: Profile, force: bool = False) -> Path:
        """Write a profile; without ``force`` it is created exclusively (an existing one is kept)."""
        self.ensure_dir()
        self.remove_stale_temps()
        p = self.path(profile.name)
        exists_msg = f"profile {profile.name!r} already exists; use --force to replace it"
        if not force and self.exists(profile.name):
            raise StreamsvError(exists_msg)
        try:
            atomic_write(p, json.dumps(profile.to_json(), separators=(",", ":")), replace=force)
        except FileExistsError:
            raise StreamsvError(exists_msg) from None      # another process created it meanwhile
        except OSError as e:
            raise StreamsvError(f"cannot write profile {profile.name!r} in {shown(self.dir)}: {os_reason(e)}") from None
        return p

    def delete(self, name: str) -> None:
        if self.folder_stat() is None or not self.exists(name):
            raise StreamsvError(f"no profile named {name!r} in {shown(self.dir)}")
        try:
            self.path(name).unlink()
        except OSError as e:
            raise StreamsvError(f"cannot delete profile {name!r}: {os_reason(e)}") from None

    def rename(self, old: str, new: str, force: bool = False) -> None:
        prof = self.load(old)
        check_name(new)
        if old == new:
            return
        prof.name = new
        self.save(prof, force=force)
        try:
            self.path(old).unlink()
        except OSError as e:
            raise StreamsvError(f"renamed to {new!r}, but cannot remove {old!r}: {os_reason(e)}") from None

    def export(self, name: str, dest: str | os.PathLike, force: bool = False) -> Path:
        """Copy a profile to ``dest`` (a new file, or a folder to put ``NAME.json`` in).

        An existing file is replaced only with ``force``, and never anything but a regular file
        (a device node, FIFO or symlink stays as it is); nothing is written into the profiles folder.
        """
        prof = self.load(name)
        out = Path(dest).expanduser()
        if _lstat(out) is not None and os.path.isdir(out):
            out = out / f"{name}{SUFFIX}"
        st = _lstat(out)
        if self._holds(out):
            # Export takes a profile out; into the folder it would replace or plant a profile
            # (alice's voice saved as bob.json) that every listen then loads.
            where = "already exists in" if st is not None else "is in"
            raise StreamsvError(f"{shown(out)}: {where} the profiles folder {shown(self.dir)}, where export never writes "
                                f"(not even with --force); export to a file elsewhere "
                                f"(to rename a profile: streamsv profiles rename)")
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise StreamsvError(f"{shown(out)}: exists and is {kind}; refusing to replace it")
            if not force:
                raise StreamsvError(f"{shown(out)}: already exists; use --force to replace it")
        try:
            atomic_write(out, json.dumps(prof.to_json(), separators=(",", ":")), replace=force)
        except FileExistsError:
            raise StreamsvError(f"{shown(out)}: already exists; use --force to replace it") from None
        except OSError as e:
            raise StreamsvError(f"cannot write {shown(out)}: {os_reason(e)}") from None
        return out

    def _holds(self, path: Path) -> bool:
        """Whether ``path`` would land in the folder or a folder under it, following symlinks of
        its parent folders (``path`` itself is never followed: export refuses to replace a link)."""
        return Path(os.path.realpath(path.parent)).is_relative_to(os.path.realpath(self.dir))

    def import_(self, src: str | os.PathLike, name: str | None = None, force: bool = False,
                fingerprint: str | None = None, dim: int | None = None) -> Profile:
        p = Path(src).expanduser()
        where = shown(p)
        raw, _ = read_bounded(p, MAX_PROFILE_BYTES, where)
        prof = Profile.from_json(parse_profile_json(raw, where), where)
        if name is not None:
            prof.name = check_name(name)
        if fingerprint is not None and prof.model != fingerprint:
            raise StreamsvError(
                f"{where}: profile was made by another model ({shown(prof.model)}, current {fingerprint}); "
                f"re-enroll {prof.name!r} instead of importing")
        if dim is not None and prof.dim != dim:
            raise StreamsvError(f"{where}: profile has {prof.dim}-dimensional embeddings, the model makes {dim}")
        self.save(prof, force=force)
        return prof


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        reason = os_reason(e) if isinstance(e, OSError) else "invalid path"
        raise StreamsvError(f"{shown(path)}: {reason}") from None

# --------------------------------------------------------------------------- enrollment

MIN_PIECE_S = 1.0      # shorter voiced audio gives an unreliable embedding
EMBED_CHUNK_S = 30.0   # longer audio is embedded in pieces: the model's memory grows ~3 MB per second
MIN_ENROLL_S = 3.0     # total voiced seconds below which a profile is refused


def piece_bounds(n: int, step: int) -> list[tuple[int, int]]:
    """``[a, b)`` bounds that cut ``n`` samples into pieces of ``step``; a last piece shorter than
    half a step is folded into the one before (too little audio for an embedding of its own)."""
    starts = list(range(0, n, step))
    if len(starts) > 1 and n - starts[-1] < step // 2:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def embed_bounded(embedder, wave: np.ndarray, chunk_s: float = EMBED_CHUNK_S) -> np.ndarray:
    """``embedder.embed`` with bounded memory: audio longer than ``chunk_s`` is embedded in
    ``chunk_s`` pieces whose unit embeddings are averaged (identical to ``embed`` up to that length)."""
    step = int(chunk_s * embedder.sample_rate)
    if len(wave) <= step:
        return embedder.embed(wave)
    return centroid_of(np.stack([embedder.embed(wave[a:b]) for a, b in piece_bounds(len(wave), step)]))


ENROLL_PREFIXES_S = (1.0, 1.5, 2.0, 3.0)


def enroll(embedder, name: str, recordings: list[np.ndarray], vad_settings=None,
           sources: list[str] | None = None, trim: bool = True) -> tuple[Profile, list[str]]:
    """Build a profile from whole recordings: one embedding per recording's voiced audio.

    Silence is cut with the VAD first (unless ``trim`` is False: already voiced
    audio) so it neither dilutes the embedding nor counts as enrolled speech. Returns the profile and warnings for skipped inputs.
    """
    from .config import VadConfig
    from .vad import voiced_speech

    check_name(name)
    settings = vad_settings or VadConfig()
    embeddings, warnings, total = [], [], 0.0
    for i, wave in enumerate(recordings):
        label = sources[i] if sources else f"recording {i + 1}"
        speech = voiced_speech(wave, settings) if trim else np.asarray(wave, dtype=np.float32)
        secs = len(speech) / embedder.sample_rate
        if secs < MIN_PIECE_S:
            warnings.append(f"{label}: only {secs:.1f} s of speech, skipped")
            continue
        # Live decisions embed a turn as it grows from its start; enrolling the same growing
        # prefixes (not only the whole recording) puts the centroid where live windows land.
        embeddings += [embed_bounded(embedder, speech[: int(s * embedder.sample_rate)])
                       for s in ENROLL_PREFIXES_S if s < secs]
        embeddings.append(embed_bounded(embedder, speech))
        total += secs
    if not embeddings:
        raise StreamsvError(f"no usable speech to enroll {name!r} (each recording needs >= {MIN_PIECE_S:g} s of voice)")
    if total < MIN_ENROLL_S:
        raise StreamsvError(f"too little speech to enroll {name!r}: {total:.1f} s (need >= {MIN_ENROLL_S:g} s)")
    return new_profile(name, embeddings, total, embedder.fingerprint), warnings


# --------------------------------------------------------------------------- enroll --append


def bounded_embeddings(embeddings: np.ndarray, limit: int = MAX_EMBEDDINGS) -> np.ndarray:
    """All of ``embeddings`` up to ``limit``; beyond it an evenly spaced subset, first and last kept,
    so every enrollment session stays represented (dropping the oldest would forget the first)."""
    if len(embeddings) <= limit:
        return embeddings
    keep = np.unique(np.round(np.linspace(0, len(embeddings) - 1, limit)).astype(int))
    return embeddings[keep]


def append_to_profile(profile: Profile, embeddings: list[np.ndarray] | np.ndarray, speech_s: float,
                      limit: int = MAX_EMBEDDINGS) -> Profile:
    """``profile`` extended with more enrollment embeddings of the same model (``enroll --append``):
    old and new kept (bounded by ``limit``), speech seconds added, the centroid recomputed."""
    new = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
    if new.shape[1] != profile.dim:
        raise StreamsvError(f"profile {profile.name!r}: cannot append {new.shape[1]}-dimensional embeddings "
                            f"to {profile.dim}-dimensional ones")
    both = bounded_embeddings(np.concatenate([profile.embeddings, new]), limit)
    return Profile(name=profile.name, embeddings=both, speech_s=profile.speech_s + float(speech_s),
                   model=profile.model, created=profile.created)


class ProfilesWatch:
    """Whether the profiles folder changed since it was last read, looked at no more often than
    every ``interval_s`` (``profiles.watch_s``): a voice enrolled, re-enrolled, renamed or deleted
    while ``listen``, the service or the Wyoming proxy runs is picked up without a reload signal.
    A look is one folder listing with a stat per profile: ~60 us with five profiles on this
    project's machine: every 2 s, about 0.5% of the listen pipeline's CPU (4.8-6.5 ms a second)."""

    def __init__(self, store: ProfileStore, interval_s: float, clock=time.monotonic) -> None:
        self.store = store
        self.interval_s = interval_s
        self._clock = clock
        self._seen = store.signature()
        self._next = clock() + interval_s

    def read(self) -> None:
        """The folder is being read now (a reload for any reason): later changes are new ones."""
        self._seen = self.store.signature()
        self._next = self._clock() + self.interval_s

    def changed(self) -> bool:
        """True once for each change seen; False before ``interval_s`` since the last look."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        now_seen = self.store.signature()
        if now_seen == self._seen:
            return False
        self._seen = now_seen
        return True
