"""Observations ``y = A(x)``: what a job knows about the clip it samples (VDM §3.1, eq. 7–8).

Every conditional job is an :class:`Observation`: the known values ``y``, a differentiable operator
``A`` mapping a clip ``x`` (``[B, C, F, H, W]``) to ``y``'s shape and, where ``A`` has one, the
projection onto the clips that agree with ``y``.

* Extension / interpolation: :func:`select_frames` (``A`` picks frames ``indices`` of an ``F``-frame clip).
* Upscaling: :func:`downsample` (``A`` = :func:`area_downsample` by ``factor``).
* Both at once (known keyframes at low resolution): ``select_frames(downsample(keys, s), indices, F)``.
* Some frames known exactly and others another way (an upscaling window that overlaps frames an
  earlier window made): :func:`combine`; method ``both`` replaces the exact frames and guides the rest.

How a sampler is conditioned on an observation (reconstruction guidance, VDM eq. 7/8; replacement,
VDM §3.1; the final projection) is :mod:`vdm_core.sampling`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

@dataclass(frozen=True)
class Observation:
    """What is known about the clip being sampled: ``y = operator(x_true)``.

    ``y``: observed values. ``operator``: differentiable ``A`` from ``[B, C, F, H, W]`` to ``y.shape``
    (a batch of 1 in ``y`` broadcasts over the sampled batch). ``num_frames``: ``F`` of the sampled clip.
    ``frame_indices``: set only when ``A`` is a pure frame selection ``x[:, :, frame_indices]``; then
    ``y`` is ``[B, C, len(frame_indices), H, W]`` and the replacement method is possible.
    ``exact``: set by :func:`combine` only: the frame-selection part of a combined observation.
    ``project``: ``x ↦`` the clip nearest to ``x`` (L2) with ``A(x) = y`` (``x + A⁺(y − A x)``), or None
    where ``A`` has no pseudo-inverse.
    """

    y: Tensor
    operator: Callable[[Tensor], Tensor]
    num_frames: int
    frame_indices: tuple[int, ...] | None = None
    exact: Observation | None = None
    project: Callable[[Tensor], Tensor] | None = None

    @property
    def selection(self) -> Observation | None:
        """The frames this observation knows exactly, as a frame selection (itself when it is one,
        ``exact`` for a :func:`combine`), or None: what replacement overwrites."""
        return self if self.frame_indices is not None else self.exact

    def __post_init__(self):
        if not isinstance(self.y, Tensor):
            raise TypeError(f"Observation.y must be a torch.Tensor, got {type(self.y).__name__}")
        if not callable(self.operator):
            raise TypeError("Observation.operator must be a callable A(x) -> y")
        if int(self.num_frames) < 1:
            raise ValueError(f"Observation.num_frames must be >= 1, got {self.num_frames}")
        if self.frame_indices is not None:
            idx = _check_indices(self.frame_indices, self.num_frames)
            if self.y.ndim != 5 or self.y.shape[2] != len(idx):
                raise ValueError(
                    f"a frame selection of {len(idx)} frames needs y of shape [B, C, {len(idx)}, H, W], "
                    f"got {tuple(self.y.shape)}"
                )
            object.__setattr__(self, "frame_indices", idx)


def _check_indices(indices, num_frames: int) -> tuple[int, ...]:
    idx = tuple(int(i) for i in indices)
    if not idx:
        raise ValueError("frame indices must name at least one frame")
    if len(set(idx)) != len(idx):
        raise ValueError(f"frame indices must be distinct, got {idx}")
    bad = [i for i in idx if not 0 <= i < num_frames]
    if bad:
        raise ValueError(f"frame indices {bad} are outside a clip of {num_frames} frames (0..{num_frames - 1})")
    return idx


def area_downsample(x: Tensor, factor: int) -> Tensor:
    """Mean over ``factor × factor`` pixel blocks of every frame: ``[B, C, F, H, W] -> [B, C, F, H/f, W/f]``.

    Linear; its adjoint is nearest upsampling divided by ``factor²``.
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"downsample factor must be >= 1, got {factor}")
    if x.ndim != 5:
        raise ValueError(f"expected a clip batch [B, C, F, H, W], got shape {tuple(x.shape)}")
    b, c, f, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"frame size {h}x{w} is not divisible by the downsample factor {factor}")
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    small = F.avg_pool2d(frames, factor)
    return small.reshape(b, f, c, h // factor, w // factor).permute(0, 2, 1, 3, 4)


def downsample(y: Tensor, factor: int) -> Observation:
    """Every frame known at ``1/factor`` resolution: ``y`` is ``[B, C, F, h, w]``, ``A = area_downsample(·, factor)``.

    The sampled clip is ``[B, C, F, h·factor, w·factor]``. Guidance pulls the sample towards clips whose
    block means equal ``y``, so ``y`` should have been made by area averaging (VDM eq. 8 observes area averages).
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"downsample factor must be >= 1, got {factor}")
    if not isinstance(y, Tensor) or y.ndim != 5:
        raise ValueError(f"downsample: y must be a low-resolution clip batch [B, C, F, h, w], got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    return Observation(y=y, operator=lambda x: area_downsample(x, factor), num_frames=y.shape[2],
                       project=lambda x: match_block_means(x, y, factor))


def match_block_means(x: Tensor, y: Tensor, factor: int) -> Tensor:
    """The clip nearest to ``x`` (L2) whose area average by ``factor`` is ``y``: ``x + A⁺(y − A x)``.

    ``x``: ``[B, C, F, H, W]``, ``y``: ``[B, C, F, H/f, W/f]``. ``A = area_downsample`` has
    ``A Aᵀ = I/f²``, so ``A⁺ = f²·Aᵀ`` = nearest upsampling: each block is shifted by its mean's error.
    ``I − A⁺A`` is an orthogonal projector, so the result is never farther than ``x`` from any clip
    whose block means are ``y`` (the truth of an upscaling job).
    """
    r = y.to(x) - area_downsample(x, factor)
    return x + r.repeat_interleave(factor, dim=3).repeat_interleave(factor, dim=4)


def select_frames(y: Tensor | Observation, indices, num_frames: int) -> Observation:
    """Known frames at positions ``indices`` of a ``num_frames``-frame clip.

    ``y``: ``[B, C, len(indices), H, W]``, the known frames in the order of ``indices`` (extension:
    ``range(n)``; interpolation: ``0, k, 2k, …``); then ``A(x) = x[:, :, indices]`` and replacement is
    possible. ``y`` may instead be an :class:`Observation` of those known frames (e.g.
    ``downsample(low_res_keys, s)``): then ``A(x) = y.operator(x[:, :, indices])`` — the way to compose.
    """
    idx = _check_indices(indices, int(num_frames))
    if isinstance(y, Observation):
        inner = y
        if inner.num_frames != len(idx):
            raise ValueError(
                f"select_frames: the inner observation describes {inner.num_frames} frames but "
                f"{len(idx)} indices were given"
            )
        project = None
        if inner.project is not None:
            def project(x: Tensor) -> Tensor:
                i = torch.tensor(idx, device=x.device)
                return x.index_copy(2, i, inner.project(x[:, :, list(idx)]))
        return Observation(y=inner.y, operator=lambda x: inner.operator(x[:, :, list(idx)]),
                           num_frames=int(num_frames), project=project)
    if not isinstance(y, Tensor) or y.ndim != 5:
        raise ValueError(f"select_frames: y must be the known frames [B, C, {len(idx)}, H, W] or an Observation")
    def project(x: Tensor) -> Tensor:
        i = torch.tensor(idx, device=x.device)
        return x.index_copy(2, i, y.to(device=x.device, dtype=x.dtype).expand(x.shape[0], *y.shape[1:]))

    return Observation(y=y, operator=lambda x: x[:, :, list(idx)], num_frames=int(num_frames),
                       frame_indices=idx, project=project)


def combine(exact: Observation, other: Observation) -> Observation:
    """Frames known exactly (``exact``, a :func:`select_frames` of known frames) and ``other``, any
    observation of the same clip, as one: ``y`` and ``A(x)`` are both parts flattened and concatenated,
    so ``‖y − A(x)‖² = ‖y_e − A_e(x)‖² + ‖y_o − A_o(x)‖²``. Method ``both`` replaces ``exact``'s frames
    and guides with the whole; ``replacement`` alone cannot honour ``other``. The projection is both
    parts' in turn (exact when they observe different frames, as time windows do)."""
    if exact.frame_indices is None:
        raise ValueError("combine: 'exact' must be a frame selection (select_frames of known frames)")
    if exact.num_frames != other.num_frames:
        raise ValueError(f"combine: the observations describe clips of {exact.num_frames} and "
                         f"{other.num_frames} frames; they must describe the same clip")

    def operator(x: Tensor) -> Tensor:
        return torch.cat([exact.operator(x).flatten(1), other.operator(x).flatten(1)], dim=1)

    y_e, y_o = exact.y, other.y
    b = max(y_e.shape[0], y_o.shape[0])
    y = torch.cat([y_e.expand(b, *y_e.shape[1:]).flatten(1), y_o.expand(b, *y_o.shape[1:]).flatten(1)], dim=1)
    project = None
    if other.project is not None:
        def project(x: Tensor) -> Tensor:
            return exact.project(other.project(x))
    return Observation(y=y, operator=operator, num_frames=exact.num_frames, exact=exact, project=project)


def operator_gain(operator: Callable[[Tensor], Tensor], x: Tensor, iters: int = 6, seed: int = 0) -> float:
    """``‖J‖²``, the largest eigenvalue of ``JᵀJ`` for ``J = ∂A/∂x`` at ``x``: the gain of reconstruction
    guidance on the observed values (``sampling.conditioned``). Power iteration ``v ← JᵀJ v``, with ``J v``
    by a forward difference and ``Jᵀ u`` by autograd; exact for a linear ``A``."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen).to(x)
    v = v / v.norm()
    h = 1e-2 * max(1.0, float(x.detach().abs().mean()))
    gain = 0.0
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        base = operator(x).detach()
        for _ in range(iters):
            jv = (operator(x + h * v).detach() - base) / h
            xx = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(operator(xx), xx, grad_outputs=jv)
            gain = float(g.norm())
            if gain == 0:
                return 0.0
            v = g / gain
    return gain


def scaled(observation: Observation, factor: float) -> Observation:
    """The observation with ``y`` and ``A`` multiplied by ``√factor``: its term ``‖y − A(x)‖²`` in a sum of
    observations (:func:`combine`) weighs ``factor`` times as much. Its projection, if any, is unchanged."""
    r = factor ** 0.5
    inner = observation.operator
    return Observation(y=observation.y * r, operator=lambda x: inner(x) * r, num_frames=observation.num_frames,
                       project=observation.project)


def check_observation(observation: Observation, noise: Tensor) -> None:
    """Raise ``ValueError`` unless ``observation`` fits a sampling of ``noise`` (``[B, C, F, H, W]``)."""
    if not isinstance(observation, Observation):
        raise TypeError(f"observation must be a vdm_core.guidance.Observation, got {type(observation).__name__}")
    if noise.ndim != 5:
        raise ValueError(f"noise must be [B, C, F, H, W], got shape {tuple(noise.shape)}")
    if observation.num_frames != noise.shape[2]:
        raise ValueError(
            f"the observation describes a clip of {observation.num_frames} frames but noise has "
            f"{noise.shape[2]} frames; make the noise [B, C, {observation.num_frames}, H, W]"
        )
    y = observation.y
    if y.shape[0] not in (1, noise.shape[0]):
        raise ValueError(f"observation y has batch {y.shape[0]} but noise has batch {noise.shape[0]} "
                         f"(y's batch must equal it or be 1)")
    with torch.no_grad():
        try:
            ay = observation.operator(torch.zeros_like(noise, dtype=torch.float32))
        except Exception as e:  # the operator's own complaint, with what was asked of it
            raise ValueError(f"the observation operator cannot be applied to a clip of shape "
                             f"{tuple(noise.shape)}: {e}") from e
    if ay.shape[1:] != y.shape[1:] or ay.shape[0] != noise.shape[0]:
        raise ValueError(
            f"the observation operator maps a clip of shape {tuple(noise.shape)} to {tuple(ay.shape)}, "
            f"which does not match y of shape {tuple(y.shape)} (check frame count, size and factor)"
        )


