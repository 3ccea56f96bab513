"""The calibrated confidence: fitting, its inverse (thresholds in either unit), storage keyed by
the model's fingerprint, the fallback without a calibration, and where it shows up."""
from __future__ import annotations

import json
import logging
import math
import os
import stat

import numpy as np
import pytest
import soundfile as sf

from conftest import dev_speakers, run_cli, speaker_folders, with_pauses
from streamsv import app, confidence
from streamsv.config import Config
from streamsv.errors import StreamsvError
from streamsv.pipeline import Pipeline
from streamsv.sources import FileSource


@pytest.fixture(autouse=True)
def fresh_missing_warnings():
    # load() warns once per model and process; each test here starts a fresh process's worth.
    confidence._missing_warned.clear()


SR = 16000
TRUE = (-4.0, 9.0, -3.0, 1.0)          # a duration-aware logistic to recover


def synthetic_trials(n: int, seed: int):
    """Trials drawn from TRUE: cosines and seconds, genuine with the model's probability (prior 1/2)."""
    rng = np.random.default_rng(seed)
    secs = rng.choice([1.0, 1.5, 2.0, 3.0], n)
    cos = rng.uniform(-0.2, 1.0, n)
    model = confidence.ConfidenceModel(TRUE, 3.0)
    p = np.array([model.confidence(c, s) for c, s in zip(cos, secs)])
    return cos, secs, (rng.random(n) < p).astype(int)


def test_fit_recovers_a_known_calibration_and_is_reliable_held_out():
    cos, secs, gen = synthetic_trials(20000, 0)
    m = confidence.fit(cos, secs, gen, 3.0)
    # Equal class weights shift the bias by the log prior ratio of the sample; the rest is recovered.
    ratio = math.log(gen.sum() / (len(gen) - gen.sum()))
    assert m.coef[0] + ratio == pytest.approx(TRUE[0], abs=0.3)
    assert np.allclose(m.coef[1:], TRUE[1:], atol=0.5)
    cos2, secs2, gen2 = synthetic_trials(20000, 1)
    rows = confidence.reliability([m.confidence(c, s) for c, s in zip(cos2, secs2)], gen2, balanced=True)
    assert confidence.expected_calibration_error(rows) < 0.03


def test_cosine_for_inverts_the_confidence_at_every_duration():
    m = confidence.ConfidenceModel(TRUE, 3.0)
    for s in (0.3, 1.0, 2.2, 3.0, 10.0):
        for p in (0.1, 0.5, 0.9, 0.99):
            assert m.confidence(m.cosine_for(p, s), s) == pytest.approx(p, abs=1e-9)
    # Short windows score lower for the same voice: the same confidence needs less cosine.
    assert m.cosine_for(0.9, 1.0) < m.cosine_for(0.9, 3.0)


def test_a_fit_that_would_fall_with_the_cosine_is_refused():
    cos = np.linspace(-1, 1, 200)
    with pytest.raises(StreamsvError, match="not increasing"):
        confidence.fit(cos, np.full(200, 3.0), (cos < 0).astype(int), 3.0)


def test_reliability_balanced_weights_classes_equally():
    rows = confidence.reliability([0.55] * 10, [1] + [0] * 9, balanced=True)
    assert rows[0]["genuine"] == pytest.approx(0.5) and rows[0]["n"] == 10
    assert confidence.reliability([0.55] * 10, [1] + [0] * 9)[0]["genuine"] == pytest.approx(0.1)


def test_the_shipped_model_has_a_calibration():
    from streamsv import load_embedder

    emb = load_embedder()
    m = confidence.load(emb.fingerprint)
    assert m is not None, "refit for the shipped model: python -m tools.fit_confidence"
    confs = [m.confidence(c, 3.0) for c in (-0.5, 0.2, 0.5, 0.8, 1.0)]
    assert all(0 <= c <= 1 for c in confs) and confs == sorted(confs)
    assert stat.S_IMODE(confidence.SHIPPED_PATH.stat().st_mode) & 0o044 == 0o044   # readable by a service user


def test_user_calibration_wins_and_a_damaged_one_falls_back(tmp_path, caplog):
    user = tmp_path / confidence.USER_FILE
    mine = confidence.ConfidenceModel((0.0, 5.0, 0.0, 0.0), 3.0, "mine", 10)
    confidence.save(user, "fp-a", mine)
    assert stat.S_IMODE(user.stat().st_mode) == 0o600
    assert confidence.load("fp-a", tmp_path) == mine
    with pytest.raises(StreamsvError, match="--force"):
        confidence.save(user, "fp-a", mine)
    confidence.save(user, "fp-b", mine)                        # other models' entries are kept
    assert set(json.loads(user.read_text())["models"]) == {"fp-a", "fp-b"}
    user.write_text(json.dumps({"format": confidence.FORMAT, "version": 1, "models": {"fp-a": mine.to_json()}}))
    user.chmod(0o666)                                          # anyone could have written it
    with caplog.at_level(logging.WARNING):
        assert confidence.load("fp-a", tmp_path) is None
    assert "writable by group or others" in caplog.text
    user.chmod(0o600)
    assert confidence.load("fp-a", tmp_path) == mine
    if os.geteuid() == 0:                                      # root can hand the file to someone else
        os.chown(user, 4321, -1)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert confidence.load("fp-a", tmp_path) is None
        assert "owned by another user (uid 4321)" in caplog.text
        os.chown(user, 0, -1)
    for damage in ("{not json", json.dumps({"format": "other"}), "x" * (confidence.MAX_FILE_BYTES + 1),
                   json.dumps({"format": confidence.FORMAT, "version": 1, "models": {"fp-a": {"coef": [1, "x"]}}})):
        user.write_text(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert confidence.load("fp-a", tmp_path) is None           # no shipped entry for fp-a either
        assert "ignoring it" in caplog.text and "confidence omitted" in caplog.text


def test_a_damaged_user_calibration_is_one_warning_not_a_crash(tmp_path, caplog):
    # Each of these escaped load() as RecursionError, OverflowError or ValueError (a traceback
    # at listen/verify start) instead of being ignored with a warning like other damage.
    user = tmp_path / confidence.USER_FILE
    entry = '{"format": "%s", "version": 1, "models": {"fp-a": %s}}'
    for damage in ("[" * 100_000,
                   entry % (confidence.FORMAT, '{"coef": [0, 5, 0, 0], "window_s": 3, "trials": 1e999}'),
                   entry % (confidence.FORMAT, '{"coef": [0, 5, 0, %s], "window_s": 3}' % ("9" * 400)),
                   entry % (confidence.FORMAT, '{"coef": [0, 5, 0, 0], "window_s": %s}' % ("9" * 5000))):
        user.write_text(damage)
        user.chmod(0o600)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert confidence.load("fp-a", tmp_path) is None
        assert "ignoring it" in caplog.text and "confidence omitted" in caplog.text
    user.unlink()
    os.mkfifo(user)                                            # never opened for a blocking read
    with caplog.at_level(logging.WARNING):
        assert confidence.load("fp-a", tmp_path) is None
    assert "not a regular file" in caplog.text


class Retrained:
    """The test model under another fingerprint: a model no calibration was fitted for."""

    def __init__(self, embedder, fingerprint: str) -> None:
        self._embedder = embedder
        self.fingerprint = fingerprint

    def __getattr__(self, name):
        return getattr(self._embedder, name)


def test_a_model_without_calibration_still_works(untrained, speech_clips, tmp_path, caplog):
    untrained = Retrained(untrained, "retrained-0000")
    audio, _ = with_pauses(speech_clips[:2], 1.0)
    path = tmp_path / "talk.wav"
    sf.write(path, audio, SR)
    cfg = Config().with_overrides(**{"profiles.dir": str(tmp_path / "p")})
    with caplog.at_level(logging.WARNING):
        pipe = Pipeline(untrained, FileSource(path), cfg, {"a": untrained.embed(speech_clips[0])})
    assert pipe.rule.calibration is None and "no confidence calibration for model retrained-0000" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = Pipeline(untrained, FileSource(path), cfg, {"a": untrained.embed(speech_clips[0])})
    assert again.rule.calibration is None and "no confidence calibration" not in caplog.text   # said once
    events = list(pipe.run())
    assert events[0]["event"] == "ready" and events[0]["confidence"] is False
    decisions = [e for e in events if e["event"] in ("decision", "speech_end") and e.get("score") is not None]
    assert decisions and all(e["confidence"] is None for e in decisions)
    strict = cfg.with_overrides(**{"scoring.min_confidence": 0.9})
    with pytest.raises(StreamsvError, match="min_confidence needs a confidence calibration"):
        Pipeline(untrained, FileSource(path), strict, {})


def test_confidence_in_events_and_thresholds_in_either_unit(untrained, speech_clips, tmp_path):
    audio, _ = with_pauses(speech_clips[:2], 1.0)
    path = tmp_path / "talk.wav"
    sf.write(path, audio, SR)
    fitted = confidence.ConfidenceModel((-4.0, 9.0, -3.0, 1.0), 3.0)
    confidence.save(tmp_path / "p" / confidence.USER_FILE, untrained.fingerprint, fitted)
    cfg = Config().with_overrides(**{"profiles.dir": str(tmp_path / "p"), "scoring.min_confidence": 0.8})
    pipe = Pipeline(untrained, FileSource(path), cfg, {"a": untrained.embed(speech_clips[0])})
    assert pipe.rule.threshold_at(2.0) == pytest.approx(fitted.cosine_for(0.8, 2.0))
    events = list(pipe.run())
    assert events[0]["confidence"] is True and events[0]["min_confidence"] == 0.8
    decisions = [e for e in events if e["event"] == "decision"]
    assert decisions
    for e in decisions:
        assert e["confidence"] == pytest.approx(fitted.confidence(e["score"], e["speech_s"]), abs=1e-3)
        assert e["accepted"] == (e["confidence"] >= 0.8 - 1e-3)         # one best profile: no margin at play


@pytest.fixture
def shipped(monkeypatch, untrained_cli):
    from streamsv import load_embedder

    emb = load_embedder()
    monkeypatch.setattr(app, "load_model", lambda *_: emb)
    return emb


def test_verify_shows_confidence_and_accepts_in_either_unit(capsys, shipped, speech_clips, tmp_path):
    paths = []
    for i, c in enumerate(speech_clips):
        paths.append(tmp_path / f"c{i}.wav")
        sf.write(paths[-1], c, SR)
    assert run_cli(capsys, "enroll", "alice", "--from", str(paths[0]), str(paths[1]))[0] == 0
    code, out, err = run_cli(capsys, "verify", "alice", str(paths[2]), "--json")
    res = json.loads(out)
    assert 0 <= res["confidence"] <= 1 and code == (0 if res["accepted"] else 1)
    code, out, _ = run_cli(capsys, "verify", "alice", str(paths[2]), "--min-confidence", "0.999999")
    assert code == 1 and "confidence" in out and "(min confidence 1.00)" in out
    code, out, _ = run_cli(capsys, "verify", "alice", str(paths[2]), "--min-confidence", "0.01")
    assert code == 0
    code, _, err = run_cli(capsys, "verify", "nobody", str(paths[2]))
    assert code == 2 and err.strip().endswith("enrolled: alice")


def test_calibrate_save_refits_on_your_recordings(capsys, shipped, tmp_path):
    spk = dev_speakers()[:2]
    if len(spk) < 2:
        pytest.skip("needs ../shared/data (speechocean762 dev speakers)")
    root = speaker_folders(tmp_path / "mine", spk, 5)
    code, out, err = run_cli(capsys, "calibrate", str(root), "--save")
    assert code == 0, err
    assert "| confidence bin |" in out and "saved the confidence calibration" in out
    user = tmp_path / "profiles" / confidence.USER_FILE
    assert confidence.load(shipped.fingerprint, tmp_path / "profiles").fitted_on.startswith("streamsv calibrate")
    assert stat.S_IMODE(user.stat().st_mode) == 0o600
    code, _, err = run_cli(capsys, "calibrate", str(root), "--save")
    assert code == 2 and "--force" in err


def test_a_private_calibration_makes_its_new_folder_owner_only(tmp_path):
    import os
    import stat

    from streamsv import confidence

    model = confidence.ConfidenceModel((0.0, 10.0, 0.0, 0.0), 3.0)
    old = os.umask(0o022)
    try:
        path = confidence.save(tmp_path / "new" / "profiles" / "calibration.json", "fp", model)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and stat.S_IMODE(path.stat().st_mode) == 0o600
