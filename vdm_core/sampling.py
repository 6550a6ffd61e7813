"""DDIM sampling of a v-prediction model in angle form (seed notes; PD; vdm-reference §1.4–1.5, §1.10).

One step from angle ``φ_t`` to ``φ_s < φ_t``:

* η = 0, unmodified prediction: ``z_s = cos(φ_s − φ_t)·z_t + sin(φ_s − φ_t)·v̂`` (the seed's form;
  ``sin(φ_s − φ_t) < 0``).
* In general, with ``x̃`` the (clipped / guided) prediction and ``ε̃ = (z_t − α_t x̃)/σ_t``:
  ``z_s = α_s x̃ + sqrt(σ_s² − c²)·ε̃ + c·ξ`` with ``c = η·(σ_s/σ_t)·sqrt(1 − α_t²/α_s²)``
  (DDIM eq. 16 in α/σ form; η = 1 is ancestral sampling, equal to VDM's γ = 0 step).

Conditioning on an :class:`~vdm_core.guidance.Observation` (``y = A(x)``) is done per step by
reconstruction guidance (VDM eq. 7/8), replacement (VDM §3.1), or both; see :func:`sample`.

The model is any callable ``model(z, phi) -> v̂`` (``z``: ``[B, C, F, H, W]``, ``phi``: ``[B]``).
All sampler arithmetic is float32 whatever dtype the model computes in.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .guidance import (DEFAULT_GUIDANCE_WEIGHT, Observation, check_observation, reconstruction_guided_x,
                       replace_observed, set_observed)
from .schedule import sampling_angles

Callback = Callable[[int, int, Tensor], None]


def dynamic_threshold(x: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding: per clip, ``s = max(1, quantile(|x|, p))``, ``x ← clip(x, −s, s)/s``."""
    s = torch.quantile(x.flatten(1).abs().float(), percentile, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x.ndim - 1)))
    return x.clamp(-s, s) / s


def ddim_coefficients(phi_t: float, phi_s: float, eta: float = 0.0) -> tuple[float, float, float]:
    """``(α_s, sqrt(σ_s² − c²), c)`` of the step ``z_s = α_s x̃ + sqrt(σ_s² − c²)·ε̃ + c·ξ``.

    ``c = η·(σ_s/σ_t)·sqrt(1 − α_t²/α_s²)``, capped at ``σ_s`` (η > 1 cannot add more noise than that).
    """
    a_s, s_s = math.cos(phi_s), math.sin(phi_s)
    a_t, s_t = math.cos(phi_t), math.sin(phi_t)
    c = eta * (s_s / s_t) * math.sqrt(max(0.0, 1.0 - (a_t / a_s) ** 2)) if eta > 0 else 0.0
    c = min(c, s_s)
    return a_s, math.sqrt(max(0.0, s_s * s_s - c * c)), c


def _randn(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``N(0, I)`` float32 noise drawn on the generator's device (CPU by default), moved to ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=device).to(like.device)


def ddim_step(z: Tensor, x: Tensor, phi_t: float, phi_s: float, eta: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    """``z_s = α_s x̃ + sqrt(σ_s² − c²)·ε̃ + c·ξ`` with ``ε̃`` recomputed from ``x̃`` (see module doc)."""
    eps = (z - math.cos(phi_t) * x) / math.sin(phi_t)  # ε̃ = (z_t − α_t x̃)/σ_t, angles in float64
    a_s, e, c = ddim_coefficients(phi_t, phi_s, eta)
    z_s = a_s * x + e * eps
    if c > 0:
        z_s = z_s + c * _randn(z.shape, z, generator).to(z.dtype)
    return z_s


def angle_step(z: Tensor, v: Tensor, phi_t: float, phi_s: float) -> Tensor:
    """The seed's angle-form DDIM step ``z_s = cos(φ_s − φ_t)·z_t + sin(φ_s − φ_t)·v̂`` (η = 0)."""
    d = phi_s - phi_t
    return math.cos(d) * z + math.sin(d) * v


def _clip(x: Tensor, clip_x: bool | str) -> Tensor | None:
    if clip_x == "dynamic":
        return dynamic_threshold(x)
    if clip_x is True:
        return x.clamp(-1, 1)
    return None


@torch.no_grad()
def sample(model, noise: Tensor, *, steps: int, eta: float = 0.0, generator: torch.Generator | None = None,
           callback: Callback | None = None, clip_x: bool | str = True, observation: Observation | None = None,
           guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT, method: str = "reconstruction") -> Tensor:
    """Sample ``x`` from ``noise`` (``z`` at the noise end, ``[B, C, F, H, W]``) in ``steps`` DDIM steps.

    ``clip_x``: ``True`` clips x̂ to [-1, 1], ``"dynamic"`` applies dynamic thresholding, ``False``
    leaves x̂ alone. ``callback(step, total, x_hat)`` runs after every step; an exception raised there
    stops sampling. ``generator`` drives every random draw (η > 0 noise, replacement noise).

    With an ``observation`` (``y = A(x)``, see :mod:`vdm_core.guidance`), each step conditions on it by
    ``method``:

    * ``"reconstruction"``: ``x̃ = x̂ − (w_r·α_t/2)·∇_{z_t}‖y − A(x̂(z_t))‖²`` (sum of squares; gradient
      w.r.t. all of ``z_t``, one backward pass through the model per step), any differentiable ``A``.
      Observed frames of the result are the model's, not overwritten (their error falls as w_r grows).
    * ``"replacement"``: observed frames of ``z_t`` ← fresh ``α_t y + σ_t ξ`` every step, and of ``x̃``
      ← ``y``. Frame selections only.
    * ``"both"`` (VDM): replacement plus guidance of the generated frames; since ``x̃``'s observed
      frames are then set to ``y``, the full gradient acts exactly as VDM's ``∇_{z^b_t}``. The frames
      replaced are ``observation.selection``: all of a frame selection, the exact part of a
      :func:`~vdm_core.guidance.combine`, none of e.g. a downsample (then ``"both"`` is reconstruction
      here; ``tasks.run`` then also sets the block means, ``guidance.match_block_means``).

    ``guidance_weight`` is ``w_r`` (``>= 0``; 0 turns guidance off). Near the data end ``∂x̂/∂z ≈ I``,
    so on the observed values ``A(x̃) − y ≈ (1 − g)·(A(x̂) − y)`` with gain ``g = w_r·‖A Aᵀ‖`` (1 for a
    frame selection, ``1/s²`` for area downsampling by ``s``): ``g > 2`` overshoots in the last steps.
    On the exact model of Gaussian clips (tests) ``A(x)`` stays close to ``y`` with η = 0 up to
    ``g ≈ 8`` at 50 steps, but diverges from ``g ≈ 4`` with η = 1. With ``"both"`` the observed frames
    are replaced, only the generated frames are guided, and this does not arise. Then ``x̃`` is clipped (per
    ``clip_x``), ``ε̃ = (z_t − α_t x̃)/σ_t`` recomputed, and the DDIM step taken. Works under
    ``torch.inference_mode()`` if the model was built outside it. Returns the final x̃ (float32).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if not (clip_x is True or clip_x is False or clip_x == "dynamic"):
        raise ValueError(f"clip_x must be True, False or 'dynamic', got {clip_x!r}")
    if guidance_weight < 0:
        raise ValueError(f"guidance_weight must be >= 0, got {guidance_weight}")
    guide, known = False, None
    if observation is not None:
        check_observation(observation, noise, method)
        guide = method in ("reconstruction", "both") and guidance_weight > 0
        known = observation.selection if method != "reconstruction" else None  # frames to replace
    phis = sampling_angles(steps).tolist()
    z = noise.float()
    b = z.shape[0]
    x = z
    for i in range(steps):
        phi_t, phi_s = phis[i], phis[i + 1]
        if known is not None:
            n_obs = (b, *known.y.shape[1:])
            z = replace_observed(z, known, phi_t, _randn(n_obs, z, generator))
        if guide:
            v = None
            x = reconstruction_guided_x(model, z, phi_t, observation, guidance_weight)
        else:
            v = model(z, torch.full((b,), phi_t, device=z.device)).float()
            x = math.cos(phi_t) * z - math.sin(phi_t) * v  # x̂ = α z − σ v̂
        if not torch.isfinite(x).all():
            what = "the guided prediction" if guide else "the model"
            raise FloatingPointError(
                f"{what} returned NaN/inf at step {i + 1}/{steps}; run the model in float32 or bfloat16"
                + (" or lower guidance_weight" if guide else "")
            )
        if known is not None:
            x = set_observed(x, known)
        x_mod = _clip(x, clip_x)
        if x_mod is None and eta == 0 and v is not None and known is None:
            z = angle_step(z, v, phi_t, phi_s)
        else:
            x = x if x_mod is None else x_mod
            z = ddim_step(z, x, phi_t, phi_s, eta, generator)
        if callback is not None:
            callback(i + 1, steps, x)
    return x
