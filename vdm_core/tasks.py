"""The job API: generate, extend, interpolate and upscale clips with one guided sampler.

Every job is an observation ``y = A(x)`` of the output clip (README.md): extension knows the first
frames, interpolation knows every k-th frame, upscaling knows every frame at low resolution (area
average, ``guidance.downsample``); interpolate + upscale knows the keyframes at low resolution. A job is
planned as time windows and spatial tiles (``vdm_core.planning``, ``vdm_core.tiling``) and sampled window by
window (``vdm_core.execution``); a model with a latent space samples latents and observes pixels
(``vdm_core.latent_jobs``). What a model offers is read once, by ``contract.capabilities``.

Clips are ``[C, F, H, W]`` in [-1, 1]; results are CPU float32. Known input frames are returned unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .contract import capabilities
from .execution import Progress, device_of, observation_of, sample_plan
from .latent_jobs import generate_latent, run_latent
from .planning import Job, generate_plan, plan
from .settings import AUTO_METHOD, DEFAULT_ITERATIONS, DEFAULT_STEPS, SamplerSettings, whole

__all__ = ["Job", "SamplerSettings", "extend", "generate", "interpolate", "run", "run_unconditional", "upscale"]


def run(model, job: Job, settings: SamplerSettings = SamplerSettings(), *, callback: Progress | None = None) -> Tensor:
    """Sample ``job`` with ``model``; returns a CPU float32 ``[C, F_out, H_out, W_out]`` clip in [-1, 1].

    ``settings.method``: ``auto`` (``settings.AUTO_METHOD``: ``posterior``) | ``reconstruction`` | ``replacement``
    | ``both`` | ``posterior`` | ``consistency`` (``sampling.conditioned``). ``both`` (VDM's): frames known
    exactly are replaced every step and the rest guided; frames known at low resolution are guided, then projected
    so their block means equal the input (``guidance.match_block_means``). Upscaling needs guidance (not
    ``replacement``). ``callback``: :data:`vdm_core.execution.Progress`.
    """
    caps = capabilities(model)
    device = device_of(caps, job.clip.device)
    if caps.space is not None:
        return run_latent(model, caps, job, settings, progress=callback, device=device)
    clip = job.clip.detach().float().cpu()
    if caps.channels is not None and caps.channels != clip.shape[0]:
        raise ValueError(f"the clip has {clip.shape[0]} channels but the model makes {caps.channels}")
    p = plan(caps, job)
    out = torch.zeros(p.shape)
    f, k, s = clip.shape[1], job.multiplier, job.factor
    if job.new_frames:
        out[:, :f] = clip
    elif s == 1:
        out[:, ::k] = clip
    low = clip if s > 1 else None
    return sample_plan(model, caps, p, out, lambda win: observation_of(win, out, low, k, s, device),
                       settings.for_job(s, bool(job.new_frames)), progress=callback, device=device)


def run_unconditional(model, shape: tuple[int, int, int], settings: SamplerSettings = SamplerSettings(), *,
                      channels: int | None = None, context: int | None = None, window: int | None = None,
                      tile: int | None = None, callback: Progress | None = None) -> Tensor:
    """An unconditional ``[C, F, H, W]`` clip of ``shape`` ``(F, H, W)``. Longer than a window: the first window
    is unconditional, the rest extend it (``context`` known frames each; method auto: ``both`` for the first, on
    the model's own grid, ``posterior`` for the rest, ``settings.resolved_method``); larger than a tile: tiled."""
    caps = capabilities(model)
    if channels is None:
        channels = caps.channels or 3
    elif caps.channels is not None and channels != caps.channels:
        raise ValueError(f"channels={channels} but the model makes {caps.channels}")
    frames, height, width = shape
    settings = settings.for_job(extend=True, new_clip=True)  # windows after the first extend it
    device = device_of(caps, None)
    if caps.space is not None:
        return generate_latent(model, caps, frames, height, width, window=window, context=context, settings=settings,
                               progress=callback, device=device)
    p = generate_plan(caps, frames, height, width, channels=channels, context=context, window=window, tile=tile)
    out = torch.zeros(p.shape)
    return sample_plan(model, caps, p, out, lambda win: observation_of(win, out, None, 1, 1, device), settings,
                       progress=callback, device=device)


def _settings(steps, eta, guidance_weight, method, seed, iterations=DEFAULT_ITERATIONS) -> SamplerSettings:
    return SamplerSettings(steps=steps, eta=eta, guidance_weight=guidance_weight, method=method, seed=seed,
                           iterations=iterations)


def generate(model, frames: int, height: int, width: int, *, channels: int | None = None, steps: int = DEFAULT_STEPS,
             eta: float = 0.0, seed: int = 0, callback: Progress | None = None, context: int | None = None,
             window: int | None = None, tile: int | None = None, guidance_weight: float | None = None,
             method: str = AUTO_METHOD) -> Tensor:
    """An unconditional ``[C, frames, height, width]`` clip (:func:`run_unconditional`)."""
    return run_unconditional(model, (frames, height, width), _settings(steps, eta, guidance_weight, method, seed),
                             channels=channels, context=context, window=window, tile=tile, callback=callback)


def extend(model, clip: Tensor, new_frames: int, *, context: int | None = None, window: int | None = None,
           tile: int | None = None, steps: int = DEFAULT_STEPS, eta: float = 0.0, guidance_weight: float | None = None,
           method: str = AUTO_METHOD, seed: int = 0, callback: Progress | None = None,
           iterations: int = DEFAULT_ITERATIONS) -> Tensor:
    """``clip`` followed by ``new_frames`` new frames: ``[C, F + new_frames, H, W]``; the input frames
    are returned unchanged."""
    whole("new_frames", new_frames, 1, "extend adds at least one frame")
    job = Job(clip, new_frames=new_frames, context=context, window=window, tile=tile)
    return run(model, job, _settings(steps, eta, guidance_weight, method, seed, iterations), callback=callback)


def interpolate(model, clip: Tensor, multiplier: int, *, window: int | None = None, overlap: int | None = None,
                tile: int | None = None, steps: int = DEFAULT_STEPS, eta: float = 0.0,
                guidance_weight: float | None = None, method: str = AUTO_METHOD, seed: int = 0,
                callback: Progress | None = None, iterations: int = DEFAULT_ITERATIONS) -> Tensor:
    """``[C, (F − 1)·multiplier + 1, H, W]``: the input frames at 0, k, 2k, … and new frames between."""
    whole("multiplier", multiplier, 2, "multiplier 2 doubles the frame rate")
    job = Job(clip, multiplier=multiplier, window=window, overlap=overlap, tile=tile)
    return run(model, job, _settings(steps, eta, guidance_weight, method, seed, iterations), callback=callback)


def upscale(model, clip: Tensor, factor: int, *, window: int | None = None, overlap: int | None = None,
            tile: int | None = None, steps: int = DEFAULT_STEPS, eta: float = 0.0, guidance_weight: float | None = None,
            method: str = AUTO_METHOD, seed: int = 0, callback: Progress | None = None,
            iterations: int = DEFAULT_ITERATIONS) -> Tensor:
    """``[C, F, H·factor, W·factor]`` whose area average by ``factor`` matches ``clip`` (VDM eq. 8)."""
    whole("factor", factor, 2, "factor 2 doubles width and height")
    job = Job(clip, factor=factor, window=window, overlap=overlap, tile=tile)
    return run(model, job, _settings(steps, eta, guidance_weight, method, seed, iterations), callback=callback)
