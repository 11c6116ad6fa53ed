"""MMDiT over the 8^3 x 64 VAE latent: patch embedding, double-stream then single-stream blocks, AdaLN-Zero.

Double-stream blocks (as in SD3) keep separate weights for latent tokens and condition tokens and mix them through
one joint attention; single-stream blocks (as in FLUX) run on the merged sequence with a parallel attention + MLP
layer. Every block is modulated (shift, scale, gate) by ``c = timestep embedding + pooled condition``; the
modulation layers are zero-initialised, so each fresh block is the identity map ("AdaLN-Zero") and the fresh model
predicts zero velocity.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpsk_materials.errors import GridError
from gpsk_materials.models.conditioning import ConditionBatch, ConditionEncoder
from gpsk_materials.models.configs import MMDiTConfig


class ConditionContext(NamedTuple):
    """What :meth:`MMDiT.forward` derives from the conditions alone, constant over a sampler's steps."""

    ctx: Tensor  #: context tokens after ``context_in``, (B, E + 6, d)
    mask: Tensor  #: key mask of the context tokens, (B, E + 6), True = attend
    pooled: Tensor  #: ``pooled_mlp`` of the pooled conditions, the condition term of the modulation vector, (B, d)
    dtype: torch.dtype  #: dtype of the condition tokens (the time embedding is cast to it)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of flow times t in [0, 1] (scaled by 1000 as in DiT) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_3d(n: int, dim: int) -> Tensor:
    """Fixed 3D sin-cos position embedding of an n^3 token grid -> (n^3, dim); dim is split over the three axes."""
    per = (dim // 6) * 2
    ax = torch.arange(n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    freqs = 1.0 / 10000 ** (torch.arange(per // 2, dtype=torch.float64) / max(per // 2, 1))
    parts = []
    for a in range(3):
        ang = grid[:, a : a + 1] * freqs[None]
        parts += [ang.sin(), ang.cos()]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1])).float()


class RMSNorm(nn.Module):
    """Per-head RMS normalisation of queries and keys (QK-norm), for stable attention logits."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Modulation(nn.Module):
    """SiLU + zero-initialised linear producing ``n`` (B, d) modulation vectors."""

    def __init__(self, hidden: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(hidden, n * hidden)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> list[Tensor]:
        return list(self.linear(F.silu(c)).chunk(self.n, dim=-1))


def _mlp(hidden: int, ratio: float) -> nn.Sequential:
    inner = int(hidden * ratio)
    return nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """Scaled dot-product attention over (B, H, L, Dh); ``key_mask`` (B, L) True = attend."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


class _Stream(nn.Module):
    """Weights of one stream of a double-stream block."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.mod = Modulation(hidden, 6)
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = RMSNorm(hidden // heads)
        self.k_norm = RMSNorm(hidden // heads)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = _mlp(hidden, mlp_ratio)

    def qkv_heads(self, x: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(modulate(self.norm1(x), shift, scale)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        return self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2)

    def finish(self, x: Tensor, attn: Tensor, mods: list[Tensor]) -> Tensor:
        _, _, gate1, shift2, scale2, gate2 = mods
        x = x + gate1[:, None] * self.proj(attn)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DoubleStreamBlock(nn.Module):
    """Joint attention over latent and condition tokens with separate weights per stream."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.x_stream = _Stream(hidden, heads, mlp_ratio)
        self.c_stream = _Stream(hidden, heads, mlp_ratio)

    def forward(self, x: Tensor, ctx: Tensor, vec: Tensor, ctx_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        xm, cm = self.x_stream.mod(vec), self.c_stream.mod(vec)
        xq, xk, xv = self.x_stream.qkv_heads(x, xm[0], xm[1])
        cq, ck, cv = self.c_stream.qkv_heads(ctx, cm[0], cm[1])
        nx = x.shape[1]
        key_mask = None
        if ctx_mask is not None:
            key_mask = torch.cat([torch.ones(x.shape[0], nx, dtype=torch.bool, device=x.device), ctx_mask], dim=1)
        out = attention(torch.cat([xq, cq], 2), torch.cat([xk, ck], 2), torch.cat([xv, cv], 2), key_mask)
        return self.x_stream.finish(x, out[:, :nx], xm), self.c_stream.finish(ctx, out[:, nx:], cm)


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP on the merged sequence, one set of weights."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.inner = int(hidden * mlp_ratio)
        self.mod = Modulation(hidden, 3)
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear1 = nn.Linear(hidden, 3 * hidden + self.inner)
        self.q_norm = RMSNorm(hidden // heads)
        self.k_norm = RMSNorm(hidden // heads)
        self.linear2 = nn.Linear(hidden + self.inner, hidden)

    def forward(self, x: Tensor, vec: Tensor, key_mask: Tensor | None = None) -> Tensor:
        shift, scale, gate = self.mod(vec)
        b, n, d = x.shape
        h = self.linear1(modulate(self.norm(x), shift, scale))
        qkv, mlp = h.split([3 * d, self.inner], dim=-1)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2)
        out = attention(q, k, v, key_mask)
        return x + gate[:, None] * self.linear2(torch.cat([out, F.gelu(mlp, approximate="tanh")], dim=-1))


class FinalLayer(nn.Module):
    """AdaLN + zero-initialised linear back to patch values."""

    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.mod = Modulation(hidden, 2)
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.mod(vec)
        return self.linear(modulate(self.norm(x), shift, scale))


class PatchEmbed3d(nn.Module):
    """Cubic patches of the latent (B, C, n, n, n) -> tokens (B, (n/p)^3, d), and back."""

    def __init__(self, channels: int, size: int, patch: int, hidden: int):
        super().__init__()
        self.channels, self.size, self.patch = channels, size, patch
        self.proj = nn.Conv3d(channels, hidden, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        b, p, g, c = tokens.shape[0], self.patch, self.size // self.patch, self.channels
        x = tokens.view(b, g, g, g, c, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, c, self.size, self.size, self.size)


class MMDiT(nn.Module):
    """Velocity model v(x_t, t, conditions) of the rectified flow over VAE latents."""

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        self.config = config
        d, c = config.hidden, config.latent_channels
        self.patch_embed = PatchEmbed3d(c, config.latent_size, config.patch, d)
        self.register_buffer("pos_embed", sincos_3d(config.latent_size // config.patch, d)[None], persistent=False)
        self.cond_encoder = ConditionEncoder(d, config.max_elements)
        self.context_in = nn.Linear(d, d)
        self.time_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.pooled_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(d, config.heads, config.mlp_ratio) for _ in range(config.double_blocks))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(d, config.heads, config.mlp_ratio) for _ in range(config.single_blocks))
        self.final = FinalLayer(d, c * config.patch**3)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # AdaLN-Zero: modulation and output layers start at zero
            if isinstance(m, Modulation):
                nn.init.zeros_(m.linear.weight)
            elif isinstance(m, FinalLayer):
                nn.init.zeros_(m.linear.weight)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for m in self.time_mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    def condition_context(self, cond: ConditionBatch) -> ConditionContext:
        """The part of :meth:`forward` that depends on the conditions alone (:class:`ConditionContext`). A sampler
        computes it once for all its steps (:func:`gpsk_materials.models.rectified_flow.sample`): the same
        operations on the same inputs, so the velocity is the same as without it, bit for bit."""
        tokens, ctx_mask, pooled = self.cond_encoder(cond)
        return ConditionContext(self.context_in(tokens), ctx_mask, self.pooled_mlp(pooled), tokens.dtype)

    def forward(self, x: Tensor, t: Tensor, cond: ConditionBatch,
                context: ConditionContext | None = None) -> Tensor:
        """Predict the velocity (B, 64, 8, 8, 8) of latents ``x`` at flow times ``t`` (B,) in [0, 1];
        ``context``: :meth:`condition_context` of ``cond`` when the caller holds it."""
        cfg = self.config
        n = cfg.latent_size
        if x.ndim != 5 or tuple(x.shape[1:]) != (cfg.latent_channels, n, n, n):
            raise GridError(f"latent must have shape (B, {cfg.latent_channels}, {n}, {n}, {n}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],) or len(cond) != x.shape[0]:
            raise ValueError(f"batch sizes differ: latent {x.shape[0]}, t {tuple(t.shape)}, conditions {len(cond)}")
        ctx, ctx_mask, pooled_vec, dtype = self.condition_context(cond) if context is None else context
        vec = self.time_mlp(timestep_embedding(t, 256).to(dtype)) + pooled_vec
        h = self.patch_embed(x) + self.pos_embed.to(x.dtype)
        for block in self.double_blocks:
            h, ctx = block(h, ctx, vec, ctx_mask)
        nx = h.shape[1]
        merged = torch.cat([h, ctx], dim=1)
        key_mask = torch.cat([torch.ones(h.shape[0], nx, dtype=torch.bool, device=h.device), ctx_mask], dim=1)
        for block in self.single_blocks:
            merged = block(merged, vec, key_mask)
        out = self.final(merged[:, :nx], vec)
        return self.patch_embed.unpatchify(out)
