"""Running unattended under systemd: sd_notify, an audio-driven watchdog, signals, reconnects.

The pieces are small and separately testable; ``ServiceRunner`` ties them to a pipeline:

* ``Notifier`` speaks the sd_notify datagram protocol on ``$NOTIFY_SOCKET`` (a path, or ``@name``
  for the abstract namespace). With no socket every call is a cheap no-op, so the same code runs
  in a terminal.
* ``WatchdogPolicy`` decides when to send ``WATCHDOG=1``: every half of ``$WATCHDOG_USEC``, and only
  while audio keeps arriving. A capture that stalls (or a processing loop that hangs, since the
  heartbeat comes from the consumer side) stops the pings, and systemd restarts the service.
* ``install_signal_handlers``: SIGTERM/SIGINT set a stop event, SIGHUP asks for a reload.
* ``Backoff``: capped exponential delays for reopening a microphone that failed mid-run.

The pipeline contract ``ServiceRunner`` relies on (streamsv.pipeline.Pipeline meets it):
``run(stop) -> Iterator[dict]`` whose last event is a stats event, ``add_audio_listener(fn)`` that
has ``fn(n_samples)`` called for every chunk the loop consumes, ``request_reload(cfg=None)`` safe from any
thread (with a Config it also takes the new threshold, min_margin and duration_slope), and a
``source`` attribute that may be replaced between runs after a device failure.

``streamsv listen --service`` (implied when ``$NOTIFY_SOCKET`` is set) wires these together in
streamsv.app.run_service. Log records are set up by streamsv.logs; ``streamsv service install``
writes the unit file (streamsv.unit).
"""
from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .errors import StreamsvError
from .retry import Backoff

if TYPE_CHECKING:             # a type hint only: the runtime is handed a Config and never builds one
    from .config import Config

log = logging.getLogger("streamsv.service")

NOTIFY_ENV = "NOTIFY_SOCKET"
STATUS_MIN_INTERVAL_S = 2.0  # STATUS= is for humans running `systemctl status`; no need to flood
TICK_S = 0.25  # the monitor thread's polling period (shorter when the watchdog interval is tiny)
MIN_TICK_S = 0.02  # ...but never shorter than this: WATCHDOG_USEC=1 must not make it spin
RELOAD_READY_TIMEOUT_S = 10.0  # READY=1 after a reload waits for it to be applied, at most this long



# --------------------------------------------------------------------------- sd_notify


def _notify_address(raw: str | None) -> str | None:
    """The sendto() address for a NOTIFY_SOCKET value, or None if unusable."""
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace: leading NUL, no filesystem entry
    if raw.startswith("/"):
        return raw
    log.warning("ignoring NOTIFY_SOCKET=%r: only absolute paths and @abstract names are supported", raw)
    return None


class Notifier:
    """Send sd_notify state strings to the service manager; silent no-op without a socket.

    Failures are logged once and never raised: the service must keep verifying speakers even if
    the manager went away.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = _notify_address(address)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Notifier":
        env = os.environ if environ is None else environ
        return cls(env.get(NOTIFY_ENV))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of newline-separated ``KEY=value`` assignments; True if sent."""
        if self.address is None or not assignments:
            return False
        for a in assignments:
            if "=" not in a or "\n" in a:
                raise ValueError(f"bad sd_notify assignment {a!r}")
        payload = "\n".join(assignments).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.setblocking(False)  # never stall the audio path on a busy manager
                self._sock.sendto(payload, self.address)
                return True
            except OSError as exc:
                if not self._warned:
                    log.warning("sd_notify to %s failed: %s", self.address.replace("\0", "@"), exc)
                    self._warned = True
                self._close_locked()
                return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (CLOCK_MONOTONIC, microseconds).
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def watchdog_timeout(environ: dict[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds of ``$WATCHDOG_USEC`` if the manager expects pings from this process, else None."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        return None  # meant for another process (e.g. our parent)
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    return usec / 1e6 if usec > 0 else None


@dataclass
class WatchdogPolicy:
    """When to ping: every ``timeout_s / 2``, and only if audio arrived within the last ``timeout_s / 2``.

    After a stall, the last ping is at most half an interval later, so systemd acts within
    1.5 x WatchdogSec of the last audio frame.
    """

    timeout_s: float
    last_audio: float | None = None
    last_ping: float | None = None

    @property
    def period_s(self) -> float:
        return self.timeout_s / 2

    def heartbeat(self, now: float) -> None:
        self.last_audio = now

    def audio_fresh(self, now: float) -> bool:
        return self.last_audio is not None and now - self.last_audio <= self.period_s

    def should_ping(self, now: float) -> bool:
        if not self.audio_fresh(now):
            return False
        return self.last_ping is None or now - self.last_ping >= self.period_s

    def pinged(self, now: float) -> None:
        self.last_ping = now


# --------------------------------------------------------------------------- signals


def install_signal_handlers(
    stop: threading.Event, on_reload: Callable[[], None] | None = None
) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop``; SIGHUP calls ``on_reload`` (it must only set a flag).

    A second SIGTERM/SIGINT while stopping exits at once with status 1, for a stuck shutdown.
    Returns a function that restores the previous handlers. Only works on the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("signal handlers can only be installed from the main thread")

    stopping = False

    def on_stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping or stop.is_set():
            os.write(2, b"streamsv: second stop signal, exiting now\n")
            os._exit(1)
        stopping = True
        log.info("received %s, stopping", signal.Signals(signum).name)
        # Not stop.set() here: the handler runs in the main thread, which may be inside
        # stop.wait() holding the Event's (non-reentrant) lock at this very moment (the
        # reconnect backoff waits on it): set() would wait for that lock forever. Another
        # thread takes it as soon as the main thread lets go.
        threading.Thread(target=stop.set, name="streamsv-stop", daemon=True).start()

    def on_hup(signum: int, frame: Any) -> None:
        if on_reload is not None:
            on_reload()

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup if on_reload is not None else signal.SIG_IGN)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    return restore


# --------------------------------------------------------------------------- status line


def status_line(event: dict, state: str = "listening") -> str:
    """A one-line STATUS= summary from a stats event (plus the last decision, if any)."""
    parts = [state]
    if event.get("profiles") is not None:
        parts.append(f"{event['profiles']} profiles")
    if event.get("audio_s") is not None:
        parts.append(f"audio {float(event['audio_s']):.0f} s")
    if event.get("decisions") is not None:
        parts.append(f"{event['decisions']} decisions")
    if event.get("latency_p95_ms") is not None:
        parts.append(f"p95 latency {float(event['latency_p95_ms']):.0f} ms")
    if event.get("drops"):
        parts.append(f"dropped {event['drops']} chunks")
    return ", ".join(parts)


def _decision_note(event: dict) -> str | None:
    if event.get("event") not in ("decision", "speech_end") or "speaker" not in event:
        return None
    score = event.get("score")
    who = event.get("speaker") if event.get("accepted") else "unknown"
    return f"last: {who}" + (f" {float(score):.2f}" if score is not None else "")


# --------------------------------------------------------------------------- runner


@dataclass
class ServiceRunner:
    """Drive a pipeline as a long-running service.

    ``emit`` receives every event (the CLI's writer). ``reopen_source`` makes a fresh capture
    source after a failure (None: a failure is fatal, as for a file). ``reload_config`` re-reads
    settings on SIGHUP; profiles are reloaded by the pipeline at its next chunk, without
    interrupting capture.
    """

    pipeline: Any
    emit: Callable[[dict], None]
    reopen_source: Callable[[], Any] | None = None
    reload_config: Callable[[], Config] | None = None
    notifier: Notifier = field(default_factory=Notifier.from_env)
    watchdog_s: float | None = field(default_factory=watchdog_timeout)
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.ready_sent = False
        self.audio_chunks = 0
        self.reloads = 0
        self.failures = 0
        self._policy = WatchdogPolicy(self.watchdog_s) if self.watchdog_s else None
        self._wake = threading.Event()
        self._reload_wanted = threading.Event()
        self._lock = threading.Lock()
        self._status = "starting"
        self._status_sent: tuple[str, float] | None = None
        self._note: str | None = None
        self._monitor: threading.Thread | None = None
        self._finished = False
        self._reload_pending_since: float | None = None   # RELOADING=1 sent, READY=1 not yet
        self.pipeline.add_audio_listener(self.heartbeat)

    # -- hooks called from other threads / signal handlers

    def heartbeat(self, n_samples: int = 0) -> None:
        """Called by the pipeline for every chunk it consumes (the watchdog's evidence of life)."""
        now = self.clock()
        with self._lock:
            self.audio_chunks += 1
            if self._policy is not None:
                self._policy.heartbeat(now)
        if not self.ready_sent:
            self._wake.set()

    def request_reload(self) -> None:
        """Signal-safe: only sets a flag; the monitor thread does the work."""
        self._reload_wanted.set()
        self._wake.set()

    def request_stop(self) -> None:
        self.stop.set()
        self._wake.set()

    # -- main loop

    def run(self, install_signals: bool = True) -> int:
        """Run until stopped (exit status 0) or until a non-recoverable error (raised)."""
        restore = install_signal_handlers(self.stop, self.request_reload) if install_signals else None
        self._monitor = threading.Thread(target=self._monitor_loop, name="streamsv-notify", daemon=True)
        self._monitor.start()
        self.notifier.status("starting audio")
        outcome = "failed"
        try:
            self._loop()
            outcome = "stopped"
            return 0
        finally:
            self._finished = True
            self.stop.set()
            self._wake.set()
            # STOPPING=1 is the last word: a STATUS= the monitor is still sending (the final stats
            # woke it) must go out before it, or `systemctl status` shows a live figure after "stopped".
            self._monitor.join(timeout=2.0)
            self.notifier.stopping(status=outcome)
            if restore is not None:
                restore()
            self.notifier.close()

    def _loop(self) -> None:
        while not self.stop.is_set():
            chunks_before = self.audio_chunks
            error: BaseException | None = None
            try:
                self._drain(self.pipeline.run(self.stop))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - any capture failure is retried for a mic
                if self.reopen_source is None:
                    raise
                error = exc
            if self.stop.is_set():
                return
            if self.reopen_source is None:
                return  # a file or stdin ended: done
            if error is None:
                error = StreamsvError("audio stream ended")
            self.failures += 1
            if self.audio_chunks > chunks_before:
                self.backoff.reset()  # it worked for a while: start over at the short delay
            self._reconnect(error)
        # Stopped while reconnecting (or before the first run): the pipeline is not running, so
        # the final stats event it would have yielded comes from here.
        stats = getattr(self.pipeline, "stats_event", None)
        if callable(stats):
            self._observe_and_emit(stats(final=True))

    def _reconnect(self, error: BaseException) -> None:
        while not self.stop.is_set():
            delay = self.backoff.next_delay()
            log.warning("audio failed: %s; retrying in %.1f s", _describe(error), delay)
            self._set_status(f"audio failed ({_describe(error)}); retrying in {delay:.1f} s", force=True)
            if self.stop.wait(delay):
                return
            try:
                self.pipeline.source = self.reopen_source()
            except Exception as exc:  # noqa: BLE001 - device still gone: keep trying
                error = exc
                continue
            log.info("audio source reopened")
            self._set_status("audio reopened", force=True)
            return

    def _drain(self, events: Iterable[dict]) -> None:
        for event in events:
            self._observe_and_emit(event)

    def _observe_and_emit(self, event: dict) -> None:
        self.emit(event)
        kind = event.get("event") if isinstance(event, dict) else None
        if kind == "stats":
            text = status_line(event)
            self._set_status(text + (f", {self._note}" if self._note else ""))
        elif kind == "profiles_reloaded":
            names = ", ".join(event.get("profiles", [])) or "none"
            if event.get("error"):   # the pipeline logged why; the ones in force stay
                log.warning("profiles not reloaded; still in force: %s", names)
                self._set_status(f"profiles not reloaded, {event.get('count', 0)} kept", force=True)
            elif not event.get("profiles"):
                log.warning("profiles reloaded: none; every voice will be reported unknown")
                self._set_status("profiles reloaded (0)", force=True)
            else:
                log.info("profiles reloaded: %s", names)
                self._set_status(f"profiles reloaded ({event.get('count', 0)})", force=True)
            self._reload_done()
        else:
            note = _decision_note(event) if isinstance(event, dict) else None
            if note:
                self._note = note

    # -- the monitor thread: READY, WATCHDOG, STATUS, reloads

    def _set_status(self, text: str, force: bool = False) -> None:
        with self._lock:
            self._status = text
            if force:
                self._status_sent = None
        self._wake.set()

    def _reload_done(self, late: bool = False) -> None:
        """READY=1 for a reload, once the pipeline applied it (systemd reports the reload done then)."""
        with self._lock:
            if self._reload_pending_since is None:
                return
            self._reload_pending_since = None
        if late:
            log.warning("reload not applied within %.0f s (no audio is flowing); it applies when audio resumes",
                        RELOAD_READY_TIMEOUT_S)
        self.notifier.ready(status="listening (reloaded)")

    def _monitor_loop(self) -> None:
        tick = TICK_S if self._policy is None else max(MIN_TICK_S, min(TICK_S, self._policy.period_s / 2))
        while not self._finished:
            self._wake.wait(tick)
            self._wake.clear()
            if self._finished:
                return
            now = self.clock()
            if not self.ready_sent and self.audio_chunks > 0:
                self.ready_sent = True
                self.notifier.ready(status="listening")
                log.info("ready: audio is flowing")
                with self._lock:
                    if self._status == "starting":
                        self._status = "listening"   # else STATUS=starting would follow READY
                    self._status_sent = ("listening", now)
            if self._reload_wanted.is_set():
                self._reload_wanted.clear()
                self._do_reload()
            pending = self._reload_pending_since
            if pending is not None and now - pending > RELOAD_READY_TIMEOUT_S:
                self._reload_done(late=True)
            with self._lock:
                ping = self.ready_sent and self._policy is not None and self._policy.should_ping(now)
                if ping:
                    self._policy.pinged(now)
                status = self._status
                due = self._status_sent is None or (
                    status != self._status_sent[0] and now - self._status_sent[1] >= STATUS_MIN_INTERVAL_S
                )
                if due and self.ready_sent:
                    self._status_sent = (status, now)
            if ping:
                self.notifier.watchdog()
            if due and self.ready_sent:
                self.notifier.status(status)

    def _do_reload(self) -> None:
        self.notifier.reloading()
        new_cfg = None
        if self.reload_config is not None:
            try:
                new_cfg = self.reload_config()
            except StreamsvError as exc:
                log.error("reload: %s; keeping the current settings", exc)
            except Exception as exc:  # noqa: BLE001 - a bad reload must not kill the service
                log.error("reload failed: %s; keeping the current settings", _describe(exc))
        request = getattr(self.pipeline, "request_reload", None)
        if callable(request):
            # The pipeline applies it at its next chunk and says so with a profiles_reloaded event;
            # READY=1 goes out then (``_reload_done``), not before.
            with self._lock:
                self._reload_pending_since = self.clock()
            if new_cfg is not None and _accepts_config(request):
                request(new_cfg)
            else:
                if new_cfg is not None:
                    log.warning("reload: this pipeline reloads profiles only; new thresholds apply after a restart")
                request()
        self.reloads += 1
        log.info("reload requested (SIGHUP)")
        if not callable(request):
            self.notifier.ready(status="listening (reloaded)")


def _accepts_config(fn: Callable) -> bool:
    try:
        return len(inspect.signature(fn).parameters) >= 1
    except (TypeError, ValueError):
        return False


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, StreamsvError) else f"{type(exc).__name__}: {text}" if text else type(exc).__name__
