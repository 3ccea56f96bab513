"""Presenting pipeline events: JSON lines for machines, a rich live view for people.

JSON lines (``--json`` or whenever stdout is not a TTY), one object per line:

  {"event":"speech_start","t":<stream s>}
  {"event":"decision","t":<stream s at hop end>,"speaker":<name|null>,"accepted":<bool>,
   "score":<best cosine>,"scores":{"<name>":<cosine>,...},"speech_s":<s in window>,
   "latency_ms":<capture of the hop's last sample → emission>,"compute_ms":<model time>}
  {"event":"speech_end","t":..,"start":..,"duration_s":..,"decisions":<n>,
   "speaker":..,"accepted":..,"score":..,"scores":{..}}        # the turn's summary decision
  {"event":"stats","t":..,"final":<bool>,"uptime_s":..,"audio_s":..,"segments":..,"decisions":..,
   "profiles":..,"latency_p50_ms":..,"latency_p95_ms":..,"latency_p99_ms":..,
   "compute_p50_ms":..,"compute_p95_ms":..,"rtf":..,"overflows":..,"drops":..,"dropped_s":..}
  {"event":"profiles_reloaded","t":..,"profiles":[..],"count":<n>}
"""
from __future__ import annotations

import json
import sys
import time
from collections import deque
from typing import IO

BAR_WIDTH = 30
RECENT_TURNS = 6


class JsonWriter:
    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def __enter__(self) -> "JsonWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, event: dict, pipeline=None) -> None:
        self.stream.write(json.dumps(event, separators=(",", ":")) + "\n")
        self.stream.flush()   # consumers read events live, one per line


def _bar(score: float | None, threshold: float) -> str:
    if score is None:
        return " " * BAR_WIDTH
    filled = int(round(max(0.0, min(1.0, score)) * BAR_WIDTH))
    mark = int(round(threshold * BAR_WIDTH))
    cells = ["█" if i < filled else "·" for i in range(BAR_WIDTH)]
    if 0 <= mark < BAR_WIDTH:
        cells[mark] = "|"
    return "".join(cells)


class LiveView:
    """A rich Live panel: a score bar per profile, the decision, VAD state, latency, RTF, overflows."""

    def __init__(self, title: str = "streamsv listen", console=None) -> None:
        from rich.console import Console

        self.console = console or Console()
        self.title = title
        self.pipeline = None
        self.decision: dict | None = None
        self.turns: deque[str] = deque(maxlen=RECENT_TURNS)
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

    def update(self, event: dict, pipeline=None) -> None:
        self.pipeline = pipeline
        kind = event.get("event")
        if kind == "decision":
            self.decision = event
        elif kind == "speech_start":
            self.decision = None
        elif kind == "speech_end":
            who = event.get("speaker") or ("unknown" if event.get("decisions") else "(too short)")
            score = event.get("score")
            s = f"{score:.2f}" if score is not None else "  - "
            self.turns.append(f"{event.get('start', 0):7.2f}–{event['t']:7.2f}s  {who:<16} {s}")
        elif kind == "stats":
            self.stats = event
        if self._live is not None:
            self._live.refresh()

    def __rich__(self):
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        p = self.pipeline
        thr = p.sc.threshold if p is not None else 0.7
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right")
        grid.add_column()
        grid.add_column(justify="right")
        scores = (self.decision or {}).get("scores", {})
        names = sorted(p.centroids) if p is not None else sorted(scores)
        best = (self.decision or {}).get("speaker")
        for n in names:
            sc = scores.get(n)
            style = "bold green" if n == best else ""
            grid.add_row(Text(n, style=style), Text(_bar(sc, thr), style="green" if n == best else "cyan"),
                         f"{sc:.2f}" if sc is not None else "")
        if not names:
            grid.add_row("", Text("no profiles enrolled: everyone is unknown", style="yellow"), "")
        in_speech = p is not None and p.in_speech
        if self.decision is None:
            verdict = Text("listening…" if not in_speech else "speech: gathering audio…", style="dim")
        elif self.decision["accepted"]:
            verdict = Text(f"{self.decision['speaker']}  {self.decision['score']:.2f}", style="bold green")
        else:
            sc = self.decision.get("score")
            verdict = Text("unknown" + (f"  (best {sc:.2f})" if sc is not None else ""), style="bold yellow")
        st = p.stats_event() if p is not None else self.stats
        lat = f"{_fmt(st.get('latency_p50_ms'))} / {_fmt(st.get('latency_p95_ms'))} ms"
        info = Table.grid(padding=(0, 2))
        info.add_row("decision", verdict)
        info.add_row("VAD", Text("speech" if in_speech else "silence", style="magenta" if in_speech else "dim"))
        info.add_row("latency p50/p95", lat)
        info.add_row("RTF", _fmt(st.get("rtf"), ".3f"))
        info.add_row("overflows / drops", f"{st.get('overflows', 0)} / {st.get('drops', 0)}")
        info.add_row("audio", f"{st.get('audio_s', 0):.1f} s   turns {st.get('segments', 0)}   decisions {st.get('decisions', 0)}")
        body = Table.grid()
        body.add_row(grid)
        body.add_row("")
        body.add_row(info)
        if self.turns:
            body.add_row("")
            body.add_row(Text("recent turns", style="bold"))
            for line in self.turns:
                body.add_row(Text(line))
        return Panel(body, title=self.title, subtitle=f"threshold {thr:.2f} (|)  {time.strftime('%H:%M:%S')}")


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def make_output(json_mode: bool | None, title: str = "streamsv listen"):
    """JSON lines when asked, or when stdout is not a terminal; the live view otherwise."""
    if json_mode is None:
        json_mode = not sys.stdout.isatty()
    return JsonWriter() if json_mode else LiveView(title=title)
