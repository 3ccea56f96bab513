"""training/cohort.py: adaptive s-norm on hand-worked vectors, a synthetic channel shift it must
undo, the cohort's clip choice, and that no dev or urdu speaker can enter the cohort."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # training/ is training-side tooling (cohort imports eval and train lazily)
from training import cohort, datasets  # noqa: E402
from training import eval as ev  # noqa: E402

HAVE_DATA = datasets.data_root(required=False) is not None

# Four cohort entries on the unit circle; cosines are read off by hand.
COHORT_2D = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])


def test_top_k_stats_hand_worked():
    # (1, 0) against the cohort: cosines 1, 0, 0.6, 0.8 -> top 2: 1 and 0.8 -> mean 0.9, sd 0.1.
    # (0.6, 0.8): 0.6, 0.8, 1.0, 0.96 -> top 2: 1.0, 0.96 -> mean 0.98, sd 0.02.
    mu, sd = cohort.top_k_stats(np.array([[1.0, 0.0], [0.6, 0.8]]), COHORT_2D, top_k=2)
    assert mu == pytest.approx([0.9, 0.98])
    assert sd == pytest.approx([0.1, 0.02])


def test_as_norm_hand_worked():
    # cos((1,0), (0.6,0.8)) = 0.6 -> ((0.6 - 0.9) / 0.1 + (0.6 - 0.98) / 0.02) / 2 = (-3 - 19) / 2 = -11.
    left, right = np.array([[1.0, 0.0]]), np.array([[0.6, 0.8]])
    out = cohort.as_norm(left @ right.T, left, right, COHORT_2D, top_k=2)
    assert out.shape == (1, 1)
    assert out[0, 0] == pytest.approx(-11.0)


def test_top_k_out_of_range_is_refused():
    with pytest.raises(ValueError, match="top_k"):
        cohort.top_k_stats(np.ones((1, 2)), COHORT_2D, top_k=5)
    with pytest.raises(ValueError, match="top_k"):
        cohort.top_k_stats(np.ones((1, 2)), COHORT_2D, top_k=0)


def _channel_shift_set(rng, n_speakers=20, per_speaker=6, dim=64, shift=2.0, spread=0.8):
    """Half the speakers recorded through a 'channel' that adds one shared direction: raw cosines
    between different speakers of that half rise, so impostor trials there look like targets."""
    channel = rng.standard_normal(dim)
    channel /= np.linalg.norm(channel)
    emb, speakers = [], []
    for s in range(n_speakers):
        centre = rng.standard_normal(dim)
        centre /= np.linalg.norm(centre)
        for _ in range(per_speaker):
            x = centre + spread * rng.standard_normal(dim) / np.sqrt(dim)
            emb.append(x + (shift * channel if s % 2 else 0.0))
            speakers.append(f"s{s}")
    # Cohort: other voices through both channels, as the "channels" cohort is built.
    voices = rng.standard_normal((200, dim))
    voices /= np.linalg.norm(voices, axis=1, keepdims=True)
    cohort_matrix = np.concatenate([voices, voices + shift * channel])
    return np.array(emb), speakers, cohort_matrix


def test_as_norm_undoes_a_channel_shift_that_raw_cosine_cannot():
    emb, speakers, cohort_matrix = _channel_shift_set(np.random.default_rng(0))
    raw_scores, labels = ev.pairs_trials(emb, speakers)
    normed_scores, normed_labels = ev.pairs_trials(
        emb, speakers, lambda s, l, r: cohort.as_norm(s, l, r, cohort_matrix, top_k=20))
    assert (normed_labels == labels).all()
    raw, normed = ev.eer(raw_scores, labels), ev.eer(normed_scores, labels)
    assert raw > 0.15  # the shift really hurts raw cosine here (0.23 with seed 0)
    assert normed < raw / 10  # 0.003 with seed 0


def test_trials_with_an_identity_normaliser_equal_the_raw_trials():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((12, 8))
    speakers = [f"s{i // 4}" for i in range(12)]
    names = [f"{i:02d}.wav" for i in range(12)]
    identity = lambda s, l, r: s  # noqa: E731
    for raw, same in ((ev.pairs_trials(emb, speakers), ev.pairs_trials(emb, speakers, identity)),
                      (ev.enroll_trials(emb, speakers, names), ev.enroll_trials(emb, speakers, names, identity))):
        np.testing.assert_allclose(raw[0], same[0], atol=1e-12)
        assert (raw[1] == same[1]).all()


def _utts(counts):
    return [datasets.Utterance(f"c/{s}", Path(f"/x/{s}/{i:03d}.wav"), "c") for s, n in counts.items() for i in range(n)]


def test_cohort_clips_caps_each_speaker_spreads_picks_and_ignores_input_order():
    utts = _utts({"a": 17, "b": 3})
    picked = cohort.cohort_clips(list(reversed(utts)), per_speaker=5)
    a = [u.path.name for u in picked if u.speaker == "c/a"]
    assert a == ["000.wav", "004.wav", "008.wav", "012.wav", "016.wav"]  # first to last, evenly
    assert [u.path.name for u in picked if u.speaker == "c/b"] == ["000.wav", "001.wav", "002.wav"]
    assert cohort.cohort_clips(utts, per_speaker=5) == picked


def test_speaker_means_are_unit_and_in_first_appearance_order():
    emb = np.array([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    means = cohort.speaker_means(emb, ["x", "y", "y"])
    np.testing.assert_allclose(means, [[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.skipif(not HAVE_DATA, reason="shared data (../shared/data or $STREAMSV_DATA) not present")
def test_cohort_holds_only_labelled_training_speakers():
    clips = cohort.training_cohort_clips()
    speakers = {u.speaker for u in clips}
    assert len(speakers) == 369  # speechocean762 train 100 + ASC train 18 + LibriSpeech train 251
    assert not speakers & datasets.dev_speakers()
    assert {u.corpus for u in clips} == {"so", "asc", "ls"}
    assert max(sum(u.speaker == s for u in clips) for s in speakers) == cohort.CLIPS_PER_SPEAKER


def test_channel_audio_is_seeded_and_refuses_an_unknown_channel():
    wave = np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3
    noises = [np.random.default_rng(2).standard_normal(20000).astype(np.float32) * 0.1]
    for channel in cohort.CHANNELS:
        a = cohort.channel_audio(wave, channel, np.random.default_rng(3), noises)
        b = cohort.channel_audio(wave, channel, np.random.default_rng(3), noises)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and np.abs(a).max() <= 1.0 and len(a) > 0.8 * len(wave)
    assert not np.allclose(cohort.channel_audio(wave, "telephone", np.random.default_rng(3), noises), wave, atol=1e-3)
    with pytest.raises(ValueError, match="unknown cohort channel"):
        cohort.channel_audio(wave, "radio", np.random.default_rng(3), noises)


@pytest.mark.parametrize("args, message", [
    (["--snorm", "0"], "--snorm K must be at least 1"),
    (["--snorm", "50", "--cohort", "radio"], "unknown radio"),
])
def test_eval_refuses_bad_snorm_options_in_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ev.main(["--systems", "student", *args])
    assert str(exc.value).startswith("error: ") and message in str(exc.value)


def test_run_adds_an_snorm_row_beside_each_neural_system_and_none_for_mfcc(monkeypatch, tmp_path):
    utts = [datasets.Utterance(f"s/{i % 2}", tmp_path / f"{i % 2}" / f"{i}.opus", "s") for i in range(10)]
    monkeypatch.setattr(datasets, "dev_set", lambda name: utts)
    monkeypatch.setattr(datasets, "data_root", lambda required=True: tmp_path)
    monkeypatch.setattr(datasets, "read_audio", lambda path: np.zeros(1600, np.float32))
    rng = np.random.default_rng(0)
    cohort_matrix = rng.standard_normal((30, 4))
    asked = []
    monkeypatch.setattr(cohort, "cohort_embeddings", lambda system, kind, use_cache: asked.append((system.label, kind)) or cohort_matrix)
    fake = [ev.System(name, None, _embed_many=lambda waves: rng.standard_normal((len(waves), 4))) for name in ("a", "mfcc")]
    rows = ev.run(fake, ["x"], ["clean"], ["full"], use_cache=False, log=lambda *a: None, snorm_top_k=5, cohort_kind="clean")
    assert [r["system"] for r in rows] == ["a", "a+snorm", "mfcc"]
    assert asked == [("a", "clean")]
    with pytest.raises(ValueError, match="exceeds"):
        ev.run(fake, ["x"], ["clean"], ["full"], use_cache=False, log=lambda *a: None, snorm_top_k=31, cohort_kind="clean")
