"""FROZEN BASELINE, not the daemon: the numpy runtime streamsv ran before ONNX Runtime (issue 11),
kept only so that `streamsv bench --variant numpy-baseline` measures it beside the ONNX graphs in
one run. It is not imported by the package at run time, not maintained, and runs only the weights
beside it (baseline/student.npz, format 1). Delete it with that file once the comparison has
served. Below, its original description.

The runtime encoder: the trained SV-Mixer student in numpy, one streaming step per push.

The function of ``training.model.SpeakerEncoder`` (tests hold the two to cosine >= 0.9999), with
the work of a streaming step rearranged for a small CPU:

- no torch: ``import torch`` alone takes ~2.3 s and ~200 MB here, more than the daemon's whole
  start-up budget, and a streaming step in torch is bound by per-op overhead, not arithmetic;
- grouped linears are batched matmuls over their groups (a block-diagonal dense matrix would
  do four times the arithmetic);
- the chunked token mixing runs in absolute time: each block keeps the inputs and hidden
  activations of the unfinished chunk, and one (cached) gather builds every block's mixing
  matrices for a step's new frames, so history is never recomputed and a step has no branches;
- the affine parts of the norms that feed only linear maps are folded into those maps;
- GELU in its tanh form by default (8 passes over the data instead of 19), see DEFAULT_ACTIVATION.

Shapes are (frames, channels); the state of one stream is an ``EncoderState`` that ``encode``
advances in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping

import numpy as np

FRAMES_PER_SECOND = 50  # after the stem: 20 ms frames
MAX_STEP_FRAMES = 64  # longer pushes are split: the token-mixing matrices grow with the step squared
LAYER_NORM_EPS = 1e-5
STATS_VAR_FLOOR = 1e-5

# Abramowitz & Stegun 7.1.26 for the normal tail: P(N(0,1) > a) ~ poly(t) * exp(-a^2 / 2) with
# t = 1 / (1 + p a / sqrt 2), |error| < 1e-7; constants pre-scaled so no pass is spent on them.
_TAIL_P = np.float32(0.3275911 / np.sqrt(2))
_TAIL_POLY = tuple(np.float32(c / 2) for c in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU to float32 precision; numpy has no erf of its own.

    x * Phi(x) = relu(x) - |x| * P(N(0,1) > |x|)."""
    a = np.abs(x)
    t = a * _TAIL_P
    t += 1
    np.reciprocal(t, out=t)
    tail = _TAIL_POLY[0] * t
    for c in _TAIL_POLY[1:]:
        tail += c
        tail *= t
    e = x * np.float32(-0.5)
    e *= x
    np.exp(e, out=e)
    tail *= e
    tail *= a
    out = np.maximum(x, 0)
    out -= tail
    return out


_TANH_FORM = (np.float32(-2 * np.sqrt(2 / np.pi)), np.float32(-2 * np.sqrt(2 / np.pi) * 0.044715))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """The tanh approximation of GELU (|error| < 5e-4), as x * sigmoid(2 k (x + 0.044715 x^3)):
    8 passes over the data instead of the exact form's 19."""
    e = x * x
    e *= _TANH_FORM[1]
    e += _TANH_FORM[0]
    e *= x
    np.minimum(e, np.float32(80), out=e)  # exp stays finite; x / huge -> 0 as it should
    np.exp(e, out=e)
    e += 1
    return x / e


ACTIVATIONS = {"exact": gelu, "tanh": gelu_tanh}
# The tanh form by default: 12-18% less time per hop, and the same EER to two decimals on the three
# dev sets (docs/performance.md); "exact" computes the trained function to float32 precision.
DEFAULT_ACTIVATION = "tanh"


def standardize(x: np.ndarray) -> np.ndarray:
    """LayerNorm without its affine part (folded into the next layer where one follows)."""
    # Means as matrix-vector products: several times faster than ndarray.mean on rows this short.
    average = np.full(x.shape[-1], 1 / x.shape[-1], np.float32)
    centred = x - (x @ average)[..., None]
    centred *= np.reciprocal(np.sqrt(np.square(centred) @ average + np.float32(LAYER_NORM_EPS)))[..., None]
    return centred


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    y = standardize(x)
    y *= weight
    y += bias
    return y


@lru_cache(maxsize=16)
def _lower_ones(n: int) -> np.ndarray:
    return np.tril(np.ones((n, n), np.float32))


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def causal_depthwise(x: np.ndarray, history: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel causal convolution; ``weight`` is (kernel, channels), ``history`` the last
    kernel-1 inputs. Returns outputs and the new history."""
    padded = np.concatenate([history, x])
    n, k = len(x), len(weight)
    y = padded[0:n] * weight[0]
    for j in range(1, k):
        y += padded[j:j + n] * weight[j]
    y += bias
    return y, padded[len(padded) - (k - 1):]


def depthwise_weights(arrays: Mapping[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """A torch depthwise Conv1d's weight (channels, 1, kernel) as (kernel, channels), and its bias."""
    return np.ascontiguousarray(arrays[f"{name}.weight"][:, 0].T), arrays[f"{name}.bias"]


class Linear:
    """y = x W + b with W stored (in, out)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], name: str):
        self.weight = np.ascontiguousarray(arrays[f"{name}.weight"].T)
        self.bias = np.ascontiguousarray(arrays[f"{name}.bias"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight
        y += self.bias
        return y


class GroupLinear:
    """The model's GroupLinear on grouped activations: (groups, frames, in/g) -> (groups, frames, out/g)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], name: str, groups: int):
        self.weight = np.stack([arrays[f"{name}.parts.{g}.weight"].T for g in range(groups)])
        self.bias = np.stack([arrays[f"{name}.parts.{g}.bias"][None] for g in range(groups)])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight
        y += self.bias
        return y

    def absorb_affine(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Fold a per-channel ``x * scale + shift`` applied to the input into this layer."""
        groups, size = len(self.weight), self.weight.shape[1]
        scale, shift = scale.reshape(groups, size, 1), shift.reshape(groups, 1, size)
        self.bias = self.bias + shift @ self.weight
        self.weight = np.ascontiguousarray(self.weight * scale)


def to_groups(x: np.ndarray, groups: int) -> np.ndarray:
    return x.reshape(len(x), groups, x.shape[1] // groups).transpose(1, 0, 2)


def from_groups(x: np.ndarray) -> np.ndarray:
    return x.transpose(1, 0, 2).reshape(x.shape[1], -1)


@dataclass
class BlockState:
    wide: np.ndarray  # last conv_kernel-1 inputs of the wide local convolution
    narrow: np.ndarray  # last 2 inputs of the narrow one
    mix_inputs: np.ndarray  # last chunk-1 token-mixing inputs and hidden activations
    mix_hidden: np.ndarray
    total: np.ndarray  # running sum of block inputs (the utterance mean's numerator)
    half_pending: np.ndarray  # the unpaired frame when an odd number of frames has been seen
    half_last: np.ndarray  # the latest complete pair's half-rate output


@dataclass
class EncoderState:
    mel_pending: np.ndarray  # an unpaired 10 ms log-mel frame (or none)
    stem_conv: np.ndarray
    blocks: list[BlockState]
    frames: int = 0  # 20 ms frames encoded so far


@dataclass
class StepPlan:
    """What every block shares in one step of ``n`` new frames after ``start`` frames."""

    mix_in: np.ndarray  # (blocks, n, history + n): token-mixing matrices over [history; new]
    mix_out: np.ndarray
    bias_in: np.ndarray  # (blocks, n, 1)
    bias_out: np.ndarray
    mean_weights: np.ndarray  # (n, n): causal running mean of the new frames
    prior_weight: np.ndarray  # (n, 1): weight of the running sum before the step
    half_index: np.ndarray  # which half-rate output each new frame takes
    odd: bool  # a frame is waiting for its pair


class MixerBlock:
    def __init__(self, arrays: Mapping[str, np.ndarray], prefix: str, cfg: dict, gelu: Callable = gelu):
        g = cfg["groups"]
        self.groups, self.gelu = g, gelu
        norm = {n: (arrays[f"{prefix}.norm_{n}.weight"], arrays[f"{prefix}.norm_{n}.bias"]) for n in ("lgm", "msm", "gcm")}
        self.norm_lgm = norm["lgm"]
        self.wide = depthwise_weights(arrays, f"{prefix}.local_wide.conv")
        self.narrow = depthwise_weights(arrays, f"{prefix}.local_narrow.conv")
        self.utterance = Linear(arrays, f"{prefix}.utterance_mix.proj")
        # The MSM and GCM norms feed only linear maps (pair averaging commutes with an affine map):
        # their affine parts are folded into those layers.
        self.full_rate = GroupLinear(arrays, f"{prefix}.full_rate", g)
        self.half_rate = GroupLinear(arrays, f"{prefix}.half_rate.fn", g)
        self.full_rate.absorb_affine(*norm["msm"])
        self.half_rate.absorb_affine(*norm["msm"])
        self.scale_out = GroupLinear(arrays, f"{prefix}.scale_out", g)
        self.channel_in = GroupLinear(arrays, f"{prefix}.channel_in", g)
        self.channel_in.absorb_affine(*norm["gcm"])
        self.channel_out = GroupLinear(arrays, f"{prefix}.channel_out", g)
        self.group_mix = Linear(arrays, f"{prefix}.group_mix")

    def new_state(self, width: int, history: int) -> BlockState:
        zeros = lambda n: np.zeros((n, width), np.float32)  # noqa: E731
        return BlockState(zeros(len(self.wide[0]) - 1), zeros(len(self.narrow[0]) - 1), zeros(history), zeros(history),
                          np.zeros(width, np.float32), np.zeros(width, np.float32), np.zeros((self.groups, 1, width // self.groups), np.float32))

    def step(self, x: np.ndarray, s: BlockState, plan: StepPlan, index: int) -> np.ndarray:
        history = len(s.mix_inputs)
        # Local-Global Mixing
        u = layer_norm(x, *self.norm_lgm)
        local, s.wide = causal_depthwise(u, s.wide, *self.wide)
        local, s.narrow = causal_depthwise(self.gelu(local), s.narrow, *self.narrow)
        inputs = np.concatenate([s.mix_inputs, u])
        hidden = plan.mix_in[index] @ inputs
        hidden += plan.bias_in[index]
        hidden = self.gelu(hidden)
        hiddens = np.concatenate([s.mix_hidden, hidden])
        chunk = plan.mix_out[index] @ hiddens
        chunk += plan.bias_out[index]
        s.mix_inputs, s.mix_hidden = inputs[len(inputs) - history:], hiddens[len(hiddens) - history:]
        utterance = self.utterance(plan.mean_weights @ u + plan.prior_weight * s.total)
        s.total = s.total + u.sum(axis=0)
        local += chunk
        local += utterance
        x = local + x

        # Multi-Scale Mixing, on grouped activations
        u = standardize(x)
        frames = np.concatenate([s.half_pending[None], u]) if plan.odd else u
        pairs = len(frames) // 2
        pooled = (frames[0:2 * pairs:2] + frames[1:2 * pairs:2]) * np.float32(0.5)
        outputs = np.concatenate([s.half_last, self.half_rate(to_groups(pooled, self.groups))], axis=1)
        s.half_pending, s.half_last = frames[-1], outputs[:, -1:]
        mixed = self.full_rate(to_groups(u, self.groups))
        mixed += outputs[:, plan.half_index]
        x = x + from_groups(self.scale_out(self.gelu(mixed)))

        # Group Channel Mixing
        u = to_groups(standardize(x), self.groups)
        return x + self.group_mix(from_groups(self.channel_out(self.gelu(self.channel_in(u)))))


class Encoder:
    """The student in inference form. ``encode`` maps log-mel frames to per-frame head inputs,
    advancing a stream's state; ``pool`` turns a window of them into a raw embedding."""

    def __init__(self, arrays: Mapping[str, np.ndarray], config: dict, activation: str = DEFAULT_ACTIVATION):
        if config.get("arch", "mixer") != "mixer":
            raise ValueError(f"the numpy runtime runs the SV-Mixer only, not {config.get('arch')!r}")
        a = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
        self.gelu = ACTIVATIONS[activation]
        self.width, self.chunk = config["width"], config["chunk_frames"]
        self.history = self.chunk - 1  # the most frames an unfinished chunk can hold before a step
        self.mel_mean, self.mel_std = a["stem.mel_mean"], a["stem.mel_std"]
        self.stem_stack, self.stem_out = Linear(a, "stem.stack"), Linear(a, "stem.out")
        self.stem_conv = depthwise_weights(a, "stem.conv.conv")
        self.blocks = [MixerBlock(a, f"blocks.{i}", config, self.gelu) for i in range(config["n_blocks"])]
        causal = np.tril(np.ones((self.chunk, self.chunk), np.float32))
        self.mix_w1 = np.stack([a[f"blocks.{i}.chunk_mix.w1"] * causal for i in range(len(self.blocks))])
        self.mix_w2 = np.stack([a[f"blocks.{i}.chunk_mix.w2"] * causal for i in range(len(self.blocks))])
        self.mix_b1 = np.stack([a[f"blocks.{i}.chunk_mix.b1"] for i in range(len(self.blocks))])
        self.mix_b2 = np.stack([a[f"blocks.{i}.chunk_mix.b2"] for i in range(len(self.blocks))])
        # Built once for every offset (~9 MB here) so that no step pays for a gather.
        self._mixing = [self._token_mixing(offset) for offset in range(self.chunk)]
        self.layer_weights = softmax(a["head.layer_weights"], axis=0)
        self.head_norm = (a["head.norm.weight"], a["head.norm.bias"])
        self.attention_in, self.attention_out = Linear(a, "head.attention.0"), Linear(a, "head.attention.2")
        self.stats_norm = (a["head.stats_norm.weight"], a["head.stats_norm.bias"])
        self.proj = Linear(a, "head.proj")

    def new_state(self) -> EncoderState:
        return EncoderState(
            mel_pending=np.zeros((0, len(self.mel_mean)), np.float32),
            stem_conv=np.zeros((len(self.stem_conv[0]) - 1, self.width), np.float32),
            blocks=[b.new_state(self.width, self.history) for b in self.blocks])

    def encode(self, mel: np.ndarray, state: EncoderState) -> tuple[np.ndarray, np.ndarray]:
        """Log-mels (frames, n_mels) -> (features, attention logits), both (frames/2, width)."""
        frames = np.concatenate([state.mel_pending, (mel - self.mel_mean) / self.mel_std])
        pairs = len(frames) // 2
        state.mel_pending = frames[2 * pairs:]
        if pairs == 0:
            empty = np.zeros((0, self.width), np.float32)
            return empty, empty
        y = self.stem_stack(frames[:2 * pairs].reshape(pairs, -1))
        y, state.stem_conv = causal_depthwise(y, state.stem_conv, *self.stem_conv)
        x = self.stem_out(self.gelu(y))
        features, logits = [], []
        for start in range(0, len(x), MAX_STEP_FRAMES):
            f, lg = self._step(x[start:start + MAX_STEP_FRAMES], state)
            features.append(f)
            logits.append(lg)
        return np.concatenate(features), np.concatenate(logits)

    def _step(self, x: np.ndarray, state: EncoderState) -> tuple[np.ndarray, np.ndarray]:
        plan = self._plan(state.frames, len(x))
        mixed = np.zeros_like(x)
        for i, (block, s) in enumerate(zip(self.blocks, state.blocks)):
            x = block.step(x, s, plan, i)
            mixed += self.layer_weights[i] * x
        state.frames += len(x)
        mixed = layer_norm(mixed, *self.head_norm)
        return mixed, self.attention_out(np.tanh(self.attention_in(mixed)))

    def _plan(self, start: int, n: int) -> StepPlan:
        mix_in, mix_out, bias_in, bias_out = self._mixing[start % self.chunk]
        columns = self.history + n
        counts = np.arange(start + 1, start + n + 1, dtype=np.float32)[:, None]
        odd = start % 2 == 1
        return StepPlan(mix_in[:, :n, :columns], mix_out[:, :n, :columns], bias_in[:, :n], bias_out[:, :n],
                        mean_weights=_lower_ones(n) / counts, prior_weight=1 / counts,
                        half_index=(np.arange(int(odd), int(odd) + n) + 1) // 2, odd=odd)

    def _token_mixing(self, offset: int) -> tuple[np.ndarray, ...]:
        """Every block's token-mixing matrices and biases over [history; new] for the longest step
        starting at ``offset`` within a chunk; a step of n frames takes the top-left n x (history + n)
        corner, since a frame sees nothing after it."""
        n = MAX_STEP_FRAMES
        new = np.arange(offset, offset + n)
        seen = np.arange(offset - self.history, offset + n)  # [history; new], chunk 0 starting at 0
        visible = (seen[None] // self.chunk == new[:, None] // self.chunk) & (seen[None] <= new[:, None])
        rows, cols = (new % self.chunk)[:, None], (seen % self.chunk)[None]
        return (self.mix_w1[:, rows, cols] * visible, self.mix_w2[:, rows, cols] * visible,
                self.mix_b1[:, new % self.chunk, None], self.mix_b2[:, new % self.chunk, None])

    def pool(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Attentive statistics pooling over frames -> raw (un-normalised) embedding."""
        weights = softmax(logits, axis=0)
        mean = (weights * features).sum(axis=0)
        var = (weights * np.square(features)).sum(axis=0) - np.square(mean)
        stats = np.concatenate([mean, np.sqrt(np.maximum(var, np.float32(STATS_VAR_FLOOR)))])
        return self.proj(layer_norm(stats, *self.stats_norm))


# ---------------------------------------------------------------- adapter to streamsv.embedder (bench only)

BASELINE_WEIGHTS = __import__("pathlib").Path(__file__).with_name("student.npz")


class BaselineEncoder:
    """This runtime behind streamsv.embedder's encoder interface (new_state, encode, embed_window)."""

    def __init__(self, path=BASELINE_WEIGHTS):
        import json

        with np.load(path, allow_pickle=False) as data:
            self.config = json.loads(str(data["config"]))
            self.fingerprint = str(data["fingerprint"])
            arrays = {k[len("model."):]: data[k] for k in data.files if k.startswith("model.")}
        self.encoder = Encoder(arrays, self.config)
        self.num_parameters = sum(v.size for k, v in arrays.items() if k not in ("stem.mel_mean", "stem.mel_std"))

    def new_state(self) -> EncoderState:
        return self.encoder.new_state()

    def encode(self, mel: np.ndarray, state: EncoderState) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.encode(mel, state)

    def embed_window(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        raw = self.encoder.pool(features, logits)
        return (raw / max(float(np.linalg.norm(raw)), 1e-12)).astype(np.float32)


def load_baseline():
    """The frozen numpy runtime as a streamsv Embedder (same public API, same pipeline)."""
    from streamsv.embedder import Embedder

    enc = BaselineEncoder()
    return Embedder(enc, enc.fingerprint, enc.config, {"parameters": enc.num_parameters, "variant": "numpy-baseline"})
