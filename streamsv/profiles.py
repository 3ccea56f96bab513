"""Voice profiles on disk: one versioned JSON file per person.

Profiles are biometric data, so: no pickle (plain JSON), files 0600 in a 0700
folder, atomic writes (temp file, fsync, rename, fsync folder), and strict
names so a name can never address a path outside the folder. A profile records
the fingerprint of the model that made it; embeddings from another model live
in a different space, so such a profile is refused with a re-enroll message.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StreamsvError

FORMAT = "streamsv-profile"
VERSION = 1
SUFFIX = ".json"
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FILE_MODE = 0o600
DIR_MODE = 0o700
MAX_PROFILE_BYTES = 16 << 20   # ~thousands of embeddings; anything bigger is not ours

log = logging.getLogger("streamsv.profiles")


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe profile name, else raise StreamsvError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name or name.startswith("."):
        # repr() escapes control and bidi characters, so the message cannot spoof the terminal.
        shown = repr(name) if len(str(name)) <= 40 else f"{str(name)[:32]!r}... ({len(name)} characters)"
        raise StreamsvError(
            f"invalid profile name {shown}: use 1-64 ASCII letters, digits, _ . - (not starting with '.', no '..')")
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
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StreamsvError(f"{where}: not a streamsv profile")
        if data.get("version") != VERSION:
            raise StreamsvError(f"{where}: unsupported profile version {data.get('version')!r} (this streamsv reads {VERSION})")
        try:
            emb = np.asarray(data["embeddings"], dtype=np.float32)
            cen = np.asarray(data["centroid"], dtype=np.float32)
            prof = cls(name=str(data["name"]), embeddings=emb, speech_s=float(data["speech_s"]),
                       model=str(data["model"]), created=float(data["created"]), centroid=cen)
        except StreamsvError as e:
            raise StreamsvError(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise StreamsvError(f"{where}: malformed profile ({type(e).__name__}: {e})") from None
        if emb.ndim != 2 or cen.shape != (emb.shape[1],) or not (np.isfinite(emb).all() and np.isfinite(cen).all()):
            raise StreamsvError(f"{where}: malformed profile (inconsistent shapes or non-finite values)")
        return prof


def centroid_of(embeddings: np.ndarray) -> np.ndarray:
    c = np.asarray(embeddings, dtype=np.float32).mean(axis=0)
    n = float(np.linalg.norm(c))
    return (c / n if n > 0 else c).astype(np.float32)


def new_profile(name: str, embeddings: list[np.ndarray] | np.ndarray, speech_s: float, model: str) -> Profile:
    return Profile(name=check_name(name), embeddings=np.stack(list(embeddings)), speech_s=speech_s,
                   model=model, created=time.time())


def _read_json(path: Path, where: str) -> object:
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise StreamsvError(f"{where}: file too large to be a profile")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StreamsvError(f"{where}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StreamsvError(f"{where}: corrupt profile file ({type(e).__name__})") from None
    except OSError as e:
        raise StreamsvError(f"{where}: cannot read ({e.strerror})") from None


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=path.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class ProfileStore:
    """The profiles folder. ``fingerprint`` (the current model's) gates what ``load`` accepts."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory).expanduser()

    def _ensure_dir(self) -> None:
        try:
            self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if (self.dir.stat().st_mode & 0o777) != DIR_MODE:
                os.chmod(self.dir, DIR_MODE)
        except OSError as e:
            raise StreamsvError(f"profiles folder {self.dir}: {e.strerror}") from None

    def path(self, name: str) -> Path:
        return self.dir / f"{check_name(name)}{SUFFIX}"

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob(f"*{SUFFIX}")):
            stem = p.name[: -len(SUFFIX)]
            if NAME_RE.fullmatch(stem) and ".." not in stem and not stem.startswith("."):
                out.append(stem)
        return out

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def load(self, name: str, fingerprint: str | None = None, dim: int | None = None) -> Profile:
        """One profile; ``fingerprint``/``dim`` (the current model's) refuse one it cannot be scored against."""
        p = self.path(name)
        if not p.is_file():
            raise StreamsvError(f"no profile named {name!r} in {self.dir}")
        prof = Profile.from_json(_read_json(p, str(p)), str(p))
        if prof.name != name:
            raise StreamsvError(f"{p}: file holds profile {prof.name!r}, expected {name!r}")
        if fingerprint is not None and prof.model != fingerprint:
            raise StreamsvError(
                f"profile {name!r} was made by another model ({prof.model}, current {fingerprint}); "
                f"re-enroll with: streamsv enroll {name} --force")
        if dim is not None and prof.dim != dim:
            # A hand-edited or foreign file with the right fingerprint: scoring it would crash.
            raise StreamsvError(
                f"{p}: profile has {prof.dim}-dimensional embeddings, the model makes {dim}; "
                f"re-enroll with: streamsv enroll {name} --force")
        return prof

    def load_all(self, fingerprint: str | None = None, dim: int | None = None) -> dict[str, Profile]:
        """Every loadable profile; corrupt or other-model files are logged and skipped."""
        out = {}
        for name in self.names():
            try:
                out[name] = self.load(name, fingerprint, dim)
            except StreamsvError as e:
                log.warning("skipping profile: %s", e)
        return out

    def save(self, profile: Profile, force: bool = False) -> Path:
        self._ensure_dir()
        p = self.path(profile.name)
        if p.exists() and not force:
            raise StreamsvError(f"profile {profile.name!r} already exists; use --force to replace it")
        atomic_write(p, json.dumps(profile.to_json(), separators=(",", ":")))
        return p

    def delete(self, name: str) -> None:
        p = self.path(name)
        if not p.is_file():
            raise StreamsvError(f"no profile named {name!r} in {self.dir}")
        p.unlink()

    def rename(self, old: str, new: str, force: bool = False) -> None:
        prof = self.load(old)
        check_name(new)
        if self.exists(new) and not force:
            raise StreamsvError(f"profile {new!r} already exists; use --force to replace it")
        prof.name = new
        self.save(prof, force=True)
        if old != new:
            self.path(old).unlink()

    def export(self, name: str, dest: str | os.PathLike) -> Path:
        prof = self.load(name)
        out = Path(dest).expanduser()
        if out.is_dir():
            out = out / f"{name}{SUFFIX}"
        try:
            atomic_write(out, json.dumps(prof.to_json(), separators=(",", ":")))
        except OSError as e:
            raise StreamsvError(f"cannot write {out}: {e.strerror}") from None
        return out

    def import_(self, src: str | os.PathLike, name: str | None = None, force: bool = False,
                fingerprint: str | None = None, dim: int | None = None) -> Profile:
        p = Path(src).expanduser()
        prof = Profile.from_json(_read_json(p, str(p)), str(p))
        if name is not None:
            prof.name = check_name(name)
        if fingerprint is not None and prof.model != fingerprint:
            raise StreamsvError(
                f"{p}: profile was made by another model ({prof.model}, current {fingerprint}); "
                f"re-enroll {prof.name!r} instead of importing")
        if dim is not None and prof.dim != dim:
            raise StreamsvError(f"{p}: profile has {prof.dim}-dimensional embeddings, the model makes {dim}")
        self.save(prof, force=force)
        return prof


# --------------------------------------------------------------------------- enrollment

MIN_PIECE_S = 1.0      # shorter voiced audio gives an unreliable embedding
EMBED_CHUNK_S = 30.0   # longer audio is embedded in pieces: the model's memory grows ~3 MB per second
MIN_ENROLL_S = 3.0     # total voiced seconds below which a profile is refused


def embed_bounded(embedder, wave: np.ndarray, chunk_s: float = EMBED_CHUNK_S) -> np.ndarray:
    """``embedder.embed`` with bounded memory: audio longer than ``chunk_s`` is embedded in
    ``chunk_s`` pieces whose unit embeddings are averaged (identical to ``embed`` up to that length)."""
    step = int(chunk_s * embedder.sample_rate)
    if len(wave) <= step:
        return embedder.embed(wave)
    starts = list(range(0, len(wave), step))
    if len(wave) - starts[-1] < step // 2:
        starts.pop()                 # fold a short tail into the previous piece
    bounds = starts[1:] + [len(wave)]
    return centroid_of(np.stack([embedder.embed(wave[a:b]) for a, b in zip(starts, bounds)]))


ENROLL_PREFIXES_S = (1.0, 1.5, 2.0, 3.0)


def enroll(embedder, name: str, recordings: list[np.ndarray], vad_settings=None,
           sources: list[str] | None = None, trim: bool = True) -> tuple[Profile, list[str]]:
    """Build a profile from whole recordings: one embedding per recording's voiced audio.

    Silence is cut with the VAD first (unless ``trim`` is False: already voiced
    audio) so it neither dilutes the embedding nor counts as enrolled speech. Returns the profile and warnings for skipped inputs.
    """
    from .vad import VadSettings, voiced

    check_name(name)
    settings = vad_settings or VadSettings()
    embeddings, warnings, total = [], [], 0.0
    for i, wave in enumerate(recordings):
        label = sources[i] if sources else f"recording {i + 1}"
        segments = voiced(wave, settings) if trim else [np.asarray(wave, dtype=np.float32)]
        speech = np.concatenate(segments) if segments else np.zeros(0, dtype=np.float32)
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
