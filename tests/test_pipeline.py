import os
import threading

import numpy as np
import pytest
import soundfile as sf

from conftest import with_pauses
from streamsv.config import Config
from streamsv.errors import StreamsvError
from streamsv.pipeline import Pipeline
from streamsv.sources import FileSource

SR = 16000
DECISION_KEYS = {"event", "t", "speaker", "accepted", "score", "confidence", "scores", "speech_s", "latency_ms",
                 "compute_ms", "threshold", "snr_db"}


@pytest.fixture(scope="module")
def conversation(tmp_path_factory, speech_clips):
    audio, spans = with_pauses(speech_clips, pause_s=1.2)
    p = tmp_path_factory.mktemp("conv") / "conv.wav"
    sf.write(p, audio, SR)
    return p, spans


def profiles_for(emb, clips):
    return {"first": emb.embed(clips[0]), "other": emb.embed(clips[1][::-1].copy())}


def test_event_stream_shape(untrained, speech_clips, conversation):
    path, spans = conversation
    cfg = Config()
    pipe = Pipeline(untrained, FileSource(path), cfg, profiles_for(untrained, speech_clips))
    events = list(pipe.run())
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["ready", "speech_start"] and kinds[-1] == "stats" and events[-1]["final"]
    decisions = [e for e in events if e["event"] == "decision"]
    assert len(decisions) >= 3
    open_seg, seg_start, last_t, hops = False, None, -1.0, []
    for e in events:
        if e["event"] == "speech_start":
            assert not open_seg
            open_seg = True
            if not e.get("continues"):   # a segment that continues the voice keeps its window and hops
                seg_start, hops = e["t"], []
        elif e["event"] == "speaker_change":
            assert open_seg
            hops = []   # a new voice: its own window, hops and summary from here (streamsv/change.py)
            seg_start = e["at"]
        elif e["event"] == "decision":
            assert open_seg, "decision outside a speech segment"
            assert set(e) == DECISION_KEYS
            assert e["t"] > last_t
            last_t = e["t"]
            assert set(e["scores"]) == {"first", "other"}
            assert e["score"] == max(e["scores"].values())
            assert e["accepted"] == (e["speaker"] is not None)
            assert 0 < e["speech_s"] <= cfg.scoring.window_s + 1e-6
            assert e["latency_ms"] >= 0 and e["compute_ms"] >= 0
            hops.append(e)
            if len(hops) == 1:
                # The first hop of a voice comes after min_speech_s of its audio: the stream was reset.
                # (+ a pause's tail: the VAD hands the frames of a pause inside the segment over at once)
                assert e["speech_s"] <= cfg.scoring.min_speech_s + cfg.vad.hangover_ms / 1000 + 0.03
                assert e["t"] - seg_start >= cfg.scoring.min_speech_s - 1e-6
            else:
                assert e["t"] - hops[-2]["t"] >= cfg.scoring.hop_s - 0.031
        elif e["event"] == "speech_end":
            assert open_seg
            open_seg = False
            assert e["decisions"] == len(hops)
    stats = events[-1]
    assert stats["decisions"] == len(decisions)
    assert stats["latency_p95_ms"] is not None and stats["rtf"] > 0
    assert stats["audio_s"] == pytest.approx(sf.info(path).duration, abs=0.05)


def test_decision_tracks_the_enrolled_clip(untrained, speech_clips, conversation):
    # Even an untrained encoder scores a clip highest against its own embedding.
    path, spans = conversation
    cfg = Config().with_overrides(**{"scoring.threshold": 0.0, "scoring.min_margin": 0.0})
    profs = {f"clip{i}": untrained.embed(c) for i, c in enumerate(speech_clips)}
    events = list(Pipeline(untrained, FileSource(path), cfg, profs).run())
    summaries = [e for e in events if e["event"] == "speech_end" and e["decisions"]]
    assert summaries
    for s in summaries:
        turn = [i for i, (a, b) in enumerate(spans) if a - 0.5 <= s["start"] <= b]
        assert s["speaker"] == f"clip{turn[0]}"


def test_reload_stop_and_audio_hook(untrained, speech_clips, conversation):
    path, _ = conversation
    profs = {"first": untrained.embed(speech_clips[0])}
    seen = []
    pipe = Pipeline(untrained, FileSource(path), Config(), lambda: dict(profs))
    pipe.add_audio_listener(seen.append)
    stop = threading.Event()
    events = []
    for e in pipe.run(stop):
        events.append(e)
        if e["event"] == "decision" and "second" not in profs:
            profs["second"] = untrained.embed(speech_clips[1])
            pipe.request_reload()
        if e["event"] == "decision" and set(e["scores"]) == {"first", "second"}:
            stop.set()
    reload = [e for e in events if e["event"] == "profiles_reloaded"]
    assert reload and reload[0]["profiles"] == ["first", "second"]
    assert events[-1]["event"] == "stats" and events[-1]["final"]
    assert events[-1]["audio_s"] < sf.info(path).duration - 1.0     # stopped early
    assert len(seen) == pipe.totals.chunks_in and all(n == 480 for n in seen)


def test_realtime_stats_report_latency(untrained, speech_clips, tmp_path):
    audio, _ = with_pauses(speech_clips[:1], pause_s=0.3)
    p = tmp_path / "rt.wav"
    sf.write(p, audio[: int(2.5 * SR)], SR)
    cfg = Config().with_overrides(**{"output.stats_interval_s": 1.0})
    events = list(Pipeline(untrained, FileSource(p, realtime=True), cfg, {"x": untrained.embed(speech_clips[0])}).run())
    stats = [e for e in events if e["event"] == "stats"]
    assert len(stats) >= 2 and not stats[0]["final"] and stats[-1]["final"]
    assert stats[-1]["latency_p95_ms"] is not None
    # Capture-to-decision at real time is the hop's compute (a few ms here, ~100 ms on a machine loaded
    # 5x over), not the file's length (2.5 s) nor a hop (500 ms): a decision later than the next hop's
    # audio would mean the pipeline fell behind real time.
    assert 0 < stats[-1]["latency_p95_ms"] < 500


def test_no_profiles_rejects_everything(untrained, conversation):
    path, _ = conversation
    events = list(Pipeline(untrained, FileSource(path), Config(), {}).run())
    ds = [e for e in events if e["event"] == "decision"]
    assert ds and all(not d["accepted"] and d["scores"] == {} and d["score"] is None for d in ds)


def test_live_view_renders(untrained, speech_clips, conversation):
    import io

    from rich.console import Console

    from streamsv.sinks.console import LiveView
    from streamsv.sinks.jsonl import JsonWriter

    path, _ = conversation
    # A threshold that is not the default: the view must take it from the events, not a fallback.
    cfg = Config().with_overrides(**{"scoring.threshold": 0.63})
    pipe = Pipeline(untrained, FileSource(path), cfg, profiles_for(untrained, speech_clips))
    buf = io.StringIO()
    view = LiveView(console=Console(file=buf, force_terminal=True, width=100))
    lines = io.StringIO()
    writer = JsonWriter(lines)
    with view:
        for ev in pipe.run():
            view.consume(ev)
            writer.consume(ev)
    text = buf.getvalue()
    assert "first" in text and "other" in text and "latency p50/p95" in text and "recent turns" in text
    assert "bar / SNR" in text   # each decision's own bar, for its seconds and SNR
    final = io.StringIO()
    Console(file=final, width=100).print(view)   # the last frame, once every turn has ended
    frame = final.getvalue()
    assert "no one speaking" in frame and "threshold 0.63" in frame, frame
    import json

    assert [json.loads(x)["event"] for x in lines.getvalue().splitlines()][-1] == "stats"


def test_run_again_with_a_new_source(untrained, speech_clips, conversation):
    # The service layer reopens the source after a device failure and calls run() again.
    path, _ = conversation
    pipe = Pipeline(untrained, FileSource(path), Config(), profiles_for(untrained, speech_clips))
    heartbeats, samples = [], []
    pipe.add_audio_listener(heartbeats.append)      # a watchdog's evidence of life...
    pipe.add_audio_listener(samples.append)         # ...and a second listener beside it
    stop = threading.Event()
    for e in pipe.run(stop):
        if e["event"] == "decision":
            stop.set()                      # stop mid-segment
    first = pipe.totals.decisions
    pipe.source = FileSource(path)
    events = list(pipe.run())
    assert events[0]["event"] == "speech_start"          # no stale open segment carried over
    assert events[-1]["decisions"] > first and events[-1]["final"]
    # The listeners outlive a run: every chunk of both runs reached both of them.
    assert len(heartbeats) == len(samples) == pipe.totals.chunks_in
    assert sum(samples) / 16000 == pytest.approx(events[-1]["audio_s"], abs=1e-3)


def test_reload_with_config_swaps_thresholds_at_a_chunk_boundary(untrained, speech_clips, conversation, caplog):
    # SIGHUP re-reads the settings file: the decision rule changes mid-stream, audio does not restart.
    path, _ = conversation
    profs = {"first": untrained.embed(speech_clips[0])}
    pipe = Pipeline(untrained, FileSource(path), Config(), profs)
    strict = Config().with_overrides(**{"scoring.threshold": 1.0, "scoring.min_margin": 0.5,
                                        "scoring.duration_slope": 0.0, "scoring.window_s": 2.0})
    events, asked = [], False
    for e in pipe.run():
        events.append(e)
        if e["event"] == "decision" and not asked:
            asked = True
            pipe.request_reload(strict)
    i = next(i for i, e in enumerate(events) if e["event"] == "profiles_reloaded")
    assert events[i]["threshold"] == 1.0 and events[i]["min_margin"] == 0.5 and events[i]["duration_slope"] == 0.0
    assert events[i]["profiles"] == ["first"]
    assert pipe.rule.scoring.threshold == 1.0 and pipe.rule.scoring.window_s == 3.0          # window needs a restart
    assert "scoring.window_s changed; applied after a restart" in caplog.text
    before = [e for e in events[:i] if e["event"] == "decision"]
    after = [e for e in events[i:] if e["event"] == "decision"]
    assert before and after
    # Scores below 1.0 can no longer be accepted, whatever they were before.
    assert all(not e["accepted"] for e in after if e["score"] is not None and e["score"] < 1.0)
    assert any(e["accepted"] for e in before)   # the enrolled clip itself passes the default rule


def test_a_profile_enrolled_or_deleted_while_listening_is_picked_up_without_a_signal(untrained, speech_clips,
                                                                                      conversation, tmp_path):
    from streamsv.app import profile_loader
    from streamsv.profiles import ProfilesWatch, ProfileStore, new_profile

    def profile(name, clip):
        return new_profile(name, untrained.embed(clip)[None], len(clip) / 16000, untrained.fingerprint)

    path, _ = conversation
    store = ProfileStore(tmp_path / "profiles")
    store.save(profile("first", speech_clips[0]))
    watch = ProfilesWatch(store, 0.0)                 # looks at every chunk
    pipe = Pipeline(untrained, FileSource(path), Config(), profile_loader(store, untrained, watch), watch=watch)
    events = []
    for e in pipe.run():
        events.append(e)
        decisions = sum(x["event"] == "decision" for x in events)
        if e["event"] == "decision" and decisions == 1:
            store.save(profile("second", speech_clips[1]))       # `streamsv enroll second` meanwhile
        if e["event"] == "decision" and decisions == 6:
            store.delete("first")                                 # `streamsv profiles delete first`
    reloads = [(i, e) for i, e in enumerate(events) if e["event"] == "profiles_reloaded"]
    assert [e["profiles"] for _, e in reloads] == [["first", "second"], ["second"]]
    assert all(e["error"] is None for _, e in reloads)
    (added, _), (removed, _) = reloads
    scored = lambda part: [set(e["scores"]) for e in part if e["event"] == "decision" and e.get("scores")]
    assert scored(events[:added]) and all(s == {"first"} for s in scored(events[:added]))
    assert scored(events[added:removed]) and all(s == {"first", "second"} for s in scored(events[added:removed]))
    assert scored(events[removed:]) and all(s == {"second"} for s in scored(events[removed:]))


def test_a_profiles_folder_that_goes_away_keeps_the_profiles_in_force(untrained, speech_clips, conversation,
                                                                        tmp_path, caplog):
    # QA: an unmounted or moved folder, then a reload, silently dropped every profile.
    from streamsv.app import profile_loader
    from streamsv.profiles import ProfilesWatch, ProfileStore, new_profile

    path, _ = conversation
    store = ProfileStore(tmp_path / "profiles")
    store.save(new_profile("first", untrained.embed(speech_clips[0])[None], 3.0, untrained.fingerprint))
    watch = ProfilesWatch(store, 0.0)
    pipe = Pipeline(untrained, FileSource(path), Config(), profile_loader(store, untrained, watch), watch=watch)
    events, decisions = [], 0
    for e in pipe.run():
        events.append(e)
        decisions += e["event"] == "decision"
        if e["event"] == "decision" and decisions == 1:
            store.dir.rename(tmp_path / "elsewhere")             # unmounted, moved
        if e["event"] == "decision" and decisions == 4:
            (tmp_path / "elsewhere").rename(store.dir)            # back
    reloads = [e for e in events if e["event"] == "profiles_reloaded"]
    assert [(e["profiles"], e["error"] is None) for e in reloads] == [(["first"], False), (["first"], True)]
    assert "is gone" in reloads[0]["error"] and "keeping the current profiles" in caplog.text
    assert all(set(e["scores"]) == {"first"} for e in events if e["event"] == "decision")


def test_an_unmounted_profiles_folder_keeps_the_profiles_and_an_emptied_one_forgets_them(untrained, speech_clips,
                                                                                         tmp_path, monkeypatch):
    # QA: unmounting a filesystem leaves its mount point: an empty folder at the same path, on the
    # filesystem below. That is not "forget everyone"; deleting the profiles there (or the folder,
    # then making it again) is.
    import shutil

    from streamsv import app
    from streamsv.profiles import ProfileStore, new_profile

    store = ProfileStore(tmp_path / "profiles")
    store.save(new_profile("first", untrained.embed(speech_clips[0])[None], 3.0, untrained.fingerprint))
    load = app.profile_loader(store, untrained)
    assert list(load()) == ["first"]
    real = store.folder_stat
    monkeypatch.setattr(store, "folder_stat", lambda: os.stat_result(
        (*real()[:2], real().st_dev + 1, *real()[3:])))               # another filesystem now
    store.delete("first")
    with pytest.raises(StreamsvError, match="now an empty folder on another filesystem"):
        load()
    monkeypatch.setattr(store, "folder_stat", real)                  # mounted again: the same filesystem
    store.save(new_profile("first", untrained.embed(speech_clips[0])[None], 3.0, untrained.fingerprint))
    assert list(load()) == ["first"]
    shutil.rmtree(store.dir)
    store.dir.mkdir(mode=0o700)                                      # forget everyone, on purpose
    assert load() == {}


# ------------------------------------------------------------ a segment that continues the voice


def _bridged_run(emb, clips, profile_sign: float = 1.0, **overrides) -> list[dict]:
    """The clips with short pauses between them, every gap bridged (2 s), the change tests pinned by
    their thresholds: a gap's test says 'change' at bridge_threshold 1.0 and never at -1.0. The
    one profile is the first clip's voice (``profile_sign`` -1: its opposite, which nothing scores as)."""
    from streamsv.bench import TimedSource

    audio, _ = with_pauses(clips, pause_s=0.7)
    cfg = Config().with_overrides(**{"output.stats_interval_s": 86400, "change.bridge_s": 2.0,
                                     "change.continuous": False, "change.threshold": -1.0, **overrides})
    return list(Pipeline(emb, TimedSource(audio), cfg, {"first": profile_sign * emb.embed(clips[0])}).run())


def test_a_segment_after_a_short_gap_continues_the_voice(untrained, speech_clips):
    cfg = Config()
    events = _bridged_run(untrained, speech_clips, **{"change.bridge_threshold": -1.0})
    starts = [e for e in events if e["event"] == "speech_start"]
    ends = [e for e in events if e["event"] == "speech_end"]
    assert "continues" not in starts[0]
    continuing = [e for e in starts if e.get("continues")]
    assert continuing, "no gap short enough to bridge"
    assert not [e for e in events if e["event"] == "speaker_change"]
    for e in continuing:
        before = max(x["t"] for x in ends if x["t"] <= e["t"])
        assert e["gap_s"] == pytest.approx(e["t"] - before, abs=0.002) and 0 <= e["gap_s"] <= 2.0
        after = [d for d in events if d["event"] == "decision" and d["t"] > e["t"]]
        # Held until the gap's pause test has heard recent_s of the new segment; then the window
        # that went on across the gap, not a fresh one.
        assert after[0]["t"] - e["t"] >= cfg.change.recent_s - 0.01
        assert after[0]["speech_s"] > cfg.scoring.min_speech_s + 0.5
    # Each speech_end summarises the voice since the segment it began in (a segment under
    # min_reference_s is too short to judge a gap after it: the next one is a new voice): its
    # start, all its hops so far, its speech seconds.
    voice_start, decided = None, 0
    for e in events:
        if e["event"] == "speech_start" and not e.get("continues"):
            voice_start, decided, first_end = e["t"], 0, None
        decided += e["event"] == "decision"
        if e["event"] == "speech_end":
            assert e["start"] == voice_start and e["decisions"] == decided
            first_end = first_end or e
    assert ends[-1]["start"] == first_end["start"] and ends[-1]["duration_s"] > first_end["duration_s"] + 1.0
    stats = events[-1]
    assert stats["segments"] == len(starts) and stats["speaker_changes"] == 0
    # bridge_s 0: every segment is a new voice.
    assert not [e for e in _bridged_run(untrained, speech_clips, **{"change.bridge_s": 0.0})
                if e["event"] == "speech_start" and "continues" in e]


def test_a_change_at_a_bridged_gap_restarts_the_voice_where_the_segment_began(untrained, speech_clips):
    cfg = Config()
    # Every gap's test says "change", and the profile checks (the next test's) stay out of it: with
    # one voice on both sides of every gap, they would veto what this test is about.
    events = _bridged_run(untrained, speech_clips, **{"change.bridge_threshold": 1.0, "change.profile_veto": False,
                                                      "change.stranger_veto": False})
    continuing = [e for e in events if e["event"] == "speech_start" and e.get("continues")]
    changes = [e for e in events if e["event"] == "speaker_change"]
    assert continuing and changes
    for c in changes:
        start = max(e["t"] for e in continuing if e["t"] <= c["at"] + 0.002)
        assert c["at"] == pytest.approx(start, abs=0.002)                       # where the new segment began
        assert c["t"] - c["at"] >= cfg.change.recent_s - 1e-6                  # once recent_s was heard
        i = events.index(c)
        first = next(e for e in events[i:] if e["event"] == "decision")
        assert first["speech_s"] <= c["t"] - c["at"] + 0.1                     # judged on its own audio
        end = next(e for e in events[i:] if e["event"] == "speech_end")
        assert end["start"] == c["at"]


def test_no_change_where_both_sides_score_as_the_same_enrolled_voice_or_as_none(untrained, speech_clips):
    # Every gap's test says "change" (bridge_threshold 1.0). At a decision bar of -1 every stretch
    # of speech is the one enrolled voice, so the profile check vetoes every one of them; against
    # the opposite of a voice every stretch scores far under the bar, a stranger, so the stranger
    # check does. With each check off the changes stand, the same ones whatever the profile.
    def changes(sign=1.0, **overrides):
        events = _bridged_run(untrained, speech_clips, sign, **{"change.bridge_threshold": 1.0, **overrides})
        return [e for e in events if e["event"] == "speaker_change"]

    everyone_known = {"scoring.threshold": -1.0, "scoring.duration_slope": 0.0}
    assert not changes(**everyone_known)
    assert not changes(-1.0)
    unvetoed = changes(**everyone_known, **{"change.profile_veto": False})
    assert unvetoed
    assert changes(-1.0, **{"change.stranger_veto": False}) == unvetoed
    assert changes(**{"change.profile_veto": False, "change.stranger_veto": False}) == unvetoed


def test_without_the_hold_a_continuing_segment_is_decided_at_once_on_the_old_window(untrained, speech_clips):
    cfg = Config()
    events = _bridged_run(untrained, speech_clips, **{"change.bridge_threshold": -1.0, "change.bridge_hold": False})
    for e in (x for x in events if x["event"] == "speech_start" and x.get("continues")):
        first = next(d for d in events if d["event"] == "decision" and d["t"] > e["t"])
        assert first["t"] - e["t"] <= cfg.scoring.hop_s + 0.05
        assert first["speech_s"] > cfg.scoring.min_speech_s


def test_a_short_segment_after_a_bridged_gap_is_judged_before_the_next_one_starts(untrained, speech_clips):
    # A segment that closes before recent_s of it was heard: its gap's test runs on what there is when
    # the next segment starts, so a voice that took over there is placed there, not at the next gap.
    from streamsv.bench import TimedSource

    a, b = speech_clips[0], speech_clips[1]
    loud = np.flatnonzero(np.abs(b) > 0.2 * np.abs(b).max())
    short = b[loud[0]:loud[0] + int(0.5 * SR)]
    pause = np.zeros(int(0.6 * SR), np.float32)
    audio = np.concatenate([pause, a, pause, short, pause, b, pause]).astype(np.float32)
    cfg = Config().with_overrides(**{"output.stats_interval_s": 86400, "change.bridge_s": 2.0, "change.continuous": False,
                                     "change.threshold": -1.0, "change.bridge_threshold": 1.0,
                                     "change.short_gap_threshold": 1.0})
    events = list(Pipeline(untrained, TimedSource(audio), cfg, {}).run())
    kinds = [e["event"] for e in events]
    starts = [i for i, k in enumerate(kinds) if k == "speech_start"]
    short_start = next(events[i] for i in starts if events[i].get("continues")
                       and abs(events[i]["t"] - (0.6 + len(a) / SR + 0.6)) < 0.35)
    i = events.index(short_start)
    j = next(k for k in starts if k > i)                   # the segment after the short one
    change = events[j - 1]
    assert change["event"] == "speaker_change" and change["at"] == pytest.approx(short_start["t"], abs=0.002)
    assert kinds[i + 1:j - 1] == ["speech_end"]            # nothing decided in the short segment
    assert change["t"] == events[j - 2]["t"] <= events[j]["t"]
    # The short voice is too little to compare a gap with: the next segment is a new voice.
    assert "continues" not in events[j]
    # By default the short segment's test has the in-segment bar (here -1: no change), not the gap's.
    cfg = cfg.with_overrides(**{"change.short_gap_threshold": None})
    events = list(Pipeline(untrained, TimedSource(audio), cfg, {}).run())
    assert not [e for e in events if e["event"] == "speaker_change" and abs(e["at"] - short_start["t"]) < 0.01]


def test_live_view_keeps_one_row_per_voice_across_continued_segments():
    import io

    from rich.console import Console

    from streamsv import events as ev
    from streamsv.sinks.console import LiveView

    view = LiveView(console=Console(file=io.StringIO(), width=100))
    for e in (ev.speech_start(0.5), ev.speech_end(2.0, 0.5, 1.5, 2, "ada", True, 0.8),
              ev.speech_start(2.4, 0.4), ev.speech_end(4.0, 0.5, 3.1, 5, "ada", True, 0.82),
              ev.speech_start(5.5), ev.speech_end(7.0, 5.5, 1.5, 1)):
        view.consume(e)
    assert len(view.turns) == 2
    assert "0.50–   4.00s" in view.turns[0] and "ada" in view.turns[0] and "5.50–   7.00s" in view.turns[1]


class _Rewindowing:
    """A stream like the teacher's: re-embeds its window per call, no encoded frames to pool."""

    def __init__(self, inner):
        self._inner, self.compute_seconds = inner, 0.0

    seconds = property(lambda self: self._inner.seconds)

    def reset(self):
        self._inner.reset()

    def push(self, audio):
        self._inner.push(audio)

    def embedding(self):
        return self._inner.embedding()


class _CountingModel:
    def __init__(self, inner):
        self._inner, self.offline_calls = inner, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def stream(self, window_s=3.0):
        return _Rewindowing(self._inner.stream(window_s))

    def embed(self, *args, **kwargs):
        self.offline_calls += 1
        return self._inner.embed(*args, **kwargs)


def test_a_stream_with_no_frames_to_pool_is_change_tested_offline(untrained, conversation):
    path, _ = conversation
    model = _CountingModel(untrained)
    cfg = Config().with_overrides(**{"change.embedding": "stream", "change.min_pause_s": 0.0,
                                     "output.stats_interval_s": 86400})
    pipeline = Pipeline(model, FileSource(path), cfg, {})
    assert pipeline.change.settings.embedding == "offline"
    assert [e for e in pipeline.run() if e["event"] == "decision"]
    assert model.offline_calls > 0   # only the continuous test embeds (pause tests are off)
    assert Pipeline(untrained, FileSource(path), cfg, {}).change.settings.embedding == "stream"


class _RawScores(Pipeline):
    """The pipeline, keeping each hop's own cosines (before any smoothing) beside its events."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.raw = []

    def _hop(self, ev):
        from streamsv.scoring import cosine_scores

        d = super()._hop(ev)
        if d is not None:
            self.raw.append(cosine_scores(self.voice.embeddings[-1], self.centroids))
        return d


def test_by_default_a_decision_is_its_own_window_and_names_the_best_at_the_bar(untrained, speech_clips, conversation):
    """scoring.smoothing_hops 1 and min_margin 0 (docs/live-rooms.md, fifth pass): each decision's
    scores are its window's own cosines, and the best profile is named once it reaches the bar,
    however close a twin profile scores."""
    path, _ = conversation
    first = untrained.embed(speech_clips[0])
    twin = first + 0.01 * np.linalg.norm(first) * np.sin(np.arange(len(first)))
    cfg = Config().with_overrides(**{"scoring.threshold": 0.0, "output.stats_interval_s": 86400})
    pipeline = _RawScores(untrained, FileSource(path), cfg, {"first": first, "twin": twin})
    decisions = [e for e in pipeline.run() if e["event"] == "decision"]
    assert len(decisions) == len(pipeline.raw) >= 3
    for e, raw in zip(decisions, pipeline.raw):
        assert e["scores"] == pytest.approx(raw, abs=1e-4)
        assert abs(raw["first"] - raw["twin"]) < 0.05          # within the old margin of each other...
        assert e["accepted"] and e["speaker"] == max(raw, key=raw.get)   # ...and named all the same
    smoothed = _RawScores(untrained, FileSource(path), cfg.with_overrides(**{"scoring.smoothing_hops": 3}),
                          {"first": first, "twin": twin})
    later = [e for e in smoothed.run() if e["event"] == "decision"]
    assert any(e["scores"] != pytest.approx(raw, abs=1e-4) for e, raw in zip(later, smoothed.raw))   # 3 hops do average


def test_a_decisions_block_encodes_at_most_a_hop_of_audio(untrained, speech_clips, conversation):
    # A voice's first decision waits for min_speech_s (1 s, two hops): its audio goes to the model
    # as it comes, so the block that decides pushes a hop's worth like every other one. Without
    # that the first decision's block pushed the whole second.
    from streamsv.bench import BLOCK_S, TimedSource
    from streamsv.features import SAMPLE_RATE

    path, _ = conversation
    audio, _ = sf.read(path, dtype="float32")
    cfg = Config().with_overrides(**{"output.stats_interval_s": 86400})
    source = TimedSource(audio)
    pipe = Pipeline(untrained, source, cfg, profiles_for(untrained, speech_clips))
    pushed: dict[int, float] = {}
    push = pipe.stream.push

    def counted_push(samples):
        block = source.stats.chunks
        pushed[block] = pushed.get(block, 0.0) + len(samples) / SAMPLE_RATE
        push(samples)

    pipe.stream.push = counted_push
    decided = [source.stats.chunks for e in pipe.run() if e["event"] == "decision"]
    assert len(decided) >= 3 and cfg.scoring.min_speech_s > cfg.scoring.hop_s
    assert max(pushed.get(block, 0.0) for block in decided) <= cfg.scoring.hop_s + BLOCK_S + 1e-6
    assert max(pushed.values()) >= cfg.scoring.hop_s   # the first second, in hop-sized pushes


def test_a_window_level_holds_the_voices_last_window():
    from streamsv.pipeline import WindowLevel

    level = WindowLevel(3.0)
    assert level.dbfs() is None
    t = np.arange(4 * SR) / SR
    loud, quiet = 0.1 * np.sin(2 * np.pi * 200 * t), 0.01 * np.sin(2 * np.pi * 200 * t[:SR])
    for audio in (loud, quiet):
        for i in range(0, len(audio), 400):   # 25 ms blocks: the window is 120 of them exactly
            level.add(audio[i:i + 400].astype(np.float32))
    # The last 3 s: 2 s of the loud sine (power 0.005) and 1 s of the quiet one (0.00005).
    assert level.dbfs() == pytest.approx(10 * np.log10((2 * 0.005 + 0.00005) / 3), abs=0.01)


def test_a_noise_floor_lowers_the_decisions_bar_by_the_windows_snr(untrained, speech_clips, conversation, tmp_path):
    """scoring.snr_slope: each decision's bar is its window's duration bar less the SNR shift, and
    the event carries both the bar and the SNR it came from."""
    path, _ = conversation
    audio, _ = sf.read(path, dtype="float32")
    noisy = tmp_path / "noisy.wav"
    sf.write(noisy, audio + (0.01 * np.random.default_rng(0).standard_normal(len(audio))).astype(np.float32), SR)
    profiles = profiles_for(untrained, speech_clips)

    def decisions(source, **overrides):
        cfg = Config().with_overrides(**{"output.stats_interval_s": 86400, **overrides})
        pipeline = Pipeline(untrained, FileSource(source), cfg, profiles)
        return [e for e in pipeline.run() if e["event"] == "decision"], pipeline.rule

    clean, rule = decisions(path)
    loud, _ = decisions(noisy)
    off, off_rule = decisions(noisy, **{"scoring.snr_slope": 0.0})
    assert len(clean) >= 3 and len(loud) >= 3
    assert np.median([e["snr_db"] for e in loud]) < np.median([e["snr_db"] for e in clean]) - 10
    for e in clean + loud:
        assert e["threshold"] == pytest.approx(rule.threshold_at(e["speech_s"], e["snr_db"]), abs=1e-4)
    assert any(e["threshold"] < rule.threshold_at(e["speech_s"]) - 0.02 for e in loud)   # noise: a lower bar
    for e in off:
        assert e["threshold"] == pytest.approx(off_rule.threshold_at(e["speech_s"]), abs=1e-4)
