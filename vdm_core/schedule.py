"""Truncated cosine noise schedule in angle form, and the v-parameterization.

Conventions (VDM eq. 1 in angle form; the v-parameterization of Salimans & Ho 2022, §4):

* ``z_φ = cos φ · x + sin φ · ε`` — variance preserving, ``α = cos φ``, ``σ = sin φ``.
* ``v_φ = dz/dφ = cos φ · ε − sin φ · x``.
* ``x̂ = cos φ · z − sin φ · v̂`` and ``ε̂ = sin φ · z + cos φ · v̂`` (exact inverses, no division).
* Time ``t ∈ [0, 1]``, ``t = 0`` clean. The cosine schedule truncated to log-SNR ``λ ∈ [−20, 20]``
  as in VDM (App. A) is linear in the angle: ``φ(t) = a·t + b`` with
  ``b = atan(exp(−λ_max/2))`` and ``a = atan(exp(−λ_min/2)) − b``; ``λ = −2·log tan φ``.

Angles are tensors of shape ``[B]``; they broadcast against video tensors ``[B, C, F, H, W]``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0
PHI_MIN = math.atan(math.exp(-LOGSNR_MAX / 2))  # clean end, ≈ 4.54e-5
PHI_MAX = math.atan(math.exp(-LOGSNR_MIN / 2))  # noise end, ≈ π/2 − 4.54e-5


def phi_of_t(t: Tensor) -> Tensor:
    """Angle ``φ(t) = a·t + b`` of the truncated cosine schedule, ``t ∈ [0, 1]``."""
    return PHI_MIN + (PHI_MAX - PHI_MIN) * t


def t_of_phi(phi: Tensor) -> Tensor:
    """Inverse of :func:`phi_of_t`."""
    return (phi - PHI_MIN) / (PHI_MAX - PHI_MIN)


def logsnr_of_phi(phi: Tensor) -> Tensor:
    """``λ = log(α²/σ²) = −2·log tan φ``."""
    return -2.0 * torch.log(torch.tan(phi))


def phi_of_logsnr(logsnr: Tensor) -> Tensor:
    """``φ = atan(exp(−λ/2))``, the inverse of :func:`logsnr_of_phi`."""
    return torch.atan(torch.exp(-0.5 * logsnr))


def sampling_angles(steps: int, device=None, power: int = 1) -> Tensor:
    """``steps + 1`` angles ``φ_i = PHI_MIN + (PHI_MAX − PHI_MIN)·(1 − i/steps)^power`` from the noise end
    ``PHI_MAX`` down to ``PHI_MIN``: uniform in φ (VDM's grid) for power 1; power 2 spaces the steps twice as far
    apart at the noise end and ever closer at the clean end (:data:`POSTERIOR_POWER`)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)
    return PHI_MIN + (PHI_MAX - PHI_MIN) * u ** power


POSTERIOR_POWER = 2
"""The grid of method ``posterior`` on the pack's own models. Its per-step update is exact for Gaussian data, so
the ODE solver's discretisation is its remaining error: with DDIM, uniform in φ, 32 steps shrink the spread of new
frames (content of std ``s`` takes shape near ``tan φ ≈ s``, one or two steps there) to 0.72–0.88 of the exact
conditional's on the AR(1) extension oracle, 0.87–0.92 with power 2 (docs/benchmarks.md, "The posterior method's
grid"); posterior steps it with DPM-Solver++(2M) (``sampling.ddim``'s ``second_order``): 1.01–1.04 there, 0.87–1.19
over the oracles of docs/benchmarks.md, "Second-order steps for posterior" (DDIM 0.74–0.92). The other methods keep
the uniform grid their auto weights were tuned on."""


LOW_NOISE_RATIO = 0.75
LOW_NOISE_FLOOR = 0.01
"""The grid of method ``posterior`` on a hosted model (:func:`filled_within`): every evaluated angle at least
``LOW_NOISE_RATIO`` of the one before, down to ``LOW_NOISE_FLOOR`` (the angle of a std-0.01 signal; a model whose
lowest level lies above it is evaluated there, ``external.SigmaModel``). Shifted host grids spend their steps at
high noise and stop far from σ = 0 (Wan's shift 8 at 32 steps: last angle 0.26, two steps below 0.5), where a new
frame's spread takes shape; the posterior's new frames kept 0.26–0.55 of the exact conditional's variance on the
AR(1) extension oracle there, 0.85–0.87 on the filled grid (docs/benchmarks.md, "The posterior method on a host's
grid"), 0.92–1.04 with DPM-Solver++(2M) steps through the real ComfyUI for every prediction type (docs/benchmarks.md,
"Second-order steps for posterior")."""


def filled(angles: list[float]) -> list[float]:
    """Descending evaluated angles with each gap split geometrically, so that every angle is at least
    :data:`LOW_NOISE_RATIO` of the one before, and continued so down to :data:`LOW_NOISE_FLOOR` (angles below it
    are kept as they are)."""
    out = [float(angles[0])]
    for phi in [float(a) for a in angles[1:]] + [LOW_NOISE_FLOOR]:
        top = out[-1]
        if phi >= top:
            continue
        pieces = math.ceil(math.log(phi / top) / math.log(LOW_NOISE_RATIO) - 1e-9)
        out += [top * (phi / top) ** (j / pieces) for j in range(1, pieces)] + [phi]
    return out


def filled_within(grid, steps: int) -> list[float]:
    """A grid of at most ``steps`` steps fine at low noise from a host's ``grid(k)`` (``k + 1`` descending angles,
    the last not evaluated, ``contract.HostedModel.angles``): :func:`filled` of ``grid(k)``'s evaluated angles for
    the largest ``k ≤ steps`` where that takes at most ``steps`` steps, followed by half its last angle (not
    evaluated); ``grid(steps)`` itself where none fits (below about 18–20 steps). Same cost as ``grid(steps)``:
    the host's high-noise steps are thinned to pay for the low-noise ones."""
    for k in range(int(steps), 0, -1):
        fine = filled(grid(k)[:-1])
        if len(fine) <= steps:
            return fine + [fine[-1] / 2]
    return grid(steps)


def broadcast(phi: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``[B]`` (or scalar) angle to broadcast against ``like`` (``[B, ...]``)."""
    phi = torch.as_tensor(phi, dtype=like.dtype, device=like.device)
    if phi.ndim == 0:
        return phi
    return phi.reshape(phi.shape[0], *([1] * (like.ndim - 1)))


def alpha_sigma(phi: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(α, σ) = (cos φ, sin φ)`` broadcast against ``like``."""
    p = broadcast(phi, like)
    return torch.cos(p), torch.sin(p)


def q_sample(x: Tensor, phi: Tensor, noise: Tensor) -> Tensor:
    """Forward process ``z_φ = cos φ · x + sin φ · ε`` (VDM eq. 1 in angle form)."""
    a, s = alpha_sigma(phi, x)
    return a * x + s * noise


def v_target(x: Tensor, noise: Tensor, phi: Tensor) -> Tensor:
    """``v_φ = cos φ · ε − sin φ · x`` (seed: ``v = ∇_φ z_φ``)."""
    a, s = alpha_sigma(phi, x)
    return a * noise - s * x


def x_from_v(z: Tensor, v: Tensor, phi: Tensor) -> Tensor:
    """``x̂ = cos φ · z − sin φ · v̂``."""
    a, s = alpha_sigma(phi, z)
    return a * z - s * v


def eps_from_v(z: Tensor, v: Tensor, phi: Tensor) -> Tensor:
    """``ε̂ = sin φ · z + cos φ · v̂``."""
    a, s = alpha_sigma(phi, z)
    return s * z + a * v


def eps_from_x(z: Tensor, x: Tensor, phi: Tensor) -> Tensor:
    """``ε̃ = (z − cos φ · x̃) / sin φ`` — use after x̂ was clipped or guided (safe: φ ≥ PHI_MIN)."""
    a, s = alpha_sigma(phi, z)
    return (z - a * x) / s
