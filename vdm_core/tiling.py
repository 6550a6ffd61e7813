"""Spatial tiles: ``v̂`` of frames larger than the model's tile, blended at every step (MultiDiffusion-style).

At every step the model runs on each overlapping tile and the tiles' ``v̂`` are blended with raised-cosine
weights that sum to one, so tiles agree at every step instead of being stitched afterwards. Under autograd
(guidance) each tile's forward is recomputed in the backward pass (activation checkpointing), so memory is
one tile's activations however large the frame.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def blend_weights(sp: tuple[tuple[int, int], ...]) -> list[Tensor]:
    """Per span (``(start, stop)``, in order, each overlapping the next at most), 1-D weights: 1 inside,
    raised-cosine ramps ``cos²`` / ``sin²`` of ``π/2·(i + ½)/overlap`` across each overlap with a neighbour —
    which sum to one by themselves where two spans overlap — normalised so the weights of all spans sum to
    one at every position."""
    ws = [torch.ones(b - a, dtype=torch.float64) for a, b in sp]
    for i in range(len(sp) - 1):
        ov = sp[i][1] - sp[i + 1][0]
        if ov > 0:
            t = (torch.arange(ov, dtype=torch.float64) + 0.5) / ov
            ws[i][-ov:] *= torch.cos(0.5 * math.pi * t) ** 2
            ws[i + 1][:ov] *= torch.sin(0.5 * math.pi * t) ** 2
    total = torch.zeros(sp[-1][1], dtype=torch.float64)
    for (a, b), w in zip(sp, ws):
        total[a:b] += w
    return [(w / total[a:b]).float() for (a, b), w in zip(sp, ws)]


class TiledModel:
    """``v̂ = Σ_tiles w_r w_c · model(z_tile)`` over the row and column spans ``rows``/``cols`` with
    :func:`blend_weights`. ``on_tile(done, tiles)`` is called after each tile's forward (progress within a step;
    it may raise to stop)."""

    def __init__(self, model, rows, cols, on_tile: Callable[[int, int], None] | None = None):
        self.model, self.rows, self.cols, self.on_tile = model, rows, cols, on_tile
        self.wr, self.wc = blend_weights(rows), blend_weights(cols)

    def __call__(self, z: Tensor, phi: Tensor) -> Tensor:
        v = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        grad = torch.is_grad_enabled() and z.requires_grad
        tiles, done = len(self.rows) * len(self.cols), 0
        for (r0, r1), wr in zip(self.rows, self.wr):
            for (c0, c1), wc in zip(self.cols, self.wc):
                zt = z[..., r0:r1, c0:c1]
                vt = checkpoint(self.model, zt, phi, use_reentrant=False) if grad else self.model(zt, phi)
                v[..., r0:r1, c0:c1] += vt.float() * (wr[:, None] * wc[None, :]).to(z.device)
                done += 1
                if self.on_tile is not None:
                    self.on_tile(done, tiles)
        return v
