"""The event schema (streamsv/events.py): what the pipeline emits is what the schema says, key for
key and in order, and the JSON-line form is the compact one consumers parse."""
from __future__ import annotations

import json
import math
import typing

import pytest
import soundfile as sf

from conftest import with_pauses
from streamsv import events
from streamsv.config import Config
from streamsv.pipeline import Pipeline
from streamsv.sources import FileSource

SR = 16000
SCHEMA = {"ready": events.ReadyEvent, "speech_start": events.SpeechStartEvent, "decision": events.DecisionEvent,
          "speaker_change": events.SpeakerChangeEvent, "speech_end": events.SpeechEndEvent,
          "level": events.LevelEvent, "stats": events.StatsEvent, "profiles_reloaded": events.ProfilesReloadedEvent}


def keys_of(kind: str) -> list[str]:
    return list(typing.get_type_hints(SCHEMA[kind]))


def test_every_kind_has_a_typed_schema_named_after_it():
    assert set(SCHEMA) == set(events.KINDS)
    for kind, schema in SCHEMA.items():
        assert typing.get_args(typing.get_type_hints(schema)["event"]) == (kind,)


def test_constructors_round_and_keep_the_schema_order():
    d = events.decision(1.23456, "ada", True, 0.812345678, 0.9, {"bob": 0.1234567, "ada": 0.812345678},
                        2.9999, 12.3456, 3.21987, 0.4412345, 18.3)
    assert list(d) == keys_of("decision")
    assert d["threshold"] == 0.4412 and d["snr_db"] == 18.3
    assert d["t"] == 1.235 and d["score"] == 0.8123 and d["speech_s"] == 3.0
    assert list(d["scores"]) == ["ada", "bob"] and d["scores"]["bob"] == 0.1235      # sorted by name
    assert d["latency_ms"] == 12.35 and d["compute_ms"] == 3.22
    # No profiles: decide() gives a NaN best score; the event says null, not NaN (invalid JSON).
    empty = events.decision(1.0, None, False, math.nan, None, {}, 1.0, 1.0, 1.0, 0.48, None)
    assert empty["score"] is None and "NaN" not in events.to_json_line(empty)
    end = events.speech_end(5.0, 4.5, 0.5, 0)
    assert list(end) == keys_of("speech_end")
    assert (end["speaker"], end["accepted"], end["score"], end["confidence"], end["scores"]) == (None, False, None, None, {})
    stats = events.stats(2.0, True, 3.0, 2.0, 1, 0, 2, 1, [10.0, 20.0], [1.0, 3.0], 0.5, 0, 0, 0.0)
    assert list(stats) == keys_of("stats")
    assert stats["latency_p50_ms"] == 15.0 and stats["compute_p95_ms"] == 2.9 and stats["rtf"] == 0.25
    no_audio = events.stats(0.0, False, 0.1, 0.0, 0, 0, 0, 0, [], [], 0.0, 0, 0, 0.0)
    assert no_audio["rtf"] is None and no_audio["latency_p95_ms"] is None
    assert list(events.level(1.0, -20.04, 0.51234)) == keys_of("level")
    assert list(events.speaker_change(3.0, 2.5, 0.2)) == keys_of("speaker_change")
    assert list(events.profiles_reloaded(1.0, ["b", "a"], 2, 0.5, None, 0.05, 0.1)) == keys_of("profiles_reloaded")


def test_json_line_is_compact_and_round_trips():
    ev = events.speech_start(1.5)
    assert events.to_json_line(ev) == '{"event":"speech_start","t":1.5}'
    d = events.decision(1.0, None, False, 0.3, None, {"a": 0.3}, 1.0, 1.0, 1.0, 0.48, None)
    assert json.loads(events.to_json_line(d)) == d


@pytest.fixture(scope="module")
def stream(untrained, speech_clips, tmp_path_factory):
    audio, _ = with_pauses(speech_clips, pause_s=1.0)
    path = tmp_path_factory.mktemp("ev") / "talk.wav"
    sf.write(path, audio, SR)
    cfg = Config().with_overrides(**{"output.stats_interval_s": 0.001})
    pipe = Pipeline(untrained, FileSource(path), cfg, {"a": untrained.embed(speech_clips[0])}, level_interval_s=0.25)
    out = []
    for ev in pipe.run():
        out.append(ev)
        if ev["event"] == "decision" and len(out) < 40:
            pipe.request_reload()
    return out


def test_what_the_pipeline_emits_is_the_schema_key_for_key(stream):
    seen = {e["event"] for e in stream}
    # A speaker change needs two voices in one segment: its keys are checked through the constructor above.
    assert seen >= set(events.KINDS) - {"speaker_change"}
    for e in stream:
        # Every required key, and an optional one (speech_start's "continues") only in its place.
        assert list(e) == [k for k in keys_of(e["event"]) if k in e], e
        assert SCHEMA[e["event"]].__required_keys__ <= set(e), e
        json.loads(events.to_json_line(e))


def test_turn_filter_keeps_turn_events_and_label_changes(stream):
    kept = list(events.turn_events(stream))
    kinds = [e["event"] for e in kept]
    assert "level" not in kinds and kinds[0] == "ready" and kinds[-1] == "stats" and kept[-1]["final"]
    assert sum(1 for e in kept if e["event"] == "stats") == 1          # periodic stats are left out
    assert kinds.count("speech_start") == kinds.count("speech_end") >= 2
    assert "profiles_reloaded" in kinds


def test_turn_filter_repeats_no_label_after_a_continuing_start():
    ada = {"event": "decision", "speaker": "ada"}
    stream = [events.speech_start(0.0), {**ada, "t": 1.0}, {"event": "speech_end", "t": 1.2},
              events.speech_start(1.5, 0.3), {**ada, "t": 2.5}, {"event": "speech_end", "t": 3.0},
              events.speech_start(4.5), {**ada, "t": 5.5}]
    kept = [e["t"] for e in events.turn_events(stream) if e["event"] == "decision"]
    assert kept == [1.0, 5.5]  # the bridged segment's ada is the same turn's label


def test_a_speech_start_that_continues_the_voice_adds_its_fields_after_t():
    # change.bridge_s: the same turn unless a speaker_change follows. Additive: a plain start is unchanged.
    ev = events.speech_start(2.0, 0.4321)
    assert list(ev) == keys_of("speech_start") and ev["continues"] is True and ev["gap_s"] == 0.432
    assert events.to_json_line(ev) == '{"event":"speech_start","t":2.0,"continues":true,"gap_s":0.432}'
    assert events.SpeechStartEvent.__optional_keys__ == {"continues", "gap_s"}
    assert list(events.speech_start(2.0)) == ["event", "t"]
