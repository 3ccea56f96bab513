"""training/train.py: the augmentations and the loss split between labelled and unlabeled crops
(synthetic audio only: no shared data, no teacher)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")
pytestmark = pytest.mark.torch  # the training side: runs where torch is installed
from training import datasets  # noqa: E402
from training import train  # noqa: E402

SR = 16000


def _power_above(wave: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    return float(spectrum[np.fft.rfftfreq(len(wave), 1 / SR) > hz].sum() / spectrum.sum())


def test_trim_silence_cuts_the_pauses_around_the_word():
    rng = np.random.default_rng(0)
    word = (rng.standard_normal(SR // 2) * 0.2).astype(np.float32)
    hiss = (rng.standard_normal(SR) * 0.0005).astype(np.float32)  # -52 dB below the word
    trimmed = train.trim_silence(np.concatenate([hiss, word, hiss]))
    pad = int(train.TRIM_PAD_S * SR)
    assert len(word) <= len(trimmed) <= len(word) + 2 * pad + 2 * SR // 100
    assert len(train.trim_silence(word)) == len(word)


def test_telephone_band_removes_the_high_band_and_keeps_the_length():
    wave = (np.random.default_rng(1).standard_normal(SR) * 0.1).astype(np.float32)
    out = train.telephone_band(wave)
    assert out.shape == wave.shape and np.isfinite(out).all()
    assert _power_above(wave, 3800) > 0.4 and _power_above(out, 3800) < 0.02


def test_resample_by_shifts_the_pitch_by_the_factor():
    t = np.arange(2 * SR) / SR
    tone = np.sin(2 * np.pi * 200 * t)
    out = train.resample_by(tone, 1.25, SR)
    assert len(out) == SR
    peak = np.fft.rfftfreq(SR, 1 / SR)[np.argmax(np.abs(np.fft.rfft(out)))]
    assert peak == pytest.approx(250, abs=2)


def _vowel(f0: float, formant_hz: float, seconds: float = 2.0) -> np.ndarray:
    """A pulse train at f0 through one resonance at formant_hz: a crude vowel."""
    from scipy.signal import lfilter
    pulses = np.zeros(int(seconds * SR))
    pulses[:: int(SR / f0)] = 1.0
    r, theta = 0.97, 2 * np.pi * formant_hz / SR
    return lfilter([1.0], [1.0, -2 * r * np.cos(theta), r * r], pulses)


def _formant_and_pitch(wave: np.ndarray) -> tuple[float, float]:
    """The resonance of a 2-pole LPC fit, and the pitch from the autocorrelation's peak."""
    from scipy.linalg import solve_toeplitz
    middle = wave[SR // 4: -SR // 4]
    r = np.correlate(middle, middle, mode="full")[len(middle) - 1:]
    a = solve_toeplitz(r[:2], r[1:3])
    formant = float(np.abs(np.angle(np.roots([1.0, -a[0], -a[1]])[0])) * SR / (2 * np.pi))
    candidates = r[40:400]  # 40-400 Hz; the first lag near the highest peak, not its multiples
    lag = 40 + int(np.flatnonzero(candidates >= 0.9 * candidates.max())[0])
    return formant, SR / lag


@pytest.mark.parametrize("factor", [1.25, 0.8])  # about +-4 semitones
def test_keep_formants_moves_the_pitch_and_puts_the_formant_back(factor):
    source = _vowel(f0=125, formant_hz=800)
    shifted = train.resample_by(source, factor, int(len(source) / factor) - 1)
    kept = train.keep_formants(shifted, source, factor)
    assert kept.shape == shifted.shape and np.isfinite(kept).all()
    formant, pitch = _formant_and_pitch(source)
    moved_formant, moved_pitch = _formant_and_pitch(shifted)
    kept_formant, kept_pitch = _formant_and_pitch(kept)
    assert formant == pytest.approx(800, rel=0.02) and pitch == pytest.approx(125, rel=0.03)
    assert moved_formant == pytest.approx(800 * factor, rel=0.03)  # a resampling scales the vocal tract too
    assert kept_pitch == pytest.approx(moved_pitch, rel=0.03) == pytest.approx(125 * factor, rel=0.03)
    # most of the way back: the envelope is smoothed over ~300 Hz, so a sharp formant is not all restored
    assert abs(kept_formant - formant) < 0.4 * abs(moved_formant - formant)
    assert np.sqrt(np.mean(kept ** 2)) == pytest.approx(np.sqrt(np.mean(shifted ** 2)), rel=1e-6)


def test_window_target_weights_each_window_by_its_overlap():
    spans = np.array([[0, 100], [50, 150]])
    emb = np.eye(2, dtype=np.float32)
    np.testing.assert_allclose(train.window_target(spans, emb, 0, 50), [1, 0])
    np.testing.assert_allclose(train.window_target(spans, emb, 60, 100), [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
    left, right = train.window_target(spans, emb, 20, 120)  # 80 samples of the first, 70 of the second
    assert left / right == pytest.approx(80 / 70)
    assert train.window_target(spans, emb, 200, 300) is None


def test_cached_arrays_compute_once_per_utterance_list(tmp_path):
    utts = [datasets.Utterance("so/0", Path(f"/so/{i}"), "so") for i in range(3)]
    calls = []

    def compute():
        calls.append(1)
        return {"emb": np.arange(6, dtype=np.float32).reshape(3, 2), "first": np.array([0, 1, 2, 3])}

    first = train.cached_arrays(tmp_path / "t.npz", utts, compute)
    again = train.cached_arrays(tmp_path / "t.npz", utts, compute)
    assert len(calls) == 1 and set(again) == {"emb", "first"}
    np.testing.assert_array_equal(first["emb"], again["emb"])
    train.cached_arrays(tmp_path / "t.npz", utts[:2], compute)  # other utterances: computed again
    assert len(calls) == 2


def test_cache_keys_do_not_depend_on_where_the_data_folder_is(tmp_path, monkeypatch):
    keys = []
    for place in ("a", "b"):
        root = tmp_path / place / "data"
        (root / "so").mkdir(parents=True)
        monkeypatch.setenv("STREAMSV_DATA", str(root))
        keys.append(train.cache_keys([datasets.Utterance("so/0", root / "so" / "1.opus", "so")]))
    assert keys[0] == keys[1] == ["so/1.opus"]
    outside = train.cache_keys([datasets.Utterance("so/0", tmp_path / "x.opus", "so")])
    assert outside == [str((tmp_path / "x.opus").resolve())]


def test_teacher_windows_joined_keep_each_utterance_its_rows():
    a = train.TeacherWindows(np.ones((3, 2), np.float32), np.array([[0, 1], [1, 2], [2, 3]]), np.array([0, 1, 3]))
    b = train.TeacherWindows(np.full((2, 2), 5, np.float32), np.array([[0, 9], [9, 10]]), np.array([0, 2]))
    joined = train.TeacherWindows.joined([a, b])
    assert joined.first.tolist() == [0, 1, 3, 5]
    spans, emb = joined.of(2)
    assert spans.tolist() == [[0, 9], [9, 10]] and (emb == 5).all()
    assert joined.of(1)[0].tolist() == [[1, 2], [2, 3]]


def test_sampler_window_targets_are_the_crops_own_windows():
    # Each long clip has two windows (first half: axis 0, second half: axis 1) and a clip target
    # on axis 2: a crop's target mixes only its own windows; the clip's own target never shows.
    recipe = train.Recipe(batch=64, pitch_prob=0.5, min_crop_s=1.0, max_crop_s=1.2)
    rng = np.random.default_rng(3)
    utts = [datasets.Utterance(f"so/{i}", Path(f"/so/{i}"), "so") for i in range(4)]
    waves = [(rng.standard_normal(4 * SR) * 0.1).astype(np.float32) for _ in utts]  # longer than any crop
    targets = np.tile(np.eye(3, 256, 2, dtype=np.float32)[:1], (len(utts), 1))
    half = 2 * SR
    windows = train.TeacherWindows(np.tile(np.eye(2, 256, dtype=np.float32), (len(utts), 1)),
                                   np.tile([[0, half], [half, 4 * SR]], (len(utts), 1)),
                                   np.arange(0, 2 * len(utts) + 1, 2))
    sampler = train.CropSampler(utts, waves, targets, [np.zeros(SR, np.float32)], recipe,
                                np.zeros(train.N_MELS, np.float32), windows)
    sampler.corpora, sampler.corpus_p = ["so"], np.array([1.0])
    _, _, got = sampler.batch()
    got = got.numpy()
    assert np.allclose(got[:, 2:], 0) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert (got[:, 0] > 0.99).any() and (got[:, 1] > 0.99).any() and ((got[:, 0] > 0.2) & (got[:, 1] > 0.2)).any()


def _sampler(recipe: train.Recipe) -> train.CropSampler:
    rng = np.random.default_rng(0)
    utts = ([datasets.Utterance(f"so/{i % 3}", Path(f"/so/{i}"), "so") for i in range(9)]
            + [datasets.Utterance(f"asc/{i % 2}", Path(f"/asc/{i}"), "asc") for i in range(8)]
            + [datasets.Utterance(f"ls/{i}", Path(f"/ls/{i}"), "ls") for i in range(3)]
            + [datasets.Utterance(f"unl/w/{i}", Path(f"/unl/{i}"), "unl") for i in range(6)])
    waves = [(rng.standard_normal(int(rng.uniform(0.8, 4) * SR)) * 0.1).astype(np.float32) for _ in utts]
    targets = rng.standard_normal((len(utts), 256)).astype(np.float32)
    noises = [(rng.standard_normal(2 * SR) * 0.1).astype(np.float32)]
    return train.CropSampler(utts, waves, targets, noises, recipe, np.zeros(train.N_MELS, np.float32))


def test_pseudo_speakers_give_clustered_unlabeled_clips_one_voice_per_crowd():
    rng = np.random.default_rng(3)
    voices = rng.standard_normal((3, 256))
    # crowd "a": two voices of 8 clips and one stray clip; crowd "b": 8 clips of voice 0's direction
    members = [("a", 0)] * 8 + [("a", 1)] * 8 + [("a", 2)] + [("b", 0)] * 8
    utts = [datasets.Utterance(f"unl/{crowd}/{i}", Path(f"/unl/{i}"), "unl") for i, (crowd, _) in enumerate(members)]
    utts.append(datasets.Utterance("so/7", Path("/so/7"), "so"))
    targets = np.stack([voices[v] + 0.2 * rng.standard_normal(256) for _, v in members] + [voices[0]]).astype(np.float32)
    out = train.pseudo_speakers(utts, targets, max_distance=0.3)
    names = [u.speaker for u in out]
    assert len(set(names[:8])) == 1 and len(set(names[8:16])) == 1 and names[0] != names[8]
    assert names[16] == "unl/a/16"  # alone: no voice of its own, distillation only
    assert len(set(names[17:25])) == 1 and names[17] != names[0]  # another crowd is never the same voice
    assert names[25] == "so/7" and [u.path for u in out] == [u.path for u in utts]
    sampler = train.CropSampler(out, [np.zeros(SR, np.float32)] * len(out), targets, [np.zeros(SR, np.float32)],
                                train.Recipe(), np.zeros(train.N_MELS, np.float32))
    assert sampler.n_speakers == 3 + 1  # the three voices join the AAM beside the labelled speaker


def test_sampler_labels_only_labelled_speakers_and_is_seeded():
    recipe = train.Recipe(batch=48)
    a, b = _sampler(recipe), _sampler(recipe)
    assert a.n_speakers == 3 + 2 + 3  # unlabeled clips are no AAM classes
    mels, labels, targets = a.batch()
    mels_b, labels_b, _ = b.batch()
    assert mels.shape[0] == 48 and mels.shape[2] == train.N_MELS and targets.shape == (48, 256)
    assert torch.isfinite(mels).all()
    assert (labels == -1).any() and (labels >= 0).any() and labels.max() < a.n_speakers
    assert torch.equal(mels, mels_b) and torch.equal(labels, labels_b)
    assert torch.allclose(targets.norm(dim=1), torch.ones(48))


def test_aam_sees_only_labelled_crops():
    from training.model import ModelDimensions

    torch.manual_seed(0)
    recipe = train.Recipe()
    model = train.Distiller(ModelDimensions(), 4, recipe)
    mel = torch.randn(3, 60, train.N_MELS)
    targets = torch.nn.functional.normalize(torch.randn(3, 256), dim=1)
    _, aam_unlabeled = model(mel, torch.tensor([-1, -1, -1]), targets, 0.2)
    assert aam_unlabeled.item() == 0.0
    _, aam_mixed = model(mel, torch.tensor([2, -1, -1]), targets, 0.2)
    _, aam_first = model(mel[:1], torch.tensor([2]), targets[:1], 0.2)
    assert aam_mixed.item() == pytest.approx(aam_first.item(), rel=1e-5)


def test_the_relational_term_compares_each_crops_pattern_over_the_batch():
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(16, 256), dim=1)
    student = torch.randn(16, 192)
    assert train.relation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-5)
    # A different space with the teacher's pattern of cosines (a rotation, a scale) costs nothing.
    rotation, _ = torch.linalg.qr(torch.randn(256, 256))
    assert train.relation_loss(3.0 * teacher @ rotation, teacher).item() == pytest.approx(0.0, abs=1e-4)
    unrelated = train.relation_loss(student, teacher).item()
    assert 1.0 < unrelated < 3.0   # 2 (1 - correlation), correlation near 0
    assert train.relation_loss(student[:2], teacher[:2]).item() == 0.0   # too few crops for a pattern


def test_training_files_never_name_the_dev_only_set():
    # The research-use dev set must not be trained on: the training code does not even name it.
    assert datasets.OUT_OF_DOMAIN_SETS
    for name in datasets.OUT_OF_DOMAIN_SETS:
        assert name not in Path(train.__file__).read_text().lower()


def test_a_fine_tune_starts_from_the_given_weights_with_their_shape(tmp_path):
    from training.export_weights import npz_bytes
    from training.model import ModelDimensions, SpeakerEncoder
    from training.train import initial_student

    torch.manual_seed(0)
    source = SpeakerEncoder(ModelDimensions(width=32, n_blocks=1)).eval()
    path = tmp_path / "w.npz"
    path.write_bytes(npz_bytes(source, "0123456789abcdef", None, {}))
    model, fingerprint = initial_student(path)
    assert fingerprint == "0123456789abcdef" and model.cfg.width == 32 and model.cfg.n_blocks == 1
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    (tmp_path / "bad.npz").write_bytes(b"not weights")
    with pytest.raises(SystemExit, match="error: --init"):
        initial_student(tmp_path / "bad.npz")


def test_the_unlabeled_share_sets_the_batches_mix_and_keeps_the_labelled_ratios():
    default = _sampler(train.Recipe())
    assert dict(zip(default.corpora, default.corpus_p)) == pytest.approx(train.CORPUS_WEIGHTS)
    none = _sampler(train.Recipe(batch=64, unlabeled_share=0.0))
    shares = dict(zip(none.corpora, none.corpus_p))
    assert shares["unl"] == 0 and shares["so"] / shares["ls"] == pytest.approx(0.25 / 0.2)
    _, labels, _ = none.batch()
    assert (labels >= 0).all()
    half = _sampler(train.Recipe(unlabeled_share=0.5))
    assert dict(zip(half.corpora, half.corpus_p))["unl"] == pytest.approx(0.5)
    asc_kept = _sampler(train.Recipe(unlabeled_share=0.3, labelled_shares=(0.25, 0.25, 0.2)))
    assert dict(zip(asc_kept.corpora, asc_kept.corpus_p)) == pytest.approx({"so": 0.25, "asc": 0.25, "ls": 0.2, "unl": 0.3})


@pytest.mark.parametrize("flags, error", [
    (["--channel-prob", "2", "0", "0"], "--unlabeled-share must be in"),
    (["--unlabeled-share", "1"], "--unlabeled-share must be in"),
    (["--pitch-prob", "-0.1"], "--unlabeled-share must be in"),
    (["--weight-decay", "1.5"], "--weight-decay must be in"),
])
def test_settings_outside_their_range_are_one_error_line_before_anything_runs(flags, error, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["train", "--out", str(tmp_path / "run"), *flags])
    with pytest.raises(SystemExit, match=f"^error: {error}"):
        train.main()
    assert not (tmp_path / "run").exists()


def test_resize_blocks_appends_identity_blocks_or_keeps_the_first_ones():
    from training.model import ModelDimensions, SpeakerEncoder, resize_blocks

    torch.manual_seed(0)
    source = SpeakerEncoder(ModelDimensions(width=32, n_blocks=3, groups=2, chunk_frames=8)).eval()
    for p in source.parameters():  # trained-looking weights: every branch active
        p.data.add_(0.05 * torch.randn_like(p))
    deeper = resize_blocks(source, 5).eval()
    assert deeper.cfg.n_blocks == 5 and source.cfg.n_blocks == 3
    mel = torch.randn(2, 90, source.cfg.n_mels)
    with torch.no_grad():
        assert torch.allclose(deeper(mel), source(mel), atol=1e-5)
    # the new blocks are not frozen at the identity: their zeroed layers get a gradient
    deeper.train()
    deeper(mel).square().sum().backward()
    assert deeper.blocks[4].group_mix.weight.grad.abs().sum() > 0
    assert deeper.blocks[3].scale_out.parts[0].weight.grad.abs().sum() > 0
    # fewer: the first blocks and the head as they were, the mix renormalised over what is left
    shallower = resize_blocks(source, 2)
    assert shallower.cfg.n_blocks == 2 and len(shallower.blocks) == 2
    for key, value in shallower.state_dict().items():
        expected = source.state_dict()[key]
        assert torch.equal(value, expected[:2] if key == "head.layer_weights" else expected), key
    with pytest.raises(ValueError):
        resize_blocks(source, 0)


def test_a_soup_is_the_weighted_mean_of_fine_tunes_of_one_shape(tmp_path, monkeypatch):
    from training.export_weights import npz_bytes, read_checkpoint
    from training.model import ModelDimensions, SpeakerEncoder
    from training.soup import average_weights, main, parse_ingredient

    config = ModelDimensions(width=32, n_blocks=1)
    torch.manual_seed(0)
    a, b = SpeakerEncoder(config).eval(), SpeakerEncoder(config).eval()
    for name, model in (("a", a), ("b", b)):
        (tmp_path / f"{name}.npz").write_bytes(npz_bytes(model, f"{name}" * 16, None, {}))
    assert parse_ingredient("x/y.npz:0.25") == (Path("x/y.npz"), 0.25) and parse_ingredient("c:/y.pt") == (Path("c:/y.pt"), 1.0)
    monkeypatch.setattr("sys.argv", ["soup", str(tmp_path / "s.pt"), f"{tmp_path / 'a.npz'}:3", str(tmp_path / "b.npz")])
    main()
    soup, _, _, meta = read_checkpoint(tmp_path / "s.pt")
    key = "blocks.0.group_mix.weight"
    assert torch.allclose(soup.state_dict()[key], 0.75 * a.state_dict()[key] + 0.25 * b.state_dict()[key], atol=1e-6)
    assert [i["weight"] for i in meta["soup"]] == [3.0, 1.0]
    with pytest.raises(SystemExit, match="^error: .* exists"):
        main()
    with pytest.raises(ValueError, match="differ in shape"):
        average_weights([a.state_dict(), SpeakerEncoder(ModelDimensions(width=64, n_blocks=1)).state_dict()], [1, 1])
