"""Factorized space-time 3D U-Net (VDM §3: the 2D diffusion U-Net extended to space-time).

* Space: every 3×3 conv is a space-only 1×3×3 conv, run as a 2D conv with the frames folded into
  the batch (``[B, C, F, H, W] → [B·F, C, H, W]``).
* Time: a temporal attention block after every spatial attention block and in every level's blocks:
  attention over frames with the spatial positions folded into the batch (``[B·H·W, F, C]``) and a
  T5-style bucketed **relative** position bias, so any frame count runs.
* Noise level: sinusoidal embedding of the angle φ, MLP, FiLM (scale, shift) in every res-block.
* Output convs and attention projections start at zero, so a fresh network predicts v̂ = 0.

Model contract (vdm_core/contract.py): ``model(z, phi) -> v̂`` with ``z`` ``[B, C, F, H, W]`` and ``phi`` ``[B]``.
The network computes in its own parameter dtype and returns ``v̂`` in ``z``'s dtype.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .schedule import t_of_phi


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class UNet3DConfig:
    """Everything needed to rebuild the network; saved in every checkpoint's metadata.

    ``spatial_attn_levels`` lists the levels (0 = full resolution) that get spatial attention;
    ``None`` means every level but the full-resolution one (VDM puts none at the top).
    ``resolution`` and ``frames`` record the clip size the network was trained on.
    """

    channels: int = _opt(3, "colour channels of the clips (3: RGB)")
    base_width: int = _opt(32, "channels of the full-resolution level (even)")
    width_mults: tuple[int, ...] = _opt((1, 2, 4), "channel multiplier of each level; one level per entry, "
                                                   "each halving the resolution")
    blocks_per_level: int = _opt(1, "res-blocks per level")
    spatial_attn_levels: tuple[int, ...] | None = _opt(None, "levels (0 = full resolution) with spatial "
                                                             "attention (default: all but level 0)")
    heads: int = _opt(4, "attention heads (every level's width must be divisible by it)")
    dropout: float = _opt(0.0, "dropout in the res-blocks")
    rel_pos_buckets: int = _opt(32, "buckets of the temporal attention's relative position bias (T5)")
    rel_pos_max_distance: int = _opt(32, "frame distance beyond which relative positions share a bucket")
    resolution: int = _opt(32, "frame size the network was trained on (set by training)")
    frames: int = _opt(16, "frames the network was trained on (set by training)")

    def __post_init__(self):
        self.width_mults = tuple(int(m) for m in self.width_mults)
        if self.spatial_attn_levels is not None:
            self.spatial_attn_levels = tuple(int(i) for i in self.spatial_attn_levels)
        if not self.width_mults or min(self.width_mults) < 1:
            raise ValueError(f"width_mults must list at least one level, each >= 1; got {self.width_mults}")
        for name in ("channels", "blocks_per_level", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.base_width < 2 or self.base_width % 2:
            raise ValueError(f"base_width must be even and positive (noise embedding), got {self.base_width}")
        bad = [i for i in self.attention_levels if not 0 <= i < len(self.width_mults)]
        if bad:
            raise ValueError(f"spatial_attn_levels {bad} are not levels 0..{len(self.width_mults) - 1}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rel_pos_buckets < 4 or self.rel_pos_max_distance <= self.rel_pos_buckets // 4:
            raise ValueError(f"need rel_pos_buckets >= 4 and rel_pos_max_distance > rel_pos_buckets // 4, got "
                             f"{self.rel_pos_buckets} and {self.rel_pos_max_distance}")
        for w in self.widths:
            if w % self.heads:
                raise ValueError(f"width {w} must be divisible by heads={self.heads}")

    @property
    def attention_levels(self) -> tuple[int, ...]:
        """The levels with spatial attention: ``spatial_attn_levels``, or all but level 0 when it is None."""
        if self.spatial_attn_levels is None:
            return tuple(range(1, len(self.width_mults)))
        return self.spatial_attn_levels

    @property
    def widths(self) -> list[int]:
        return [self.base_width * m for m in self.width_mults]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNet3DConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return cls(**d)


def _groups(c: int) -> int:
    return math.gcd(c, 8)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def phi_embedding(phi: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``[B] → [B, dim]`` of ``1000·t(φ)``."""
    t = t_of_phi(phi.float()) * 1000.0
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=phi.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv3×3, FiLM from the noise embedding, GroupNorm–SiLU–conv3×3, residual.

    ``x``: ``[B·F, C_in, H, W]``; ``emb``: ``[B·F, E]`` → ``[B·F, C_out, H, W]``.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SpatialAttention(nn.Module):
    """Self-attention over the ``H·W`` positions of each frame: ``[B·F, C, H, W]`` in and out."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = _zero(nn.Conv2d(c, c, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [N, heads, HW, d]
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(out)


def relative_position_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bidirectional bucketing of relative distances ``j − i`` (exact near 0, log-spaced far)."""
    half = num_buckets // 2
    bucket = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    far = exact + (
        torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    far = far.clamp(max=half - 1)
    return bucket + torch.where(dist < exact, dist, far)


class TemporalAttention(nn.Module):
    """Self-attention over frames with spatial positions folded into the batch.

    ``x``: ``[B·F, C, H, W]`` → same shape. A learned bias per head and relative-distance bucket
    (T5) is added to the logits, so only frame order, never absolute time, is seen.
    ``independent``: ``[B]`` bool; where true, each frame attends only to itself (joint
    image/video training, VDM §3), which makes the block pass the value projection through.
    """

    def __init__(self, c: int, heads: int, num_buckets: int, max_distance: int):
        super().__init__()
        self.heads, self.num_buckets, self.max_distance = heads, num_buckets, max_distance
        self.norm = nn.GroupNorm(_groups(c), c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = _zero(nn.Linear(c, c))
        self.rel_bias = nn.Embedding(num_buckets, heads)

    def bias(self, frames: int, device) -> Tensor:
        """``[heads, F, F]`` logit bias, a function of ``j − i`` only (a Toeplitz matrix)."""
        pos = torch.arange(frames, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.rel_bias(buckets).permute(2, 0, 1)

    def forward(self, x: Tensor, frames: int, independent: Tensor | None) -> Tensor:
        bf, c, h, w = x.shape
        b = bf // frames
        seq = self.norm(x).reshape(b, frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, frames, c)
        q, k, v = self.qkv(seq).reshape(b * h * w, frames, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(frames, x.device).to(q.dtype))
        # compiled graphs take the torch.where always: branching on a tensor's value breaks the graph
        if independent is not None and (torch.compiler.is_compiling() or bool(independent.any())):
            keep_self = independent.repeat_interleave(h * w)[:, None, None, None]
            out = torch.where(keep_self, v, out)
        out = out.transpose(1, 2).reshape(b, h * w, frames, c)
        out = self.proj(out).permute(0, 2, 3, 1).reshape(bf, c, h, w)
        return x + out


class Level(nn.Module):
    """Res-blocks of one resolution, each followed by (spatial attention and) temporal attention."""

    def __init__(self, c_ins: list[int], c_out: int, emb_dim: int, cfg: UNet3DConfig, spatial: bool):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(ci, c_out, emb_dim, cfg.dropout) for ci in c_ins)
        self.spatial = nn.ModuleList(SpatialAttention(c_out, cfg.heads) if spatial else nn.Identity() for _ in c_ins)
        self.temporal = nn.ModuleList(
            TemporalAttention(c_out, cfg.heads, cfg.rel_pos_buckets, cfg.rel_pos_max_distance) for _ in c_ins
        )


class UNet3D(nn.Module):
    """``model(z, phi) -> v̂``; ``z``: ``[B, C, F, H, W]`` (any F ≥ 1, any H, W), ``phi``: ``[B]``.

    H and W that are not multiples of ``2^(levels−1)`` are reflect-padded and cropped back.
    ``independent_frames`` (bool or ``[B]`` bool) masks temporal attention to the identity.
    ``gradient_checkpointing`` trades compute for memory (activations of one block at a time).
    """

    def __init__(self, config: UNet3DConfig | None = None):
        super().__init__()
        cfg = self.config = config or UNet3DConfig()
        self.gradient_checkpointing = False
        widths, emb_dim = cfg.widths, 4 * cfg.base_width
        self.emb = nn.Sequential(nn.Linear(cfg.base_width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(cfg.channels, widths[0], 3, padding=1)
        n = cfg.blocks_per_level
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [widths[0]], widths[0]
        for i, w in enumerate(widths):
            self.down.append(Level([c] + [w] * (n - 1), w, emb_dim, cfg, i in cfg.attention_levels))
            c = w
            skips += [w] * n
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
                skips.append(w)
        self.mid = Level([c, c], c, emb_dim, cfg, True)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            c_ins = []
            for _ in range(n + 1):
                c_ins.append(c + skips.pop())
                c = w
            self.up.append(Level(c_ins, w, emb_dim, cfg, i in cfg.attention_levels))
            if i > 0:
                self.upsample.append(nn.Conv2d(w, w, 3, padding=1))
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = _zero(nn.Conv2d(c, cfg.channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def _run(self, level: Level, i: int, h: Tensor, emb: Tensor, frames: int, independent) -> Tensor:
        def block(h, emb):
            h = level.res[i](h, emb)
            h = level.spatial[i](h)
            return level.temporal[i](h, frames, independent)

        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, z: Tensor, phi: Tensor, independent_frames: bool | Tensor = False) -> Tensor:
        if z.ndim != 5 or z.shape[1] != self.config.channels:
            raise ValueError(
                f"expected z of shape [B, {self.config.channels}, F, H, W], got {tuple(z.shape)}"
            )
        b, c, f, h, w = z.shape
        if not (f and h and w) or not z.is_floating_point():
            raise ValueError(f"z must be a float tensor with at least one frame and pixel, got "
                             f"{tuple(z.shape)} {z.dtype}")
        phi = torch.as_tensor(phi, device=z.device, dtype=torch.float32).reshape(-1)
        independent = torch.as_tensor(independent_frames, device=z.device, dtype=torch.bool).reshape(-1)
        for name, t in (("phi", phi), ("independent_frames", independent)):
            if t.numel() not in (1, b):
                raise ValueError(f"{name} must have 1 or B={b} entries, got {t.numel()}")
        phi, independent = phi.expand(b), independent.expand(b)
        emb = self.emb(phi_embedding(phi, self.config.base_width).to(self.dtype))
        emb = emb.repeat_interleave(f, dim=0)

        mult = 2 ** (len(self.config.width_mults) - 1)
        ph, pw = (-h) % mult, (-w) % mult
        x = z.to(self.dtype).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)

        if x.device.type == "cpu":  # oneDNN convs run NHWC without reordering: ~1.5x faster forward on CPU
            x = x.contiguous(memory_format=torch.channels_last)
        hs = [self.conv_in(x)]
        x = hs[-1]
        for i, level in enumerate(self.down):
            for j in range(len(level.res)):
                x = self._run(level, j, x, emb, f, independent)
                hs.append(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
                hs.append(x)
        for j in range(len(self.mid.res)):
            x = self._run(self.mid, j, x, emb, f, independent)
        for i, level in enumerate(self.up):
            for j in range(len(level.res)):
                x = self._run(level, j, torch.cat([x, hs.pop()], dim=1), emb, f, independent)
            if i < len(self.upsample):
                x = self.upsample[i](F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = self.conv_out(F.silu(self.norm_out(x)))[:, :, :h, :w]
        return x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).to(z.dtype)
