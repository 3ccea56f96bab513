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

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .features import N_MELS

FRAMES_PER_SECOND = 50  # after the stem: 20 ms frames
SMALL_CONV_FRAMES = 256  # below this many (batch x frames), convolve by hand


@dataclass
class ModelConfig:
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

    def as_dense(self) -> nn.Linear:
        """The same function as one block-diagonal Linear."""
        dense = nn.Linear(sum(p.in_features for p in self.parts), sum(p.out_features for p in self.parts))
        with torch.no_grad():
            dense.weight.copy_(torch.block_diag(*(p.weight for p in self.parts)))
            dense.bias.copy_(torch.cat([p.bias for p in self.parts]))
        return dense


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

    def __init__(self, cfg: ModelConfig):
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

    def __init__(self, cfg: ModelConfig):
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

    def __init__(self, cfg: ModelConfig):
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

    def __init__(self, cfg: ModelConfig):
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
        weights = torch.softmax(logits, dim=1)
        mean = (weights * features).sum(dim=1)
        std = ((weights * features.square()).sum(dim=1) - mean.square()).clamp(min=1e-5).sqrt()
        return self.proj(self.stats_norm(torch.cat([mean, std], dim=-1)))


class SpeakerEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
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


def fuse_for_inference(model: SpeakerEncoder) -> SpeakerEncoder:
    """A copy in eval mode where each GroupLinear is one block-diagonal Linear: the same
    function, but one matmul instead of ``groups`` small ones, since a streaming step is
    bound by per-op overhead rather than arithmetic. Count parameters and MACs on the original."""
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        for name, child in module.named_children():
            if isinstance(child, GroupLinear):
                setattr(module, name, child.as_dense())
    return fused


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
