"""The Resemblyzer teacher (training and evaluation only; never imported by the package).

resemblyzer is installed with --no-deps by tools/install-train-deps.sh (its declared
dependency on the old `webrtcvad` sdist would clash with `webrtcvad-wheels`).

Embeddings follow the README's reference figures: `VoiceEncoder.embed_utterance` on the
raw clip, without `preprocess_wav` (no volume normalisation, no silence trimming).
`Teacher.embed_batch` gives the same vectors, but runs the partial windows of many clips
through the LSTM as one batch, which is several times faster on CPU.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from streamsv.embedder import MIN_AUDIO_S  # the student's: below this no embedding
from streamsv.features import SAMPLE_RATE  # Resemblyzer's rate too
PARTIAL_RATE = 1.3  # partial windows per second: embed_utterance's default
MIN_COVERAGE = 0.75  # embed_utterance's default
MAX_BATCH_PARTIALS = 512  # bounds peak memory of one LSTM forward (512 x 160 x 40 floats in)


def _import_resemblyzer():
    try:
        with warnings.catch_warnings():
            # resemblyzer imports scipy.ndimage.morphology, deprecated in recent scipy.
            warnings.simplefilter("ignore", DeprecationWarning)
            import resemblyzer
            from resemblyzer import audio, hparams
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the teacher needs resemblyzer and librosa ({e}); run tools/install-train-deps.sh"
        ) from e
    return resemblyzer, audio, hparams


def available() -> bool:
    """True when resemblyzer (and its librosa dependency) can be imported."""
    try:
        _import_resemblyzer()
    except ImportError:
        return False
    return True


class Teacher:
    """Resemblyzer's VoiceEncoder on CPU, with a batched embed_utterance."""

    sample_rate = SAMPLE_RATE
    dim = 256
    fingerprint = "resemblyzer-0.1.4"  # profiles record which model made them

    def __init__(self) -> None:
        resemblyzer, self._audio, self._hp = _import_resemblyzer()
        self.encoder = resemblyzer.VoiceEncoder("cpu", verbose=False).eval()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.encoder.parameters())

    @property
    def macs_per_second(self) -> int:
        return teacher_macs_per_second(self.encoder)

    def embed(self, wave: np.ndarray) -> np.ndarray:
        """Exactly VoiceEncoder.embed_utterance on the raw 16 kHz clip."""
        with torch.inference_mode():
            return self.encoder.embed_utterance(np.asarray(wave, dtype=np.float32)).astype(np.float32)

    def stream(self, window_s: float = 3.0) -> "TeacherStream":
        """The student's streaming interface, done the teacher's way: re-embed the last window per call."""
        return TeacherStream(self, window_s)

    def partial_mels(self, wave: np.ndarray) -> np.ndarray:
        """The (n_partials, 160, 40) mel windows embed_utterance would feed the LSTM."""
        return self.partial_windows(wave)[1]

    def partial_windows(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each partial window's (start, stop) sample span in `wave` (stops clipped to its end),
        and the (n_partials, 160, 40) mel windows embed_utterance would feed the LSTM."""
        wave = np.asarray(wave, dtype=np.float32)
        wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wave), PARTIAL_RATE, MIN_COVERAGE)
        need = wav_slices[-1].stop
        spans = np.array([(s.start, min(s.stop, len(wave))) for s in wav_slices], dtype=np.int64)
        if need >= len(wave):
            wave = np.pad(wave, (0, need - len(wave)))
        mel = self._audio.wav_to_mel_spectrogram(wave)
        return spans, np.stack([mel[s] for s in mel_slices])

    def embed_windows(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every partial window of every clip: unit-norm embeddings (n_windows, 256), their sample
        spans (n_windows, 2), and where each clip's windows begin (len(waves) + 1 offsets).
        The mean of a clip's windows, normalised, is its embed_utterance vector."""
        spans, mels = zip(*(self.partial_windows(w) for w in waves)) if waves else ((), ())
        first = np.cumsum([0] + [len(s) for s in spans])
        emb = self.embed_partials(np.concatenate(mels)) if waves else np.zeros((0, self.dim), np.float32)
        return emb.astype(np.float32), (np.concatenate(spans) if waves else np.zeros((0, 2), np.int64)), first

    def embed_partials(self, mels: np.ndarray) -> np.ndarray:
        """Unit-norm partial embeddings for a (n, frames, 40) batch of mel windows."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(mels), MAX_BATCH_PARTIALS):
                out.append(self.encoder(torch.from_numpy(np.ascontiguousarray(mels[i : i + MAX_BATCH_PARTIALS]))).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_batch(self, waves: list[np.ndarray]) -> np.ndarray:
        """(len(waves), 256) utterance embeddings, equal to embed() per clip up to float rounding."""
        mels = [self.partial_mels(w) for w in waves]
        counts = [len(m) for m in mels]
        partials = self.embed_partials(np.concatenate(mels)) if mels else np.zeros((0, self.dim), np.float32)
        out = np.zeros((len(waves), self.dim), np.float32)
        start = 0
        for i, n in enumerate(counts):
            mean = partials[start : start + n].mean(axis=0)
            out[i] = mean / np.linalg.norm(mean)
            start += n
        return out


class TeacherStream:
    """Rolling-window teacher pipeline: push() only buffers, embedding() runs embed_utterance on
    the most recent window_s seconds (the LSTM is not incremental across windows)."""

    def __init__(self, teacher: Teacher, window_s: float):
        self._teacher = teacher
        self._max = int(window_s * SAMPLE_RATE)
        self.compute_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(0, np.float32)

    @property
    def seconds(self) -> float:
        return len(self._buf) / SAMPLE_RATE

    def push(self, audio: np.ndarray) -> None:
        started = time.perf_counter()
        self._buf = np.concatenate([self._buf, np.asarray(audio, np.float32)])[-self._max :]
        self.compute_seconds += time.perf_counter() - started

    def embedding(self) -> np.ndarray | None:
        if len(self._buf) < MIN_AUDIO_S * SAMPLE_RATE:
            return None
        started = time.perf_counter()
        vector = self._teacher.embed(self._buf)
        self.compute_seconds += time.perf_counter() - started
        return vector


def lstm_macs_per_frame(lstm: torch.nn.LSTM) -> int:
    """Multiply-accumulates of one LSTM time step: every input-to-gate and hidden-to-gate weight once.

    Counted from the weight shapes (4H x in and 4H x H per layer); the element-wise gate
    products are O(H) and left out.
    """
    return sum(p.numel() for name, p in lstm.named_parameters() if name.startswith("weight_"))


def teacher_macs_per_second(encoder=None, rate: float = PARTIAL_RATE) -> int:
    """Model MACs per second of audio for embed_utterance on a long clip.

    Each second holds `rate` partial windows of 160 frames (1.6 s at 100 frames/s), so the
    LSTM runs rate * 160 frames per second of audio (1.3 x overlap), plus one Linear per
    window. The mel front end (FFT + 40-band filterbank) is not counted.
    """
    if encoder is None:
        encoder = Teacher().encoder
    _, _, hp = _import_resemblyzer()
    frames_per_s = rate * hp.partials_n_frames
    per_frame = lstm_macs_per_frame(encoder.lstm)
    per_window = encoder.linear.weight.numel()
    return int(round(frames_per_s * per_frame + rate * per_window))


def teacher_stream_macs_per_second(window_s: float = 3.0, hop_s: float = 0.5, encoder=None) -> int:
    """Model MACs per second of audio when the whole window is re-embedded every hop."""
    if encoder is None:
        encoder = Teacher().encoder
    _, _, hp = _import_resemblyzer()
    _, mel_slices = encoder.compute_partial_slices(int(window_s * SAMPLE_RATE), PARTIAL_RATE, MIN_COVERAGE)
    per_window = len(mel_slices) * (hp.partials_n_frames * lstm_macs_per_frame(encoder.lstm) + encoder.linear.weight.numel())
    return int(round(per_window / hop_s))


if __name__ == "__main__":
    t = Teacher()
    print(f"teacher: {t.num_parameters} parameters, {t.macs_per_second / 1e6:.1f} MMAC per second of audio")
