"""DDIM sampling of a v-prediction model in angle form (seed notes; PD; vdm-reference §1.4–1.5).

One step from angle ``φ_t`` to ``φ_s < φ_t``:

* η = 0, unmodified prediction: ``z_s = cos(φ_s − φ_t)·z_t + sin(φ_s − φ_t)·v̂`` (the seed's form;
  ``sin(φ_s − φ_t) < 0``).
* In general, with ``x̃`` the (clipped / guided) prediction and ``ε̃ = (z_t − α_t x̃)/σ_t``:
  ``z_s = α_s x̃ + sqrt(σ_s² − c²)·ε̃ + c·ξ`` with ``c = η·(σ_s/σ_t)·sqrt(1 − α_t²/α_s²)``
  (DDIM eq. 16 in α/σ form; η = 1 is ancestral sampling, equal to VDM's γ = 0 step).

The model is any callable ``model(z, phi) -> v̂`` (``z``: ``[B, C, F, H, W]``, ``phi``: ``[B]``).
All sampler arithmetic is float32 whatever dtype the model computes in.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .schedule import eps_from_x, sampling_angles, x_from_v

Callback = Callable[[int, int, Tensor], None]


def dynamic_threshold(x: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding: per clip, ``s = max(1, quantile(|x|, p))``, ``x ← clip(x, −s, s)/s``."""
    s = torch.quantile(x.flatten(1).abs().float(), percentile, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x.ndim - 1)))
    return x.clamp(-s, s) / s


def ddim_step(z: Tensor, x: Tensor, phi_t: float, phi_s: float, eta: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    """``z_s = α_s x̃ + sqrt(σ_s² − c²)·ε̃ + c·ξ`` with ``ε̃`` recomputed from ``x̃`` (see module doc)."""
    eps = eps_from_x(z, x, torch.tensor(phi_t))
    a_s, s_s = math.cos(phi_s), math.sin(phi_s)
    a_t, s_t = math.cos(phi_t), math.sin(phi_t)
    c = eta * (s_s / s_t) * math.sqrt(max(0.0, 1.0 - (a_t / a_s) ** 2)) if eta > 0 else 0.0
    z_s = a_s * x + math.sqrt(max(0.0, s_s * s_s - c * c)) * eps
    if c > 0:
        z_s = z_s + c * torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    return z_s


def angle_step(z: Tensor, v: Tensor, phi_t: float, phi_s: float) -> Tensor:
    """The seed's angle-form DDIM step ``z_s = cos(φ_s − φ_t)·z_t + sin(φ_s − φ_t)·v̂`` (η = 0)."""
    d = phi_s - phi_t
    return math.cos(d) * z + math.sin(d) * v


@torch.no_grad()
def sample(model, noise: Tensor, *, steps: int, eta: float = 0.0, generator: torch.Generator | None = None,
           callback: Callback | None = None, clip_x: bool | str = True) -> Tensor:
    """Sample ``x`` from ``noise`` (``z`` at the noise end, ``[B, C, F, H, W]``) in ``steps`` DDIM steps.

    ``clip_x``: ``True`` clips x̂ to [-1, 1], ``"dynamic"`` applies dynamic thresholding, ``False``
    leaves x̂ alone. ``callback(step, total, x_hat)`` runs after every step; an exception raised there
    stops sampling. Returns the final x̂ (float32).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    phis = sampling_angles(steps).tolist()
    z = noise.float()
    b = z.shape[0]
    x = z
    for i in range(steps):
        phi_t, phi_s = phis[i], phis[i + 1]
        v = model(z, torch.full((b,), phi_t, device=z.device)).float()
        x = x_from_v(z, v, torch.tensor(phi_t))
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"the model returned NaN/inf at step {i + 1}/{steps}; try float32 or bfloat16")
        if clip_x == "dynamic":
            x_mod = dynamic_threshold(x)
        elif clip_x:
            x_mod = x.clamp(-1, 1)
        else:
            x_mod = None
        if x_mod is None and eta == 0:
            z = angle_step(z, v, phi_t, phi_s)
        else:
            x = x if x_mod is None else x_mod
            z = ddim_step(z, x, phi_t, phi_s, eta, generator)
        if callback is not None:
            callback(i + 1, steps, x)
    return x
