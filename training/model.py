"""The streaming SV-Mixer student: an attention-free MLP speaker encoder.

After "SV-Mixer" (arXiv 2509.14136): each block is Local-Global Mixing -> Multi-Scale
Mixing -> Group Channel Mixing with pre-norm residuals, and the head pools a learnt
weighted sum of all block outputs. Unlike the paper's model (token mixing fixed to 149
frames), every temporal operation here is causal, so the model runs on a stream:

- local context: causal depthwise convolutions (state: the last k-1 inputs);
- global context: a token-mixing MLP inside fixed chunks of ``chunk_frames`` frames,
  lower-triangular so a half-filled chunk is already exact, plus a frame-to-utterance term
  from the causal running mean of the block input (state: running sum and count);
- multi-scale: a half-rate branch on frame pairs, each frame seeing the latest complete pair.

Every stateful module has ``forward(x, state) -> (y, state)`` with ``state=None`` at the
start of an utterance, so offline and streaming share one code path. Shapes are
(batch, frames, channels) throughout.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from streamsv.embedder import FRAMES_PER_SECOND, MODEL_FORMAT, Embedder  # the daemon's: one definition each
from streamsv.features import N_MELS

SMALL_CONV_FRAMES = 256  # below this many (batch x frames), convolve by hand


@dataclass
class ModelDimensions:
    """The torch network's shape (its own name: ``streamsv.config.ModelConfig`` is the yaml
    ``model:`` section). Travels as JSON in the exported graph's metadata (``config``)."""
    n_mels: int = N_MELS
    width: int = 192
    n_blocks: int = 6
    chunk_frames: int = 32  # token-mixing window: 0.64 s
    conv_kernel: int = 7
    groups: int = 4
    channel_expansion: int = 2
    attention_hidden: int = 128
    embedding_dim: int = 256
    arch: str = "mixer"  # "mixer" (SV-Mixer) or "transformer" (the ablation)
    heads: int = 4  # transformer only
    ffn_expansion: int = 4  # transformer only


State = Any


def chunk_causal(
    x: torch.Tensor, history: torch.Tensor | None, chunk: int, mix: Callable[[torch.Tensor, int], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a causal mixer inside fixed, non-overlapping chunks of frames.

    ``mix(inputs, start)`` gets the chunk's inputs so far (positions ``0..m-1``) and returns
    the outputs of positions ``start..m-1``; it must be causal. ``history`` holds the inputs of
    the unfinished chunk (None at utterance start). Returns outputs and the new history.
    """
    batch, frames, channels = x.shape
    if history is None:  # offline: all chunks in one batched call
        n_chunks = max(1, math.ceil(frames / chunk))
        padded = F.pad(x, (0, 0, 0, n_chunks * chunk - frames))
        y = mix(padded.reshape(batch * n_chunks, chunk, channels), 0)
        return y.reshape(batch, n_chunks * chunk, -1)[:, :frames], x[:, frames - frames % chunk:]
    outputs, i = [], 0
    while i < frames:
        start = history.shape[1]
        n = min(chunk - start, frames - i)
        inputs = torch.cat([history, x[:, i:i + n]], dim=1)
        outputs.append(mix(inputs, start))
        history = inputs if start + n < chunk else inputs[:, :0]
        i += n
    return (torch.cat(outputs, dim=1) if outputs else x[:, :0]), history


class GroupLinear(nn.Module):
    """A Linear layer split into independent channel groups (the paper's grouped 1x1 conv).

    Plain ``nn.Linear`` parts rather than one grouped einsum: as fast here, and dynamic
    int8 quantization applies to them."""

    def __init__(self, in_features: int, out_features: int, groups: int):
        super().__init__()
        self.parts = nn.ModuleList(nn.Linear(in_features // groups, out_features // groups) for _ in range(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.chunk(len(self.parts), dim=-1)
        return torch.cat([part(chunk) for part, chunk in zip(self.parts, chunks)], dim=-1)


class CausalDepthwiseConv(nn.Module):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.context = kernel - 1
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if x.shape[1] == 0:
            return x, state
        if state is None:
            state = x.new_zeros(x.shape[0], self.context, x.shape[2])
        padded = torch.cat([state, x], dim=1)
        if padded.shape[0] * padded.shape[1] <= SMALL_CONV_FRAMES:
            # A streaming step: oneDNN's convolution costs ~10x the arithmetic at this size.
            y = (padded.unfold(1, self.context + 1, 1) * self.conv.weight[:, 0]).sum(-1) + self.conv.bias
        else:
            y = self.conv(padded.transpose(1, 2)).transpose(1, 2)
        return y, padded[:, padded.shape[1] - self.context:]


class ChunkTokenMixing(nn.Module):
    """Token-mixing MLP across the frames of a chunk, lower-triangular to stay causal."""

    def __init__(self, chunk: int):
        super().__init__()
        self.chunk = chunk
        self.w1 = nn.Parameter(torch.randn(chunk, chunk) / math.sqrt(chunk))
        self.b1 = nn.Parameter(torch.zeros(chunk))
        self.w2 = nn.Parameter(torch.randn(chunk, chunk) / math.sqrt(chunk))
        self.b2 = nn.Parameter(torch.zeros(chunk))
        self.register_buffer("causal", torch.tril(torch.ones(chunk, chunk)), persistent=False)

    def _mix(self, inputs: torch.Tensor, start: int) -> torch.Tensor:
        m = inputs.shape[1]
        w1, w2 = (self.w1 * self.causal)[:m, :m], (self.w2 * self.causal)[start:m, :m]
        hidden = F.gelu(torch.matmul(w1, inputs) + self.b1[:m, None])
        return torch.matmul(w2, hidden) + self.b2[start:m, None]

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return chunk_causal(x, state, self.chunk, self._mix)


class RunningMean(nn.Module):
    """Frame-to-utterance context: a projection of the causal mean of all frames so far."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        total, count = state if state is not None else (x.new_zeros(x.shape[0], 1, x.shape[2]), 0)
        sums = total + x.cumsum(dim=1)
        counts = count + torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
        return self.proj(sums / counts[:, None]), (sums[:, -1:], count + x.shape[1])


class HalfRateBranch(nn.Module):
    """Multi-scale branch: ``fn`` on the mean of frame pairs, each frame taking the latest
    complete pair (repeat-upsampling shifted by one frame, so it stays causal)."""

    def __init__(self, fn: nn.Module, out_features: int):
        super().__init__()
        self.fn, self.out_features = fn, out_features

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if state is None:
            state = (x[:, :0], x.new_zeros(x.shape[0], 1, self.out_features))
        pending, last = state
        frames = torch.cat([pending, x], dim=1)
        pairs = frames.shape[1] // 2
        pooled = frames[:, : 2 * pairs].unflatten(1, (pairs, 2)).mean(dim=2)
        outputs = torch.cat([last, self.fn(pooled)], dim=1)
        index = (torch.arange(frames.shape[1], device=x.device) + 1) // 2
        y = outputs[:, index][:, pending.shape[1]:]
        return y, (frames[:, 2 * pairs:], outputs[:, -1:])


class MixerBlock(nn.Module):
    """LGM -> MSM -> GCM, each a pre-norm residual."""

    def __init__(self, cfg: ModelDimensions):
        super().__init__()
        h, g = cfg.width, cfg.groups
        self.norm_lgm, self.norm_msm, self.norm_gcm = nn.LayerNorm(h), nn.LayerNorm(h), nn.LayerNorm(h)
        # Local-Global Mixing
        self.local_wide = CausalDepthwiseConv(h, cfg.conv_kernel)
        self.local_narrow = CausalDepthwiseConv(h, 3)
        self.chunk_mix = ChunkTokenMixing(cfg.chunk_frames)
        self.utterance_mix = RunningMean(h)
        # Multi-Scale Mixing
        self.full_rate = GroupLinear(h, h, g)
        self.half_rate = HalfRateBranch(GroupLinear(h, h, g), h)
        self.scale_out = GroupLinear(h, h, g)
        # Group Channel Mixing
        self.channel_in = GroupLinear(h, h * cfg.channel_expansion, g)
        self.channel_out = GroupLinear(h * cfg.channel_expansion, h, g)
        self.group_mix = nn.Linear(h, h)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        s = state or {}
        u = self.norm_lgm(x)
        local, s_wide = self.local_wide(u, s.get("wide"))
        local, s_narrow = self.local_narrow(F.gelu(local), s.get("narrow"))
        chunk, s_chunk = self.chunk_mix(u, s.get("chunk"))
        utterance, s_utt = self.utterance_mix(u, s.get("utterance"))
        x = x + local + chunk + utterance

        u = self.norm_msm(x)
        low, s_half = self.half_rate(u, s.get("half"))
        x = x + self.scale_out(F.gelu(self.full_rate(u) + low))

        u = self.norm_gcm(x)
        x = x + self.group_mix(self.channel_out(F.gelu(self.channel_in(u))))
        return x, {"wide": s_wide, "narrow": s_narrow, "chunk": s_chunk, "utterance": s_utt, "half": s_half}


class TransformerBlock(nn.Module):
    """The ablation: self-attention causal inside the same chunks, then a feed-forward MLP."""

    def __init__(self, cfg: ModelDimensions):
        super().__init__()
        h = cfg.width
        self.heads, self.chunk = cfg.heads, cfg.chunk_frames
        self.norm_attn, self.norm_ffn = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.ffn = nn.Sequential(nn.Linear(h, h * cfg.ffn_expansion), nn.GELU(), nn.Linear(h * cfg.ffn_expansion, h))

    def _attend(self, inputs: torch.Tensor, start: int) -> torch.Tensor:
        m = inputs.shape[1]
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(inputs).chunk(3, dim=-1))
        visible = torch.ones(m, m, dtype=torch.bool, device=inputs.device).tril()[start:]
        y = F.scaled_dot_product_attention(q[:, :, start:], k, v, attn_mask=visible)
        return self.attn_out(y.transpose(1, 2).flatten(-2))

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        attended, history = chunk_causal(self.norm_attn(x), state, self.chunk, self._attend)
        x = x + attended
        return x + self.ffn(self.norm_ffn(x)), history


class Stem(nn.Module):
    """Normalised log-mels at 10 ms -> width-H frames at 20 ms (pairs of frames stacked)."""

    def __init__(self, cfg: ModelDimensions):
        super().__init__()
        self.register_buffer("mel_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(cfg.n_mels))
        self.stack = nn.Linear(2 * cfg.n_mels, cfg.width)
        self.conv = CausalDepthwiseConv(cfg.width, 5)
        self.out = nn.Linear(cfg.width, cfg.width)

    def forward(self, mel: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        pending, conv_state = state if state is not None else (mel[:, :0], None)
        frames = torch.cat([pending, (mel - self.mel_mean) / self.mel_std], dim=1)
        pairs = frames.shape[1] // 2
        stacked = frames[:, : 2 * pairs].reshape(frames.shape[0], pairs, 2 * frames.shape[2])
        y, conv_state = self.conv(self.stack(stacked), conv_state)
        return self.out(F.gelu(y)), (frames[:, 2 * pairs:], conv_state)


class AttentiveStatsHead(nn.Module):
    """Learnt weighted sum of block outputs, attentive statistics pooling, projection."""

    def __init__(self, cfg: ModelDimensions):
        super().__init__()
        h = cfg.width
        self.layer_weights = nn.Parameter(torch.zeros(cfg.n_blocks))
        self.norm = nn.LayerNorm(h)
        self.attention = nn.Sequential(nn.Linear(h, cfg.attention_hidden), nn.Tanh(), nn.Linear(cfg.attention_hidden, h))
        self.stats_norm = nn.LayerNorm(2 * h)
        self.proj = nn.Linear(2 * h, cfg.embedding_dim)

    def frame_features(self, layers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame (features, attention logits): all that pooling needs to keep."""
        weights = torch.softmax(self.layer_weights, dim=0)
        mixed = self.norm(sum(w * layer for w, layer in zip(weights, layers)))
        return mixed, self.attention(mixed)

    def pool(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # Channels first, so the softmax and the sums run over the innermost axis: ONNX Runtime's
        # kernels for a middle axis made the exported pooling 1.6x slower (95 vs 59 us on a 3 s
        # window here; README, The model).
        features, logits = features.transpose(1, 2), logits.transpose(1, 2)
        weighted = torch.softmax(logits, dim=-1) * features
        mean = weighted.sum(dim=-1)
        std = ((weighted * features).sum(dim=-1) - mean.square()).clamp(min=1e-5).sqrt()
        return self.proj(self.stats_norm(torch.cat([mean, std], dim=-1)))


class SpeakerEncoder(nn.Module):
    def __init__(self, cfg: ModelDimensions):
        super().__init__()
        self.cfg = cfg
        block = {"mixer": MixerBlock, "transformer": TransformerBlock}[cfg.arch]
        self.stem = Stem(cfg)
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_blocks))
        self.head = AttentiveStatsHead(cfg)

    def encode(self, mel: torch.Tensor, state: State = None) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Log-mels (B, T, n_mels) -> per-frame head inputs at 20 ms, and the stream state."""
        s = state or {}
        x, s_stem = self.stem(mel, s.get("stem"))
        if x.shape[1] == 0:  # a push shorter than one 20 ms frame: only the stem advanced
            empty = x.new_zeros(x.shape[0], 0, self.cfg.width)
            return empty, empty, {"stem": s_stem, "blocks": s.get("blocks", [None] * len(self.blocks))}
        layers, s_blocks = [], []
        for i, block in enumerate(self.blocks):
            x, s_block = block(x, s["blocks"][i] if s else None)
            layers.append(x)
            s_blocks.append(s_block)
        features, logits = self.head.frame_features(layers)
        return features, logits, {"stem": s_stem, "blocks": s_blocks}

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Offline: (B, T, n_mels) -> un-normalised embeddings (B, embedding_dim)."""
        features, logits, _ = self.encode(mel)
        return self.head.pool(features, logits)


def resize_blocks(model: SpeakerEncoder, n_blocks: int, seed: int = 0) -> SpeakerEncoder:
    """``model`` with ``n_blocks`` SV-Mixer blocks: its first ones kept, or new ones appended.

    Fewer: the first ``n_blocks`` blocks and their share of the head's layer mix (layer dropping;
    a fine-tune recovers what the dropped blocks added). More: each new block's residual branches
    end in zeroed layers (the narrow convolution, the token mixer's second matrix, the running-mean
    projection, the scale and group mixers), so it starts as the identity while its inner layers
    keep a random initialisation and every zeroed layer still gets a gradient; the head's layer
    mix splits the old last block's weight evenly between it and the new blocks (``w - log(n)``),
    whose outputs equal its own, so the function is unchanged."""
    old_n = model.cfg.n_blocks
    if model.cfg.arch != "mixer" or n_blocks < 1:
        raise ValueError("resize_blocks: a mixer model and at least one block")
    cfg = ModelDimensions(**{**asdict(model.cfg), "n_blocks": n_blocks})
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    resized = SpeakerEncoder(cfg)
    torch.random.set_rng_state(generator_state)
    old, state = model.state_dict(), resized.state_dict()
    kept = {k: v for k, v in old.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < n_blocks}
    state.update(kept)
    weights = old["head.layer_weights"]
    if n_blocks <= old_n:
        state["head.layer_weights"] = weights[:n_blocks].clone()
    else:
        extra = n_blocks - old_n
        state["head.layer_weights"] = torch.cat([weights[:-1], (weights[-1] - math.log(extra + 1)).repeat(extra + 1)])
        for i in range(old_n, n_blocks):
            zeroed = [f"blocks.{i}.{name}" for name in (
                "local_narrow.conv.weight", "local_narrow.conv.bias", "chunk_mix.w2", "chunk_mix.b2",
                "utterance_mix.proj.weight", "utterance_mix.proj.bias", "group_mix.weight", "group_mix.bias")]
            zeroed += [k for k in state if k.startswith(f"blocks.{i}.scale_out.")]
            state.update({k: torch.zeros_like(state[k]) for k in zeroed})
    resized.load_state_dict(state)
    return resized


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- the streaming step, for export
#
# SpeakerEncoder.encode carries its stream state as Python structures whose shapes change from push
# to push. ExportStep computes the same function for one push with every piece of state in one
# fixed-size tensor (rows of ``width``) plus the frame position, and no data-dependent Python.
# torch.onnx traces it into the graph the daemon runs (training/export_weights.py); tests hold it to
# SpeakerEncoder.forward.
#
# The graph is written for ONNX Runtime on one thread, where a step pays for its node count and
# for ops that copy element by element: measured here, a 1-frame push of the shipped 2-block model
# costs about a third of a 25-frame one (0.27-0.34 vs 0.76-0.97 ms of thread CPU, noisy VM), and a
# 25-frame push spends about as long outside its matmuls as in them. So it keeps nodes few (158
# after ORT's optimisation; 189 before the index arithmetic, token-mixing gathers and half-rate
# pairing below were reworked, which made the 25-frame step 10% cheaper and the 1-frame one 11%:
# ``taskset -c 1 python -m tools.bench_step OLD.onnx NEW.onnx --frames 25``, medians of 6 runs).
# The mel normalisation is folded into the stem's linear, the narrow
# convolution's bias into the running-mean projection's, channel_out's into the group mixer's;
# every position-dependent index is computed once per push from the push's frame numbers and
# shared by all blocks; the state is one Split in and one Concat out; a block's token mixing is a
# row gather, a per-row element gather and one matmul per layer, its bias gathered as a column
# against a row of ones; the half-rate branch gathers each frame's pair from [the two frames
# before the push; new frames], and its state is those two frames' values; the wide convolution
# reads its history from the token-mixing history. Depthwise convolutions stay a gather, a
# product and a sum: ORT's Conv beat them here by 1-5% of a push only through its x86 NCHWc
# kernels, which a Pi's aarch64 build does not have (without them, a Conv node and its layout
# transposes took 58 us for the wide convolution of a 25-frame push, the gather-product-sum 27).
# Per-op figures here: ORT micro-graphs of R copies of the op against one copy, thread CPU time on
# one core, ORT_DISABLE_ALL as the daemon runs them.

STATE_ROWS_STEM = "stem_conv"
STEM_KERNEL = 5  # Stem's CausalDepthwiseConv
NARROW_KERNEL = 3  # MixerBlock.local_narrow


def _state_layout(cfg: ModelDimensions) -> list[tuple[str, int]]:
    """(name, rows) of every piece of the stream state, in the order of the state tensor's rows.
    Pieces are opaque to the daemon: zeros at the start of an utterance, then whatever the step
    wrote (``half`` holds the half-rate branch's values of the two frames before the push,
    (groups, 2, width/groups) in a (2, width) slot)."""
    layout = [(STATE_ROWS_STEM, STEM_KERNEL - 1)]
    history = cfg.chunk_frames - 1  # the most frames an unfinished chunk holds before a push
    for i in range(cfg.n_blocks):
        layout += [(f"{i}.inputs", history),  # the block's last normed inputs: token mixing and the wide conv
                   (f"{i}.narrow", NARROW_KERNEL - 1), (f"{i}.hidden", history), (f"{i}.total", 1),
                   (f"{i}.half", 2)]  # the half-rate values of the last two frames: the latest pairs
    return layout


def state_rows(cfg: ModelDimensions) -> int:
    """Rows of the (rows, width) stream state tensor; zeros at the start of an utterance."""
    return sum(rows for _, rows in _state_layout(cfg))


def _depthwise(padded: torch.Tensor, taps: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution of (frames + kernel - 1, channels) by ``weight`` (kernel,
    channels); ``taps`` (frames, kernel) indexes each output's inputs: a gather, a product, a sum."""
    return (padded[taps] * weight).sum(dim=1)


def _grouped(parts: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    """A GroupLinear's parts as (groups, in/g, out/g) weights and (groups, 1, out/g) biases."""
    return torch.stack([p.weight.t() for p in parts]), torch.stack([p.bias[None] for p in parts])


def _token_rows(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A token-mixing layer as one row per chunk slot r (a frame's place in its chunk), indexed by
    how far back the input frame lies: index 0 a zero (a frame ahead), 1 + lag for lag 0..chunk-1
    the weight w[r, r - lag] (zero where lag > r: the frame is in an earlier chunk), chunk + 1 a
    zero (lag >= chunk), then the layer's biases b[0..chunk-1] (the ones column reads chunk + 2 + r)."""
    c = w.shape[0]
    source = torch.arange(c)[:, None] - torch.arange(c)[None]  # (r, lag) -> the column r - lag of w
    weights = torch.where(source >= 0, w.gather(1, source.clamp(min=0)), 0.0)
    zero = w.new_zeros(c, 1)
    return torch.cat([zero, weights, zero, b.expand(c, c)], dim=1)


def _token_mixing(rows: torch.Tensor, index: dict[str, torch.Tensor]) -> torch.Tensor:
    """A layer's token-mixing weights for a push (n, history + n + 1) over the columns [history;
    new; ones]: each frame's row of _token_rows (Gather, a row at a time), then each column's
    entry in it (GatherElements). ORT's Gather copies a 1-element block per index at ~10 ns: a
    flat per-element gather from a (chunk * chunk) table cost 15 us per layer of a 25-frame push
    (40 us of a 50-frame one), these two 5 us (8 us)."""
    return rows[index["row"]].gather(1, index["mix"])


class ExportStep(nn.Module):
    """One streaming push of a SpeakerEncoder, with explicit fixed-size state.

    forward(mel (2n, n_mels), position (), state (rows, width)) -> features (n, width),
    attention logits (n, width), new state. ``position`` counts the 20 ms frames encoded before
    the push (int64); the caller keeps it and any odd 10 ms mel frame. The folded weights are a
    snapshot of the encoder's at construction."""

    def __init__(self, encoder: SpeakerEncoder):
        super().__init__()
        cfg = encoder.cfg
        if cfg.arch != "mixer":
            raise ValueError(f"the streaming export runs the SV-Mixer only, not {cfg.arch!r}")
        if cfg.chunk_frames < cfg.conv_kernel:
            raise ValueError("the wide convolution's history is read from the token-mixing history: "
                             f"chunk_frames ({cfg.chunk_frames}) must be at least conv_kernel ({cfg.conv_kernel})")
        self.encoder, self.cfg = encoder, cfg
        self.layout = _state_layout(cfg)
        self.history = cfg.chunk_frames - 1
        with torch.no_grad():
            stem = encoder.stem
            mean, std = stem.mel_mean.repeat(2), stem.mel_std.repeat(2)  # a stacked row is two mel frames
            self.register_buffer("stem_w", (stem.stack.weight / std).t().clone())
            self.register_buffer("stem_b", stem.stack.bias - stem.stack.weight @ (mean / std))
            self.register_buffer("stem_conv_w", stem.conv.conv.weight[:, 0].t().clone())
            self.register_buffer("stem_conv_b", stem.conv.conv.bias.clone())
            self.folded = nn.ModuleList(self._fold(blk) for blk in encoder.blocks)

    @staticmethod
    def _fold(blk: MixerBlock) -> nn.Module:
        """One block's weights in the shapes the step uses (a module of buffers)."""
        f = nn.Module()
        put = lambda name, value: f.register_buffer(name, value.detach().clone())  # noqa: E731
        put("wide_w", blk.local_wide.conv.weight[:, 0].t())
        put("wide_b", blk.local_wide.conv.bias)
        put("narrow_w", blk.local_narrow.conv.weight[:, 0].t())
        put("mix1", _token_rows(blk.chunk_mix.w1, blk.chunk_mix.b1))
        put("mix2", _token_rows(blk.chunk_mix.w2, blk.chunk_mix.b2))
        proj = blk.utterance_mix.proj
        put("mean_w", proj.weight.t())
        put("mean_b", proj.bias + blk.local_narrow.conv.bias)  # the narrow conv's bias, added once here
        w_full, b_full = _grouped(list(blk.full_rate.parts))
        w_half, b_half = _grouped(list(blk.half_rate.fn.parts))
        put("scale_w", torch.cat([w_full, w_half], dim=2))  # both branches read the same input
        put("scale_b", torch.cat([b_full, b_half], dim=2))
        w, b = _grouped(list(blk.scale_out.parts))
        put("scale_out_w", w)
        put("scale_out_b", b)
        w, b = _grouped(list(blk.channel_in.parts))
        put("channel_in_w", w)
        put("channel_in_b", b)
        w, b = _grouped(list(blk.channel_out.parts))
        put("channel_out_w", w)
        # channel_out's bias, through the group mixer, joins the group mixer's: one Add fewer
        put("group_mix_b", blk.group_mix.bias + blk.group_mix.weight @ b.reshape(-1))
        return f

    def _split_state(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = state.split([rows for _, rows in self.layout], dim=0)
        return {name: piece for (name, _), piece in zip(self.layout, pieces)}

    def _step_index(self, position: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        """What every block of a push of ``n`` frames after ``position`` shares.

        ``row`` (n,): each new frame's slot in its chunk, its row of the token-mixing weights;
        ``mix`` (n, history + n + 1): where each column of [history; new; ones] lies in that row
        (_token_rows). ``mean`` (n, 1): the running mean's divisors. ``pair_first``,
        ``pair_second`` (n,): the rows of [the two frames before the push; new frames] whose
        half-rate values a new frame averages, its latest complete pair. The convolutions' taps
        into their padded inputs. Pure index arithmetic on ``steps``: 23 small nodes in the
        graph, where building the same tables by comparing absolute chunk numbers took 60."""
        c, history, k = self.cfg.chunk_frames, self.history, self.cfg.conv_kernel
        steps = torch.arange(n)[:, None]
        frame = position + steps  # each new frame's index in the stream
        row = frame % c
        # Column j of [history; new] holds frame position - history + j: lag = steps + history - j.
        lag = steps - torch.arange(-history, n)
        mix = torch.cat([lag.clamp(-1, c) + 1, c + 2 + row], dim=1)
        # Frame q completes a pair when q is odd, (q - 1, q); an even frame takes the pair before it,
        # (q - 2, q - 1): rows steps + 1, steps + 2 (odd) or steps, steps + 1 (even) of [the two
        # frames before the push; new frames]. The stream's first frame pairs the zero state.
        first = (steps + frame % 2)[:, 0]
        return {"row": row[:, 0], "mix": mix, "mean": 1.0 / (frame + 1).float(),
                "pair_first": first, "pair_second": first + 1,
                "wide": steps + ((history - (k - 1)) + torch.arange(k)[None]),
                "narrow": steps + torch.arange(NARROW_KERNEL)[None],
                "stem": steps + torch.arange(STEM_KERNEL)[None]}

    def block(self, i: int, x: torch.Tensor, s: dict[str, torch.Tensor],
              index: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Block ``i`` on a push's frames (n, width); returns its output and its new state pieces
        in layout order."""
        blk: MixerBlock = self.encoder.blocks[i]
        f = self.folded[i]
        h, g, history = self.cfg.width, self.cfg.groups, self.history
        ones = x.new_ones(1, h)
        # Local-Global Mixing
        u = blk.norm_lgm(x)
        inputs = torch.cat([s[f"{i}.inputs"], u, ones], dim=0)
        wide = F.gelu(_depthwise(inputs, index["wide"], f.wide_w) + f.wide_b)
        narrow_in = torch.cat([s[f"{i}.narrow"], wide], dim=0)
        local = _depthwise(narrow_in, index["narrow"], f.narrow_w)
        hidden = F.gelu(_token_mixing(f.mix1, index) @ inputs)
        hiddens = torch.cat([s[f"{i}.hidden"], hidden, ones], dim=0)
        chunk = _token_mixing(f.mix2, index) @ hiddens
        sums = s[f"{i}.total"] + u.cumsum(dim=0)
        x = x + local + chunk + ((sums * index["mean"]) @ f.mean_w + f.mean_b)
        # Multi-Scale Mixing, on grouped activations (groups, n, width/g)
        k = h // g
        both = blk.norm_msm(x).reshape(-1, g, k).transpose(0, 1) @ f.scale_w + f.scale_b
        # The half-rate branch is affine, so a pair's value is the mean of its frames' values. Two
        # gathers and adds: 11 us on a 25-frame push, where one (n, 2) gather and a mean over the
        # pair took 27 us, and the pairing matmul before needed ~25 index nodes to build. The 0.5
        # stays a Mul: folded into the half-rate weights it moved int8's per-tensor scale (int8 vs
        # fp32 1 - cosine on 84 dev clips, max 0.8e-4 -> 1.5e-4).
        values = torch.cat([s[f"{i}.half"].reshape(g, 2, k), both[:, :, k:]], dim=1)
        rates = both[:, :, :k] + (values[:, index["pair_first"]] + values[:, index["pair_second"]]) * 0.5
        scales = F.gelu(rates) @ f.scale_out_w + f.scale_out_b
        x = x + scales.transpose(0, 1).reshape(-1, h)
        # Group Channel Mixing
        u = blk.norm_gcm(x).reshape(-1, g, k).transpose(0, 1)
        grouped = F.gelu(u @ f.channel_in_w + f.channel_in_b) @ f.channel_out_w
        x = x + F.linear(grouped.transpose(0, 1).reshape(-1, h), blk.group_mix.weight, f.group_mix_b)
        new_state = [inputs[-history - 1:-1], narrow_in[-(NARROW_KERNEL - 1):], hiddens[-history - 1:-1],
                     sums[-1:], values[:, -2:].reshape(2, h)]
        return x, new_state

    def forward(self, mel: torch.Tensor, position: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self._split_state(state)
        stacked = mel.reshape(-1, 2 * self.cfg.n_mels)
        index = self._step_index(position, stacked.shape[0])
        padded = torch.cat([s[STATE_ROWS_STEM], stacked @ self.stem_w + self.stem_b], dim=0)
        x = self.encoder.stem.out(F.gelu(_depthwise(padded, index["stem"], self.stem_conv_w) + self.stem_conv_b))
        layers, pieces = [], [padded[-(STEM_KERNEL - 1):]]
        for i in range(len(self.folded)):
            x, block_state = self.block(i, x, s, index)
            layers.append(x)
            pieces += block_state
        features, logits = self.encoder.head.frame_features(layers)
        return features, logits, torch.cat(pieces, dim=0)


class ExportPool(nn.Module):
    """The head's attentive-statistics pooling over a window of frames, then the embedding that
    is scored: unit length, and the scoring backend (centre + whitening) when there is one."""

    def __init__(self, encoder: SpeakerEncoder, backend: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.head = encoder.head
        self.has_backend = backend is not None
        if backend is not None:
            self.register_buffer("center", backend["center"].float())
            self.register_buffer("whiten", backend["whiten"].float())

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raw = self.head.pool(features[None], logits[None])[0]
        vector = raw / raw.norm().clamp(min=1e-12)
        if self.has_backend:
            vector = (vector - self.center) @ self.whiten
            vector = vector / vector.norm().clamp(min=1e-12)
        return vector


# ---------------------------------------------------------------- counting and export

OPSET = 17
CHECKPOINT_FORMAT = 1  # the .pt layout train.py writes and export_weights.py reads (the old .npz's too)


def count_macs_per_second(model: SpeakerEncoder, seconds: float = 10.0) -> float:
    """Multiply-accumulates per second of audio of an offline pass: the torch model's matmuls,
    convolutions and einsums counted by torch's FLOP counter (2 FLOPs = 1 MAC), plus the log-mel
    filterbank projection counted from its shape (the FFT is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from streamsv.features import FILTERBANK_MACS_PER_FRAME, HOP, SAMPLE_RATE, log_mel

    mel = torch.from_numpy(log_mel(torch.zeros(int(seconds * SAMPLE_RATE) + HOP).numpy()))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(mel[None])
    return (counter.get_total_flops() / 2 + len(mel) * FILTERBANK_MACS_PER_FRAME) / seconds


def count_stream_macs_per_second(model: SpeakerEncoder, hop_s: float = 0.5, window_s: float = 3.0,
                                 seconds: float = 6.0) -> float:
    """MACs per second of audio of the streaming path as the daemon runs it: the exported step
    on each hop's frames, and the pooling over the window every hop; counted like
    count_macs_per_second."""
    from torch.utils.flop_counter import FlopCounterMode

    from streamsv.features import FILTERBANK_MACS_PER_FRAME

    step, pool = ExportStep(model).eval(), ExportPool(model).eval()
    hop = round(hop_s * FRAMES_PER_SECOND)
    window = round(window_s * FRAMES_PER_SECOND)
    hops = round(seconds / hop_s)
    mel = torch.zeros(2 * hop, model.cfg.n_mels)
    state = torch.zeros(state_rows(model.cfg), model.cfg.width)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        for i in range(hops):
            features, logits, state = step(mel, torch.tensor(i * hop), state)
            frames = min(window, (i + 1) * hop)
            pool(features.new_zeros(frames, features.shape[1]), logits.new_zeros(frames, features.shape[1]))
    return (counter.get_total_flops() / 2 + hops * 2 * hop * FILTERBANK_MACS_PER_FRAME) / (hops * hop_s)


def _to_onnx(module: nn.Module, args: tuple, names: tuple[list[str], list[str]], dynamic: dict) -> bytes:
    import io
    import warnings

    buffer = io.BytesIO()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET, input_names=names[0],
                          output_names=names[1], dynamic_axes=dynamic, do_constant_folding=True)
    return buffer.getvalue()


def with_metadata(model_bytes: bytes, metadata: dict[str, str]) -> bytes:
    """The ONNX model with ``metadata`` in its metadata_props (replacing same-named keys)."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def export_onnx(model: SpeakerEncoder, fingerprint: str, backend: dict[str, torch.Tensor] | None = None,
                info: dict | None = None) -> tuple[bytes, bytes]:
    """The model as (step graph, pooling graph) ONNX bytes, fp32; the step's metadata carries
    what streamsv.embedder needs: format, fingerprint, config, info."""
    from dataclasses import asdict

    model = model.eval()
    cfg = model.cfg
    step = _to_onnx(ExportStep(model).eval(),
                    (torch.zeros(2 * 25, cfg.n_mels), torch.tensor(0), torch.zeros(state_rows(cfg), cfg.width)),
                    (["mel", "position", "state"], ["features", "logits", "new_state"]),
                    {"mel": {0: "mel_frames"}, "features": {0: "frames"}, "logits": {0: "frames"}})
    pool = _to_onnx(ExportPool(model, backend).eval(), (torch.zeros(150, cfg.width), torch.zeros(150, cfg.width)),
                    (["features", "logits"], ["embedding"]), {"features": {0: "frames"}, "logits": {0: "frames"}})
    info = {"parameters": count_parameters(model), "variant": "fp32", **(info or {})}
    metadata = {"format": str(MODEL_FORMAT), "fingerprint": fingerprint, "config": json.dumps(asdict(cfg)),
                "info": json.dumps(info)}
    return with_metadata(step, metadata), pool


def onnx_model_bytes(seed: int = 0, config: ModelDimensions | None = None) -> tuple[bytes, bytes]:
    """An untrained model (seeded), exported: for tests and plumbing; identifies nobody."""
    from dataclasses import asdict

    return _untrained_onnx(seed, json.dumps(asdict(config or ModelDimensions()), sort_keys=True))


@functools.lru_cache(maxsize=4)
def _untrained_onnx(seed: int, config_json: str) -> tuple[bytes, bytes]:
    torch.manual_seed(seed)
    return export_onnx(SpeakerEncoder(ModelDimensions(**json.loads(config_json))), fingerprint=f"untrained-seed{seed}")


def untrained_embedder(seed: int = 0, config: ModelDimensions | None = None) -> Embedder:
    """The daemon's Embedder on an untrained model (seeded), exported in memory: carries plumbing
    and speed figures, identifies nobody."""
    return Embedder.from_onnx(*onnx_model_bytes(seed=seed, config=config))
