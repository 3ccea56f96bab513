"""The console sink: a rich live view for people, drawn from events only (the same events a
JSON consumer reads; streamsv/events.py): a score bar per profile with the threshold marked, the
decision and its confidence, VAD state, the input-level meter, latency, RTF and recent turns."""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Mapping

from ..enrollment import CLIP_LEVEL

BAR_WIDTH = 30
RECENT_TURNS = 6
METER_WIDTH = 12
METER_FLOOR_DB = -60.0     # an empty meter: silence or a muted input
LATENCY_KEEP = 200         # recent decisions behind the live latency figures
LEVEL_INTERVAL_S = 0.25    # input-level events for the live meter, per this much audio


def _bar(score: float | None, threshold: float) -> str:
    if score is None:
        return " " * BAR_WIDTH
    filled = int(round(max(0.0, min(1.0, score)) * BAR_WIDTH))
    mark = int(round(threshold * BAR_WIDTH))
    cells = ["█" if i < filled else "·" for i in range(BAR_WIDTH)]
    if 0 <= mark < BAR_WIDTH:
        cells[mark] = "|"
    return "".join(cells)


def level_meter(dbfs: float | None, width: int = METER_WIDTH) -> str:
    """An input-level bar from METER_FLOOR_DB (empty) to 0 dBFS (full), with the figure."""
    if dbfs is None:
        return "·" * width + "    - dBFS"
    filled = int(round((min(0.0, max(METER_FLOOR_DB, dbfs)) - METER_FLOOR_DB) / -METER_FLOOR_DB * width))
    return "▮" * filled + "·" * (width - filled) + f" {dbfs:5.0f} dBFS"


class LiveView:
    """A rich Live panel built from the events alone (so it shows what a JSON consumer would see):
    a score bar per profile, the decision and its confidence, VAD state, input level, latency, RTF.

    Until the ``ready`` event it says it is starting (no threshold or profiles are made up: both
    come from ``ready`` and ``profiles_reloaded``); after a turn ends it says no one is speaking.
    """

    level_interval_s = LEVEL_INTERVAL_S   # the input-level meter asks the pipeline for level events

    def __init__(self, title: str = "streamsv listen", console=None) -> None:
        from rich.console import Console

        self.console = console or Console()
        self.title = title
        self.ready: dict | None = None
        self.profiles: list[str] = []
        self.threshold: float | None = None
        self.min_confidence: float | None = None
        self.decision: dict | None = None
        self.in_speech = False
        self.level: dict | None = None
        self.audio_s = 0.0
        self.segments = 0
        self.decisions = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_KEEP)
        self.turns: deque[str] = deque(maxlen=RECENT_TURNS)
        self._turn_start: float | None = None   # the start of the voice the last row summarises
        self.stats: dict = {}
        self._live = None

    def __enter__(self) -> "LiveView":
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=8, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            if not self.console.is_terminal:   # rich leaves the last frame without its newline there
                self.console.line()

    def consume(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        self.audio_s = max(self.audio_s, float(event.get("t") or 0.0))
        if kind in ("ready", "profiles_reloaded"):
            if kind == "ready":
                self.ready = event
            self.profiles = list(event.get("profiles", []))
            self.threshold = event.get("threshold", self.threshold)
            self.min_confidence = event.get("min_confidence", self.min_confidence)
        elif kind == "decision":
            self.decision = event
            self.decisions += 1
            if event.get("latency_ms") is not None:
                self.latencies.append(float(event["latency_ms"]))
        elif kind == "speech_start":
            self.decision = None
            self.in_speech = True
            self.segments += 1
        elif kind == "speech_end":
            self.in_speech = False
            self.decision = None
            who = event.get("speaker") or ("unknown" if event.get("decisions") else "(too short)")
            score, conf = event.get("score"), event.get("confidence")
            s = f"{score:.2f}" if score is not None else "  - "
            c = f"  conf {conf:.2f}" if conf is not None else ""
            if self.turns and event.get("start") == self._turn_start:
                self.turns.pop()   # a segment that continued the voice: its summary replaces the row
            self._turn_start = event.get("start")
            self.turns.append(f"{event.get('start', 0):7.2f}–{event['t']:7.2f}s  {who:<16} {s}{c}")
        elif kind == "level":
            self.level = event
        elif kind == "stats":
            self.stats = event
        if self._live is not None:
            self._live.refresh()

    def _verdict(self):
        from rich.text import Text

        if self.ready is None:
            return Text("starting…", style="dim")
        if self.decision is None:
            return Text("speech: gathering audio…" if self.in_speech else "no one speaking", style="dim")
        conf = self.decision.get("confidence")
        c = f"  confidence {conf:.2f}" if conf is not None else ""
        if self.decision["accepted"]:
            return Text(f"{self.decision['speaker']}  {self.decision['score']:.2f}{c}", style="bold green")
        sc = self.decision.get("score")
        return Text("unknown" + (f"  (best {sc:.2f}{c})" if sc is not None else ""), style="bold yellow")

    def __rich__(self):
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        thr = self.threshold
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right")
        grid.add_column()
        grid.add_column(justify="right")
        decision = self.decision or {}
        scores = decision.get("scores", {})
        best = decision.get("speaker")
        # The mark is the bar this decision was held to (its window's seconds and SNR), once there is one.
        mark = decision.get("threshold", thr)
        for n in sorted(set(self.profiles) | set(scores)):
            sc = scores.get(n)
            style = "bold green" if n == best else ""
            grid.add_row(Text(n, style=style), Text(_bar(sc, mark if mark is not None else -1), style="green" if n == best else "cyan"),
                         f"{sc:.2f}" if sc is not None else "")
        if self.ready is not None and not self.profiles:
            grid.add_row("", Text("no profiles enrolled: everyone is unknown", style="yellow"), "")
        st = self.stats
        lat = list(self.latencies)
        p50 = _pct(lat, 50) if lat else st.get("latency_p50_ms")
        p95 = _pct(lat, 95) if lat else st.get("latency_p95_ms")
        info = Table.grid(padding=(0, 2))
        info.add_row("decision", self._verdict())
        info.add_row("VAD", Text("speech" if self.in_speech else "silence", style="magenta" if self.in_speech else "dim"))
        snr, bar = decision.get("snr_db"), decision.get("threshold")
        if bar is not None:
            info.add_row("bar / SNR", f"{bar:.2f} / " + (f"{snr:.0f} dB" if snr is not None else "-"))
        lvl = self.level or {}
        info.add_row("input level", Text(level_meter(lvl.get("dbfs")) + ("  CLIPPING" if (lvl.get("peak") or 0) >= CLIP_LEVEL else ""),
                                         style="red" if (lvl.get("peak") or 0) >= CLIP_LEVEL else ""))
        info.add_row("latency p50/p95", f"{_fmt(p50)} / {_fmt(p95)} ms")
        info.add_row("RTF", _fmt(st.get("rtf"), ".3f"))
        info.add_row("overflows / drops", f"{st.get('overflows', 0)} / {st.get('drops', 0)}")
        info.add_row("audio", f"{self.audio_s:.1f} s   turns {self.segments}   decisions {self.decisions}")
        body = Table.grid()
        body.add_row(grid)
        body.add_row("")
        body.add_row(info)
        if self.turns:
            body.add_row("")
            body.add_row(Text("recent turns", style="bold"))
            for line in self.turns:
                body.add_row(Text(line))
        if self.ready is None:
            rule = "starting"
        elif self.min_confidence is not None:
            rule = f"min confidence {self.min_confidence:.2f}"
        else:
            rule = f"threshold {thr:.2f} (|)"
        src = f"  {self.ready.get('device')}" if self.ready else ""
        return Panel(body, title=self.title, subtitle=f"{rule}{src}  {time.strftime('%H:%M:%S')}")


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)
