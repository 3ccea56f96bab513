"""The application: a Config and an embedder in, a running listener out.

``cli.py`` parses arguments and calls these; ``demo.py`` runs ``run_listen`` on its synthetic
conversation; the service runs ``run_service``. Nothing here parses flags or prints usage.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import StreamsvError, shown
from .features import SAMPLE_RATE

log = logging.getLogger("streamsv")


def load_model(model_cfg):
    """The embedder for the config's ``model`` section, or a weights path (None: the shipped
    model). The one seam tests replace to run every command on a model loaded once."""
    from . import load_embedder
    from .config import ModelConfig

    if not isinstance(model_cfg, ModelConfig):
        model_cfg = ModelConfig(path=model_cfg)
    return load_embedder(model_cfg.path, variant=None if model_cfg.path else model_cfg.variant, threads=model_cfg.threads)


def open_store(cfg):
    """The profile store the config names."""
    from .profiles import ProfileStore

    return ProfileStore(cfg.profiles.resolved())


def profile_loader(store, emb, watch=None) -> Callable[[], dict]:
    """A function giving the store's profiles made by ``emb``'s model, name -> centroid (read
    afresh on each call, so a reload sees new and deleted profiles; ``watch``, a ProfilesWatch on
    the store, learns that the folder was read).

    A reload that would forget everyone because the folder went away is an error, so the profiles
    in force stay: a folder that was there at an earlier call and is gone now (moved, deleted), or
    one now on another filesystem and without profiles (the mount point a filesystem left when it
    was unmounted). A folder that never was is simply no profiles yet, and one deleted and made
    again empty on the same filesystem (``rm -r`` then ``mkdir``: forget everyone) is no profiles."""
    device = None   # the folder's filesystem at the last read

    def profiles() -> dict:
        nonlocal device
        if watch is not None:
            watch.read()         # before the read: a change made during it is seen at the next look
        st = store.folder_stat()     # None when absent; a folder it cannot use is a one-line error
        if st is None:
            if device is not None:
                raise StreamsvError(f"profiles folder {shown(store.dir)} is gone (moved, deleted or unmounted?)")
            return {}
        loaded = {n: p.centroid for n, p in store.load_all(emb.fingerprint, emb.dim).items()}
        if not loaded and device is not None and st.st_dev != device:
            raise StreamsvError(f"profiles folder {shown(store.dir)} is now an empty folder on another "
                                f"filesystem (unmounted?)")
        device = st.st_dev
        return loaded

    return profiles


def profiles_watch(cfg, store):
    """A ProfilesWatch on ``store`` by ``profiles.watch_s``; None when it is 0 (reload signals only)."""
    from .profiles import ProfilesWatch

    return ProfilesWatch(store, cfg.profiles.watch_s) if cfg.profiles.watch_s > 0 else None


def check_listen_inputs(cfg) -> None:
    """Fail on a wrong device, a missing file or a missing MQTT password before the model loads."""
    if cfg.mqtt.url:
        from .sinks.mqtt import read_password

        read_password(cfg.mqtt)                  # a missing password file fails before the model loads
    if cfg.audio.source in (None, "mic"):
        from .sources import resolve_input_device

        resolve_input_device(cfg.audio.device)   # a wrong --device fails before the model loads
    elif cfg.audio.source != "-":
        from .sources import FileSource

        FileSource(cfg.audio.source).close()     # so does a missing or unreadable file


def open_audio(cfg, realtime: bool = False):
    """The configured audio source: the microphone, a file (``realtime``: paced like a microphone)
    or raw samples on stdin, at the configured rate."""
    from .sources import open_source

    return open_source(cfg.audio.source, cfg.audio.device, realtime, cfg.audio.block_ms, cfg.audio.queue_s,
                       rate=cfg.audio.sample_rate)


def _listening_pipeline(cfg, emb, source, sinks):
    """A pipeline on ``source`` scoring against the store's profiles (a warning when there are none)."""
    from .pipeline import Pipeline

    store = open_store(cfg)
    watch = profiles_watch(cfg, store)
    pipe = Pipeline(emb, source, cfg, profile_loader(store, emb, watch), level_interval_s=sinks.level_interval_s,
                    watch=watch)
    if not pipe.centroids:
        log.warning("no usable profiles in %s: every voice will be reported unknown", store.dir)
    return pipe


def run_service(cfg, emb, realtime: bool = False, reload_config=None, turns: bool = False) -> int:
    """``listen`` under streamsv.service.ServiceRunner; returns the exit status (0 after SIGTERM).

    READY=1 goes out once the model is loaded and the first audio chunk was consumed; the
    watchdog is fed from the pipeline's consumer loop (an audio listener), so a stalled capture or a
    hung loop both stop the pings. A microphone that fails mid-run is reopened with backoff; a
    file or stdin that ends stops the service with status 0.
    """
    from .service import ServiceRunner
    from .sinks import open_sinks

    mic = cfg.audio.source in (None, "mic")
    sinks = open_sinks(cfg, title="streamsv listen (service)", turns=turns)
    pipe = _listening_pipeline(cfg, emb, open_audio(cfg, realtime), sinks)
    with sinks:
        runner = ServiceRunner(pipe, sinks.consume, reopen_source=(lambda: open_audio(cfg, realtime)) if mic else None,
                               reload_config=reload_config)
        return runner.run()


@contextmanager
def _sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """Outside the service (a container's stop, ``kill``), SIGTERM ends ``listen`` as Ctrl-C does:
    the final stats, then exit 0. Signal handlers belong to the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_listen(cfg, emb, realtime: bool = False, title: str = "streamsv listen",
               stop: threading.Event | None = None, on_event=None, turns: bool = False) -> dict:
    """Build source + pipeline + sinks from a Config and run to the end; returns the final stats."""
    from .sinks import open_sinks

    sinks = open_sinks(cfg, title=title, turns=turns)
    pipe = _listening_pipeline(cfg, emb, open_audio(cfg, realtime), sinks)
    final: dict = {}
    stop = stop or threading.Event()
    with sinks, _sigterm_stops_like_ctrl_c():
        events = pipe.run(stop)
        try:
            for ev in events:
                sinks.consume(ev)
                if on_event is not None:
                    on_event(ev)
                if ev["event"] == "stats" and ev.get("final"):
                    final = ev
        except KeyboardInterrupt:
            stop.set()
            events.close()
            final = pipe.stats_event(final=True)
            sinks.consume(final)
    return final


# --------------------------------------------------------------------------- verify, embed, wyoming

@dataclass(frozen=True)
class Verification:
    """``verify``'s answer: one claimed speaker against one recording."""
    speaker: str
    accepted: bool
    score: float
    confidence: float | None
    threshold: float
    min_confidence: float | None
    speech_s: float

    def as_dict(self) -> dict:
        return {"speaker": self.speaker, "accepted": self.accepted, "score": round(self.score, 4),
                "confidence": None if self.confidence is None else round(self.confidence, 4),
                "threshold": self.threshold, "min_confidence": self.min_confidence,
                "speech_s": round(self.speech_s, 2)}

    def line(self) -> str:
        if self.min_confidence is not None:
            rule = f"min confidence {self.min_confidence:.2f}"
        else:
            rule = f"threshold {self.threshold:.2f}"
        shown_conf = f" confidence {self.confidence:.2f}" if self.confidence is not None else ""
        return f"{'accept' if self.accepted else 'reject'} {self.speaker} score {self.score:.3f}{shown_conf} ({rule})"


def verify(cfg, name: str, file: Path, load_model: Callable[[], object]) -> Verification:
    """Score ``file``'s speech against ``name``'s profile and decide by the config's threshold,
    or by its min_confidence when one is set (``load_model()`` gives the embedder)."""
    from .pipeline import DecisionRule
    from .profiles import check_name, embed_bounded
    from .scoring import MIN_SCORED_SPEECH_S, cosine_scores
    from .sources import load_audio
    from .vad import voiced_speech

    check_name(name)
    wave = load_audio(file)
    store = open_store(cfg)
    if not store.exists(name):
        names = store.names()
        known = f"enrolled: {', '.join(names)}" if names else "none enrolled yet (streamsv enroll NAME)"
        raise StreamsvError(f"no profile named {name!r} in {store.dir}; {known}")
    emb = load_model()
    prof = store.load(name, emb.fingerprint, emb.dim)
    # The live pipeline's rule loads the calibration (and refuses a min_confidence without one); verify
    # itself decides on the whole recording's score, without the live window's duration slope or margin.
    calibration = DecisionRule.load(cfg.scoring, emb.fingerprint, cfg.profiles.resolved()).calibration
    sc = cfg.scoring
    speech = voiced_speech(wave, cfg.vad)
    seconds = len(speech) / SAMPLE_RATE
    if seconds < MIN_SCORED_SPEECH_S:
        shown_s = math.floor(seconds * 10) / 10   # 0.49 s must not read as "0.5 s, need 0.5"
        raise StreamsvError(f"{file}: only {shown_s:.1f} s of speech; need at least {MIN_SCORED_SPEECH_S:g} s")
    score = cosine_scores(embed_bounded(emb, speech), {name: prof.centroid})[name]
    conf = calibration.confidence(score, seconds) if calibration is not None else None
    ok = conf >= sc.min_confidence if sc.min_confidence is not None else score >= sc.threshold
    return Verification(name, bool(ok), score, conf, sc.threshold, sc.min_confidence, seconds)


def embed_file(emb, path: Path) -> np.ndarray:
    """The unit embedding of a whole audio file (bounded memory, however long)."""
    from .profiles import embed_bounded
    from .sources import load_audio

    wave = load_audio(path)
    try:
        return embed_bounded(emb, wave)
    except StreamsvError as e:
        raise StreamsvError(f"{path}: {e}") from None


def run_wyoming(settings, cfg, load_model: Callable[[], object]) -> None:
    """Serve the speaker-aware Wyoming ASR proxy until stopped (``load_model()`` gives the embedder)."""
    from .wyoming_asr import Proxy, serve

    store = open_store(cfg)
    emb = load_model()
    # Reads the profiles now, on SIGHUP and when their folder changes (profiles.watch_s).
    watch = profiles_watch(cfg, store)
    proxy = Proxy(settings, cfg, emb, profile_loader(store, emb, watch), watch)
    if not proxy.centroids:
        log.warning("no usable profiles in %s: every voice will be reported unknown", store.dir)
    serve(proxy)
