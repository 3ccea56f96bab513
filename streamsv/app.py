"""The application: a Config and an embedder in, a running listener out.

``cli.py`` parses arguments and calls these; ``demo.py`` runs ``run_listen`` on its synthetic
conversation; the service runs ``run_service``. Nothing here parses flags or prints usage.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

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


def profile_loader(store, emb) -> Callable[[], dict]:
    """A function giving the store's profiles made by ``emb``'s model, name -> centroid (read
    afresh on each call, so a reload sees new and deleted profiles)."""
    def profiles() -> dict:
        return {n: p.centroid for n, p in store.load_all(emb.fingerprint, emb.dim).items()}

    return profiles


def run_service(cfg, emb, realtime: bool = False, reload_config=None, turns: bool = False) -> int:
    """``listen`` under streamsv.service.ServiceRunner; returns the exit status (0 after SIGTERM).

    READY=1 goes out once the model is loaded and the first audio chunk was consumed; the
    watchdog is fed from the pipeline's consumer loop (``on_audio``), so a stalled capture or a
    hung loop both stop the pings. A microphone that fails mid-run is reopened with backoff; a
    file or stdin that ends stops the service with status 0.
    """
    from .mqtt import with_mqtt
    from .output import make_output
    from .pipeline import Pipeline
    from .service import ServiceRunner
    from .sources import open_source

    store = open_store(cfg)
    mic = cfg.audio.source in (None, "mic")

    def open_audio():
        return open_source(cfg.audio.source, cfg.audio.device, realtime, cfg.audio.block_ms, cfg.audio.queue_s)

    pipe = Pipeline(emb, open_audio(), cfg, profile_loader(store, emb))
    if not pipe.centroids:
        log.warning("no usable profiles in %s: every voice will be reported unknown", store.dir)
    out = with_mqtt(make_output(cfg.output.json, title="streamsv listen (service)"), cfg, sorted(pipe.centroids))
    write = _writer(out, pipe, cfg, turns)
    with out:
        runner = ServiceRunner(pipe, write, reopen_source=open_audio if mic else None,
                               reload_config=reload_config)
        return runner.run()


def _writer(out, pipe, cfg, turns: bool):
    """The event sink: the live view also gets input-level events; ``--turns`` keeps turn-level ones."""
    from .output import LEVEL_INTERVAL_S, json_mode
    from .pipeline import TurnFilter

    if not json_mode(cfg.output.json):
        pipe.level_interval_s = LEVEL_INTERVAL_S
    keep = TurnFilter().keep if turns else (lambda ev: ev)

    def write(ev: dict) -> None:
        kept = keep(ev)
        if kept is not None:
            out.update(kept, pipe)

    return write


def run_listen(cfg, emb, realtime: bool = False, title: str = "streamsv listen",
               stop: threading.Event | None = None, on_event=None, turns: bool = False) -> dict:
    """Build source + pipeline + output from a Config and run to the end; returns the final stats."""
    from .mqtt import with_mqtt
    from .output import make_output
    from .pipeline import Pipeline
    from .sources import open_source

    store = open_store(cfg)
    src = open_source(cfg.audio.source, cfg.audio.device, realtime, cfg.audio.block_ms, cfg.audio.queue_s)
    pipe = Pipeline(emb, src, cfg, profile_loader(store, emb))
    if not pipe.centroids:
        log.warning("no usable profiles in %s: every voice will be reported unknown", store.dir)
    out = with_mqtt(make_output(cfg.output.json, title=title), cfg, sorted(pipe.centroids))
    write = _writer(out, pipe, cfg, turns)
    final: dict = {}
    stop = stop or threading.Event()
    with out:
        events = pipe.run(stop)
        try:
            for ev in events:
                write(ev)
                if on_event is not None:
                    on_event(ev)
                if ev["event"] == "stats" and ev.get("final"):
                    final = ev
        except KeyboardInterrupt:
            stop.set()
            events.close()
            final = pipe.stats_event(final=True)
            out.update(final, pipe)
    return final
