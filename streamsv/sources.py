"""Audio in: microphone, file and stdin behind one small interface.

Every source yields ``(chunk, capture_time)``: ``chunk`` is float32 mono at
16 kHz, ``capture_time`` is the ``time.monotonic()`` instant at which the
chunk's last sample was captured (or, for files read as fast as possible, read).
Latency figures downstream are measured from that instant.
"""
from __future__ import annotations

import collections
import os
import re
import select
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from .errors import StreamsvError, os_reason, shown
from .features import SAMPLE_RATE

BLOCK_MS = 30               # one webrtcvad frame: a natural unit for every source
QUEUE_S = 2.0               # mic backlog we tolerate before dropping the oldest audio
FILE_READ_S = 0.5           # file read granularity before re-chunking
LOAD_READ_S = 10.0          # load_audio reads, downmixes and resamples this much at a time
MAX_FILE_S = 3600.0         # whole-file commands (enroll, verify, embed) hold the audio in memory
STDIN_SAMPLE_BYTES = 2      # raw s16le
_WAIT_S = 0.1               # how often a waiting reader re-checks its stop event


# --------------------------------------------------------------------------- helpers

def _to_mono_float32(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    return np.ascontiguousarray(data, dtype=np.float32)


def _check_file(p: Path, regular_only: bool = False) -> None:
    """Problems worth naming before libsndfile reports them less clearly. ``regular_only``: whole-file
    commands refuse a FIFO or device (opening a FIFO with no writer would wait forever)."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise StreamsvError(f"{shown(p)}: no such file") from None
    except OSError as e:          # a name over 255 bytes, a parent folder we may not enter...
        raise StreamsvError(f"{shown(p)}: cannot read ({os_reason(e)})") from None
    except ValueError:            # an embedded NUL byte
        raise StreamsvError(f"{shown(p)}: invalid path (contains a NUL byte)") from None
    if stat.S_ISDIR(st.st_mode):
        raise StreamsvError(f"{shown(p)}: is a directory, expected an audio file")
    if regular_only and not stat.S_ISREG(st.st_mode):
        raise StreamsvError(f"{shown(p)}: not a regular file (a FIFO or device); "
                            f"stream it with listen --source instead")
    if not os.access(p, os.R_OK):
        raise StreamsvError(f"{shown(p)}: permission denied")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise StreamsvError(f"{shown(p)}: cannot read audio (empty file, 0 bytes)")


def _read_error(p: Path, e: BaseException) -> StreamsvError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    # libsndfile repeats the path ("Error opening 'x.wav': Format not recognised."); it is already in front.
    msg = re.sub(r"^Error opening .*?: ", "", msg).rstrip(".") or type(e).__name__
    return StreamsvError(f"{p}: cannot read audio ({msg[:1].lower() + msg[1:]})")


def _open_audio(p: Path, regular_only: bool = False):
    """An open soundfile.SoundFile with at least one sample, or a one-line StreamsvError."""
    import soundfile as sf

    _check_file(p, regular_only)
    try:
        f = sf.SoundFile(str(p))
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise _read_error(p, e) from None
    if f.frames == 0:
        f.close()
        raise StreamsvError(f"{p}: audio file is empty (no samples)")
    return f


def _read_16k_blocks(f, p: Path, read_s: float) -> Iterator[np.ndarray]:
    """Blocks of ``read_s`` seconds of ``f``, downmixed, checked and resampled to 16 kHz mono as
    they are read (a 48 kHz 6-channel file never sits in memory at full size), clipped to [-1, 1]."""
    rate = int(f.samplerate)
    resampler = None
    if rate != SAMPLE_RATE:
        import soxr

        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
    step = max(1, int(rate * read_s))
    while True:
        try:
            data = f.read(step, dtype="float32", always_2d=True)
        except Exception as e:
            raise _read_error(p, e) from None
        last = len(data) < step
        wave = _to_mono_float32(data)
        if not np.isfinite(wave).all():
            raise StreamsvError(f"{p}: audio contains NaN or infinite samples")
        if resampler is not None:
            wave = resampler.resample_chunk(wave, last=last)
        if len(wave):
            yield np.clip(wave, -1.0, 1.0)
        if last:
            return


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Read a whole audio file as 16 kHz mono float32 in [-1, 1].

    Any rate, channel count and sample format libsndfile reads is accepted (downmixed, then
    resampled block by block). Any failure (missing, unreadable, not audio, empty, too long,
    non-finite samples) becomes a one-line StreamsvError naming the file.
    """
    p = Path(path)
    with _open_audio(p, regular_only=True) as f:
        rate = int(f.samplerate)
        if f.frames > MAX_FILE_S * rate:
            raise StreamsvError(f"{p}: too long ({f.frames / rate / 60:.0f} min; whole-file commands take up to "
                                f"{MAX_FILE_S / 60:.0f} min): stream it with listen --source")
        parts = list(_read_16k_blocks(f, p, LOAD_READ_S))
    if not parts:
        raise StreamsvError(f"{p}: audio file is empty (no samples)")
    return np.concatenate(parts)


def _rechunk(samples: int) -> int:
    return max(1, int(samples))


# --------------------------------------------------------------------------- interface

@dataclass
class SourceStats:
    """Counters a source keeps; all monotonic non-decreasing."""

    chunks: int = 0            # chunks handed to the consumer
    seconds: float = 0.0       # audio seconds handed to the consumer
    overflows: int = 0         # PortAudio reported input overflow (audio lost before us)
    drops: int = 0             # chunks we dropped (oldest first) under backpressure
    dropped_s: float = 0.0


class Source:
    """Base class: iterate ``chunks(stop)``; ``close()`` releases the device."""

    name = "source"

    def __init__(self) -> None:
        self.stats = SourceStats()

    def chunks(self, stop: threading.Event | None = None) -> Iterator[tuple[np.ndarray, float]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, chunk: np.ndarray) -> None:
        self.stats.chunks += 1
        self.stats.seconds += len(chunk) / SAMPLE_RATE


# --------------------------------------------------------------------------- file

class FileSource(Source):
    """WAV/FLAC/OGG through soundfile, any rate and channel count.

    As fast as possible by default; ``realtime`` paces chunks to the wall clock
    so a file behaves like a microphone (latency figures then mean something).
    """

    def __init__(self, path: str | os.PathLike, realtime: bool = False, block_ms: int = BLOCK_MS) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = str(self.path)
        self.realtime = realtime
        self.block = _rechunk(SAMPLE_RATE * block_ms // 1000)
        self._sf = _open_audio(self.path)
        self.rate = int(self._sf.samplerate)

    def close(self) -> None:
        self._sf.close()

    def _blocks(self) -> Iterator[np.ndarray]:
        return _read_16k_blocks(self._sf, self.path, FILE_READ_S)

    def chunks(self, stop: threading.Event | None = None) -> Iterator[tuple[np.ndarray, float]]:
        pending = np.zeros(0, dtype=np.float32)
        emitted = 0
        t0 = time.monotonic()
        for wave in self._blocks():
            pending = np.concatenate([pending, wave]) if len(pending) else wave
            while len(pending) >= self.block:
                chunk, pending = pending[: self.block], pending[self.block:]
                emitted += len(chunk)
                yield self._emit(chunk, emitted, t0, stop)
                if stop is not None and stop.is_set():
                    return
        if len(pending):
            emitted += len(pending)
            yield self._emit(pending, emitted, t0, stop)

    def _emit(self, chunk: np.ndarray, emitted: int, t0: float, stop: threading.Event | None) -> tuple[np.ndarray, float]:
        if self.realtime:
            # The last sample of this chunk "arrives" emitted/SR after start.
            due = t0 + emitted / SAMPLE_RATE
            delay = due - time.monotonic()
            if delay > 0:
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
            capture = due
        else:
            capture = time.monotonic()
        self._count(chunk)
        return chunk, capture


# --------------------------------------------------------------------------- stdin

class StdinSource(Source):
    """Raw s16le mono, e.g. ``arecord -f S16_LE -r 16000 -c 1 | streamsv listen --source -``.

    ``rate`` is the rate of those samples (the config's ``audio.sample_rate``); any other than
    16 kHz is resampled to it with soxr's streaming resampler.
    """

    name = "stdin"

    def __init__(self, stream: BinaryIO | None = None, block_ms: int = BLOCK_MS, rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        if stream is None and sys.stdin is None:
            raise StreamsvError(f"--source -: stdin is closed (pipe raw s16le {rate / 1000:g} kHz mono audio into it)")
        self._stream = stream if stream is not None else sys.stdin.buffer
        self.rate = rate
        self.block = _rechunk(rate * block_ms // 1000)
        self._resampler = None
        if rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")

    def _to_16k(self, raw: bytes, last: bool = False) -> np.ndarray:
        chunk = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        if self._resampler is not None:
            chunk = self._resampler.resample_chunk(chunk, last=last)
        return chunk

    def _reader(self, stop: threading.Event | None) -> Callable[[int], bytes | None]:
        """``read(n)``: up to n bytes, b"" at the end of the input. With ``stop``, a pipe that has gone
        quiet is waited on in ``_WAIT_S`` steps, None each time, so that a stop is seen while no audio
        comes (a stalled ``arecord``): a plain blocking read would hold SIGTERM until the next byte."""
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):    # an in-memory stream: it never waits
            fd = None
        if stop is None or fd is None:
            return self._stream.read

        def read(n: int) -> bytes | None:
            if not select.select([fd], [], [], _WAIT_S)[0]:
                return None
            try:
                return os.read(fd, n)
            except OSError as e:
                raise StreamsvError(f"--source -: cannot read stdin ({os_reason(e)})") from None

        return read

    def chunks(self, stop: threading.Event | None = None) -> Iterator[tuple[np.ndarray, float]]:
        want = self.block * STDIN_SAMPLE_BYTES
        carry = b""
        read = self._reader(stop)
        while stop is None or not stop.is_set():
            data = read(want - len(carry))
            if data is None:
                continue                                   # nothing yet: look at the stop event again
            if not data:
                break
            carry += data
            if len(carry) < want:
                continue
            chunk = self._to_16k(carry)
            carry = b""
            if len(chunk):
                self._count(chunk)
                yield chunk, time.monotonic()
        usable = len(carry) - len(carry) % STDIN_SAMPLE_BYTES
        if usable or self._resampler is not None:
            chunk = self._to_16k(carry[:usable], last=True)     # the resampler's tail, too
            if len(chunk):
                self._count(chunk)
                yield chunk, time.monotonic()


# --------------------------------------------------------------------------- microphone

def _sd():
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio library missing
        raise StreamsvError(f"cannot use audio devices: {e} (install libportaudio2)") from None
    return sd


def list_input_devices() -> list[dict]:
    """Input-capable devices as dicts with index, name, channels, default_samplerate, hostapi and
    default (True for the system's default input, what no --device opens)."""
    sd = _sd()
    out = []
    try:
        devices = sd.query_devices()
        apis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except Exception as e:
        raise StreamsvError(f"cannot list audio devices: {e}") from None
    for d in devices:
        if d["max_input_channels"] > 0:
            out.append({
                "index": d["index"],
                "name": d["name"],
                "channels": d["max_input_channels"],
                "default_samplerate": d["default_samplerate"],
                "hostapi": apis[d["hostapi"]]["name"],
                "default": d["index"] == default_in,
            })
    return out


def _device_listing(devices: list[dict]) -> str:
    if not devices:
        return "no input devices found"
    return "available input devices: " + "; ".join(f"[{d['index']}] {d['name']}" for d in devices)


def resolve_input_device(spec: str | int | None) -> int | None:
    """Map ``--device`` (index or case-insensitive name substring) to a device index.

    ``None`` means the system default. Unknown or ambiguous names raise a
    StreamsvError that lists what is available.
    """
    devices = list_input_devices()
    if spec is None or spec == "":
        if not devices:
            raise StreamsvError("no input audio device found (is a microphone connected?)")
        return None
    if isinstance(spec, int) or str(spec).strip().isdigit():
        idx = int(spec)
        if any(d["index"] == idx for d in devices):
            return idx
        raise StreamsvError(f"input device {idx} not found; {_device_listing(devices)}")
    needle = str(spec).lower()
    hits = [d for d in devices if needle in d["name"].lower()]
    exact = [d for d in hits if d["name"].lower() == needle]
    if len(exact) == 1:
        return exact[0]["index"]
    if len(hits) == 1:
        return hits[0]["index"]
    if not hits:
        raise StreamsvError(f"input device {spec!r} not found; {_device_listing(devices)}")
    raise StreamsvError(f"input device {spec!r} is ambiguous; {_device_listing(hits)}")


def _supports_rate(device: int | None, rate: int) -> bool:
    sd = _sd()
    try:
        sd.check_input_settings(device=device, samplerate=rate, channels=1, dtype="float32")
        return True
    except Exception:
        return False


class MicSource(Source):
    """A sounddevice InputStream whose callback only copies into a bounded queue.

    Under backpressure the oldest audio is dropped (and counted) rather than the
    queue growing without bound: a live verifier wants the newest audio.
    The device is opened at ``rate`` (the config's ``audio.sample_rate``, 16 kHz by default), or
    at its native rate if it refuses that; audio at any rate but 16 kHz is resampled with soxr's
    streaming resampler in the consumer thread, never in the callback.
    """

    def __init__(self, device: str | int | None = None, block_ms: int = BLOCK_MS, queue_s: float = QUEUE_S,
                 rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        sd = _sd()
        self.device = resolve_input_device(device)
        info = sd.query_devices(self.device, "input")
        self.name = str(info["name"])
        if _supports_rate(self.device, rate):
            self.rate = rate
        else:
            self.rate = int(round(info["default_samplerate"]))
            if not _supports_rate(self.device, self.rate):
                raise StreamsvError(f"input device {self.name!r} accepts neither {rate} Hz nor its default {self.rate} Hz mono")
        self.blocksize = max(1, self.rate * block_ms // 1000)
        maxlen = max(2, int(round(queue_s * 1000 / block_ms)))
        self._queue: collections.deque[tuple[np.ndarray, float]] = collections.deque()
        self._maxlen = maxlen
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._resampler = None
        if self.rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32")
        try:
            self._stream = sd.InputStream(
                device=self.device, samplerate=self.rate, channels=1, dtype="float32",
                blocksize=self.blocksize, callback=self._callback,
            )
            self._stream.start()
        except Exception as e:
            raise StreamsvError(f"cannot open input device {self.name!r}: {e}") from None

    def _callback(self, indata: np.ndarray, frames: int, time_info: object, status: object) -> None:
        # Runs on PortAudio's thread: copy, stamp, enqueue; nothing that can block for long.
        now = time.monotonic()
        if getattr(status, "input_overflow", False):
            self.stats.overflows += 1
        with self._lock:
            if len(self._queue) >= self._maxlen:
                old, _ = self._queue.popleft()
                self.stats.drops += 1
                self.stats.dropped_s += len(old) / self.rate
            self._queue.append((indata[:, 0].copy(), now))
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def chunks(self, stop: threading.Event | None = None) -> Iterator[tuple[np.ndarray, float]]:
        while stop is None or not stop.is_set():
            with self._lock:
                item = self._queue.popleft() if self._queue else None
                if item is None:
                    self._ready.clear()
            if item is None:
                if not self._stream.active:
                    return
                self._ready.wait(_WAIT_S)
                continue
            chunk, captured = item
            if self._resampler is not None:
                chunk = self._resampler.resample_chunk(chunk)
                if not len(chunk):
                    continue
            self._count(chunk)
            yield chunk, captured

    def close(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception:
                pass


# --------------------------------------------------------------------------- factory

def open_source(spec: str | None, device: str | int | None = None, realtime: bool = False,
                block_ms: int = BLOCK_MS, queue_s: float = QUEUE_S, rate: int = SAMPLE_RATE) -> Source:
    """``mic`` (or None) → microphone, ``-`` → raw s16le on stdin, anything else → an audio file.
    ``rate``: the rate the microphone is opened at first, and that of the samples on stdin (a
    file carries its own)."""
    if spec is None or spec == "mic":
        return MicSource(device=device, block_ms=block_ms, queue_s=queue_s, rate=rate)
    if spec == "-":
        return StdinSource(block_ms=block_ms, rate=rate)
    return FileSource(spec, realtime=realtime, block_ms=block_ms)
