"""The model contract: what the sampler and the jobs need of a model, written down once.

Every model is a :class:`VideoModel`, ``model(z, phi) → v̂`` (``z`` ``[B, C, F, H, W]``, ``phi`` a ``[B]``
tensor of angles, α = cos φ, σ = sin φ; the result has ``z``'s shape). What a model may add:

* :class:`SizedModel` — ``config`` (:class:`NativeSize`): the frame count, resolution and channels it was
  made for, which size the time windows and spatial tiles (``unet3d.UNet3D``);
* :class:`HostedModel` — its own step grid (``angles(steps)``), a host session that each window's sampling
  runs inside (``run(fn, shape, angles)``), a device, and whether x̂ is an image to clip (``clip_x``)
  (``external.SigmaModel``: a host's denoiser with its own noise schedule);
* :class:`LatentModel` — a :class:`~vdm_core.external.LatentSpace` (``space``): it samples latents and the
  jobs observe pixels through the decoder.

:func:`capabilities` reads all of it in one place; nothing else probes a model's attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from .schedule import POSTERIOR_POWER, filled_within, sampling_angles

if TYPE_CHECKING:
    from .external import LatentSpace


@runtime_checkable
class VideoModel(Protocol):
    """``model(z, phi) → v̂``: the v-prediction of a noisy clip, ``v = cos φ·ε − sin φ·x`` (Salimans & Ho 2022,
    §4; ``schedule.v_target``)."""

    def __call__(self, z: Tensor, phi: Tensor) -> Tensor: ...


@runtime_checkable
class NativeSize(Protocol):
    """The clip size a model was made for: ``frames`` per window and ``resolution`` (square tile side) in the
    space it samples (latent frames and pixels for a latent model), None for "any"; ``channels`` of its samples."""

    frames: int | None
    resolution: int | None
    channels: int


@dataclass(frozen=True)
class Native:
    """A :class:`NativeSize` for models without a config of their own (``external.SigmaModel``, test oracles)."""

    frames: int | None = None
    resolution: int | None = None
    channels: int = 3


@runtime_checkable
class SizedModel(VideoModel, Protocol):
    config: NativeSize


@runtime_checkable
class HostedModel(VideoModel, Protocol):
    """A model sampled inside its host's session, on its own step grid."""

    clip_x: bool
    device: torch.device | None

    def angles(self, steps: int) -> list[float]:
        """``steps + 1`` decreasing angles from the noise end (``sampling.ddim``'s grid)."""

    def run(self, fn: Callable[[], Tensor], shape: tuple[int, ...], angles: list[float]) -> Tensor:
        """``fn()`` — one window's sampling of a ``shape`` sample down ``angles`` — inside the host's session."""


@runtime_checkable
class LatentModel(HostedModel, Protocol):
    space: LatentSpace


@dataclass(frozen=True)
class Capabilities:
    """What :func:`capabilities` read off a model.

    ``frames``/``resolution``/``channels``: its native size (:class:`NativeSize`; None where it has none);
    ``device``: where it runs (None: unknown, the caller's choice); ``angles(steps, method)``: its step grid for a
    sampling method (the pack's cosine grid, ``schedule.sampling_angles``, power ``schedule.POSTERIOR_POWER`` for
    method posterior; a hosted model's own grid, filled at low noise by ``schedule.filled_within`` for method
    posterior); ``clip_x``: x̂ is an image in [-1, 1], clipped and previewed; ``run``: its host session (None:
    sample directly); ``space``: its latent space (None: it samples the clip itself)."""

    frames: int | None
    resolution: int | None
    channels: int | None
    device: torch.device | None
    angles: Callable[[int, str], list[float]]
    clip_x: bool
    run: Callable[[Callable[[], Tensor], tuple[int, ...], list[float]], Tensor] | None
    space: LatentSpace | None


def _cosine_grid(steps: int, method: str) -> list[float]:
    return sampling_angles(steps, power=POSTERIOR_POWER if method == "posterior" else 1).tolist()


def _hosted_grid(model: HostedModel) -> Callable[[int, str], list[float]]:
    return lambda steps, method: filled_within(model.angles, steps) if method == "posterior" else model.angles(steps)


def capabilities(model) -> Capabilities:
    """The :class:`Capabilities` of ``model``; raises TypeError unless it is a :class:`VideoModel`."""
    if not isinstance(model, VideoModel):
        raise TypeError(f"a model must be callable as model(z, phi) -> v, got {type(model).__name__}")
    size = model.config if isinstance(model, SizedModel) and isinstance(model.config, NativeSize) else None
    hosted = isinstance(model, HostedModel)
    device = model.device if hosted else None
    if isinstance(model, torch.nn.Module):
        device = next((p.device for p in model.parameters()), None)
    return Capabilities(
        frames=size.frames if size else None, resolution=size.resolution if size else None,
        channels=size.channels if size else None, device=torch.device(device) if device is not None else None,
        angles=_hosted_grid(model) if hosted else _cosine_grid, clip_x=model.clip_x if hosted else True,
        run=model.run if hosted else None, space=model.space if isinstance(model, LatentModel) else None)
