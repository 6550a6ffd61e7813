"""Models that are not the pack's own — any diffusion model with its own noise schedule and prediction
(ε, v, x0 or flow velocity: ComfyUI's MODELs) — as the sampler's ``model(z, φ) → v̂``, in their latent space.

A host gives a denoiser in the model's own sampler coordinates and the scaling of those coordinates
(ComfyUI: comfy/model_sampling.py ``noise_scaling``): the state ``x = a(σ)·x0 + b(σ)·ε`` at noise level ``σ``
(variance exploding ``a = 1, b = σ``; flow ``a = 1 − σ, b = σ``). In angle form ``z = cos φ·x0 + sin φ·ε``:

    tan φ = b/a,   x = √(a² + b²)·z,   x̂0 = D(x, σ),   v̂ = (cos φ·z − x̂0)/sin φ

and the step grid is the model's own σ schedule (its shift included) converted to angles. Nothing here
knows the host: :class:`SigmaModel` takes plain callables, and :class:`LatentSpace` says how the model's
latents relate to the pixels of a clip (``vdm_core.tasks`` samples latents and observes pixels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .contract import Native

Denoise = Callable[[Tensor, Tensor], Tensor]
"""``D(x, sigma) → x̂0``: the model's clean prediction from its sampler state ``x`` (``[B, C, F, H, W]``) at
noise levels ``sigma`` (``[B]``), conditioning and guidance scale applied by the host."""
Session = Callable[[Callable[[Denoise], Tensor], tuple, list], Tensor]
"""``session(window, shape, sigmas) → window(denoise)``: the host's context for one window's sampling of a
sample of ``shape`` at the noise levels ``sigmas`` (descending, ending in 0), in which it calls ``window`` with
its denoiser (:meth:`SigmaModel.run`)."""


@dataclass(frozen=True)
class LatentSpace:
    """How a model's latents ``[B, C, T, h, w]`` relate to pixel clips ``[B, 3, F, H, W]`` in [-1, 1].

    ``decode``: latents → pixels, differentiable (the gradient of a pixel observation flows through it);
    ``1 + time·(T − 1)`` frames of ``h·scale × w·scale`` (a causal video VAE: latent 0 is frame 0 alone,
    latent i the frames ``time·(i − 1) + 1 … time·i``). ``decode_final``: the same for the finished clip,
    no gradient (the host may tile it to fit memory). ``encode``: pixels of ``1 + time·k`` frames → their
    ``k + 1`` latents, or None. ``causal``: the latents of the first ``1 + time·k`` frames do not depend on
    later frames, so frames known at the start of a clip are known exactly as latents.

    Where they run: ``decode`` inside :meth:`SigmaModel.run` (the host readies the decoder for gradients
    and memory there, with the model); ``decode_final`` and ``encode`` outside it (a host may load the VAE
    on its own for them, which must not happen between the model's calls).
    """

    decode: Callable[[Tensor], Tensor]
    decode_final: Callable[[Tensor], Tensor]
    channels: int
    time: int
    scale: int
    encode: Callable[[Tensor], Tensor] | None = None
    causal: bool = False

    def latent_frames(self, frames: int) -> int:
        """Latent frames that decode to at least ``frames`` frames."""
        return 1 + max(0, math.ceil((frames - 1) / self.time))

    def pixel_frames(self, latents: int) -> int:
        """Frames that ``latents`` latent frames decode to."""
        return 1 + self.time * (latents - 1)

    def latent_of(self, frame: int) -> int:
        """The latent frame that holds pixel frame ``frame``."""
        return 0 if frame == 0 else (frame - 1) // self.time + 1


class SigmaModel:
    """``model(z, φ) → v̂`` (``contract.HostedModel``, ``contract.LatentModel`` with a ``space``) of a denoiser
    ``D(x, σ) → x̂0`` with its own σ schedule.

    ``scaling(σ) → (a, b)``: the x0 and ε coefficients of the model's sampler state; ``sigma_min/max``: its
    range (σ is kept inside it); ``sigmas(steps)``: its own grid, descending, ending in 0 or not.
    ``session``: the host's context for a window's sampling (:data:`Session`); without one, ``denoise`` is
    used directly. ``space``: the model's :class:`LatentSpace` (None: it samples pixels). ``frames``/
    ``resolution``: its native window (latent frames) and tile (latent pixels), None for "the whole clip";
    ``channels``: of its samples. Sampling never clips x̂ to [-1, 1] (``clip_x``): latents are not images.
    """

    clip_x = False

    def __init__(self, scaling: Callable[[float], tuple[float, float]], sigma_min: float, sigma_max: float,
                 sigmas: Callable[[int], list[float]], *, channels: int, denoise: Denoise | None = None,
                 session: Session | None = None, space: LatentSpace | None = None,
                 frames: int | None = None, resolution: int | None = None, device=None):
        self.scaling, self.sigmas, self.denoise, self.space = scaling, sigmas, denoise, space
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        if not 0 <= self.sigma_min < self.sigma_max:
            raise ValueError(f"the model's noise levels must rise from sigma_min to sigma_max, got "
                             f"{self.sigma_min} and {self.sigma_max}")
        if not scaling(0.5 * (self.sigma_min + self.sigma_max))[1] > 0:
            raise ValueError("this model adds no noise at any level (its noise coefficient is 0): it is not a "
                             "diffusion model the sampler can drive")
        self._session = session
        self.config = Native(frames=frames, resolution=resolution, channels=channels)
        self.device = torch.device(device) if device is not None else None
        self.phi_min, self.phi_max = self.phi_of(max(self.sigma_min, 1e-12)), self.phi_of(self.sigma_max)

    def phi_of(self, sigma: float) -> float:
        """``φ = atan2(b, a)`` of noise level ``σ``."""
        a, b = self.scaling(float(sigma))
        return math.atan2(b, a)

    def sigma_of(self, phi: float) -> float:
        """The noise level of angle ``φ`` (clamped to the model's range), by bisection in float64 (``φ(σ)`` rises
        with σ for every family): the inverse of :meth:`phi_of` to the precision of ``φ``."""
        phi = float(phi)
        if phi >= self.phi_max:
            return self.sigma_max
        if phi <= self.phi_min:
            return self.sigma_min
        lo, hi = self.sigma_min, self.sigma_max
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.phi_of(mid) < phi else (lo, mid)
        return 0.5 * (lo + hi)

    def angles(self, steps: int) -> list[float]:
        """The model's own ``steps``-step grid as angles for ``sampling.ddim``: ``φ(σ_i)`` of its nonzero
        σ's, then a last angle below them (the loop's final state there is not used: it returns the last
        prediction, as a sampler stepping to σ = 0 does)."""
        sig = [float(s) for s in self.sigmas(int(steps))]
        sig = [s for s in sig if s > 0]
        if not sig:
            raise ValueError("the model's schedule gave no noise levels above 0")
        phis = []
        for s in sig:
            phi = self.phi_of(min(max(s, self.sigma_min), self.sigma_max))
            if not phis or phi < phis[-1]:  # repeated levels (some schedulers end on the same σ twice) once
                phis.append(phi)
        return phis + [phis[-1] / 2]

    def x0(self, z: Tensor, phi: float) -> Tensor:
        """``x̂0 = D(√(a² + b²)·z, σ(φ))``."""
        if self.denoise is None:
            raise RuntimeError("this model can only be sampled inside its host's session (SigmaModel.run)")
        sigma = self.sigma_of(phi)
        a, b = self.scaling(sigma)
        x = z * math.hypot(a, b)
        return self.denoise(x, torch.full((z.shape[0],), sigma, device=z.device, dtype=torch.float32)).to(z.dtype)

    def __call__(self, z: Tensor, phi: Tensor) -> Tensor:
        """``v̂ = (cos φ·z − x̂0)/sin φ`` (``phi``: ``[B]``, one angle for the batch, as the sampler gives)."""
        p = float(torch.as_tensor(phi).reshape(-1)[0])
        p = min(max(p, self.phi_min), self.phi_max)
        return (math.cos(p) * z - self.x0(z, p)) / math.sin(p)

    def run(self, fn: Callable[[], Tensor], shape: tuple, angles: list[float]) -> Tensor:
        """``fn()`` — one window's sampling of a sample of ``shape`` down ``angles`` (from :meth:`angles`) —
        inside the host's session, which is given the noise levels the loop evaluates the model at (every angle
        but the last) and then 0, as a host's own sampler would be, and calls back with its denoiser."""
        if self._session is None:
            return fn()
        sigmas = [self.sigma_of(p) for p in list(angles)[:-1]] + [0.0]

        def window(denoise: Denoise) -> Tensor:
            before, self.denoise = self.denoise, denoise
            try:
                return fn()
            finally:
                self.denoise = before

        return self._session(window, tuple(int(n) for n in shape), sigmas)
