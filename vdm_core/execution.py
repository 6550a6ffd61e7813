"""Executing a plan: each time window sampled in order with what it knows (``vdm_core.planning``).

A window's observation holds what is known about its frames: input frames and frames made by earlier windows
exactly (``guidance.select_frames``), frames known only at low resolution through the downsampler
(``guidance.downsample``), both at once with ``guidance.combine``. Noise comes from a CPU ``torch.Generator``
seeded with ``seed + window index`` and is then moved to the model's device: the same seed gives the same
clip on any device.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor

from . import guidance, sampling
from .contract import Capabilities
from .planning import Plan, Window
from .settings import SamplerSettings, resolved_method
from .tiling import TiledModel

Progress = Callable[[float, int, "Tensor | None"], None]
"""``progress(done, total, preview)``: ``done`` of ``total`` steps of the whole job (its grid's steps per window:
``steps``, or fewer on a host's grid; a fraction of a step as the tiles of a tiled step finish); ``preview`` is x̂
of the current window, ``[C, F, H, W]`` in [-1, 1] on the CPU, at the end of each step (None for latents and
within a step). Raising stops sampling."""


def device_of(caps: Capabilities, fallback) -> torch.device:
    """The model's device, else ``fallback`` (or the CPU)."""
    dev = caps.device if caps.device is not None else fallback
    return torch.device(dev if dev is not None else "cpu")


def observation_of(win: Window, out: Tensor, low: Tensor | None, k: int, s: int, device) -> guidance.Observation | None:
    """What window ``win`` knows of a pixel job: its exact frames (``out``'s, input or made by earlier windows)
    selected, its low-resolution frames (``low``'s keyframe ``i // k`` for output frame ``i``, ``1/s`` of the
    size) through the downsampler; :func:`guidance.combine` when it has both."""
    n, exact, lows = win.stop - win.start, None, None
    if win.exact:
        y = out[:, list(win.exact)].unsqueeze(0).to(device)
        exact = guidance.select_frames(y, tuple(i - win.start for i in win.exact), n)
    if win.low:
        y = low[:, [i // k for i in win.low]].unsqueeze(0).to(device)
        lows = guidance.downsample(y, s)
        if len(win.low) < n:
            lows = guidance.select_frames(lows, tuple(i - win.start for i in win.low), n)
    if exact is not None and lows is not None:
        return guidance.combine(exact, lows)
    return exact if exact is not None else lows


def sample_plan(model, caps: Capabilities, p: Plan, out: Tensor,
                observe: Callable[[Window], guidance.Observation | None], settings: SamplerSettings, *,
                progress: Progress | None, device) -> Tensor:
    """Sample ``p``'s windows in order into ``out`` (CPU ``[C, F, H, W]`` in the model's space, known frames
    already in place) with ``settings`` (weight resolved; an auto method resolved per window,
    ``settings.resolved_method``: a new clip's first window knows nothing); ``observe(window)`` is what a window
    knows. Each window samples on the grid of its method (``caps.angles``); a model sampled inside its host's
    session (``caps.run``) gets each window's sampling as ``fn`` with that grid. Pixel models (``caps.clip_x``)
    have x̂ clipped to [-1, 1] and a preview; latents neither."""
    methods = [resolved_method(settings.method, bool(win.exact or win.low)) for win in p.windows]
    grids = [caps.angles(settings.steps, m) for m in methods]
    total = sum(len(g) - 1 for g in grids)  # the grids' own counts: a host's may differ from settings.steps
    at = [0]  # steps done before the current one, over the whole job

    def on_tile(done: int, tiles: int) -> None:
        if progress is not None and done < tiles:  # the last tile's report is the step's own
            progress(at[0] + done / tiles, total, None)

    net = TiledModel(model, p.rows, p.cols, on_tile) if p.tiles > 1 else model
    c, _, h, w = p.shape
    first = 0
    for i, (win, method, angles) in enumerate(zip(p.windows, methods, grids)):
        n = win.stop - win.start
        gen = torch.Generator().manual_seed(settings.seed + i)
        noise = torch.randn((1, c, n, h, w), generator=gen).to(device)

        def step_done(step: int, _steps: int, x: Tensor, first=first) -> None:
            at[0] = first + step
            if progress is not None:
                progress(at[0], total, x[0].detach().float().clamp(-1, 1).cpu() if caps.clip_x else None)

        at[0] = first
        obs = observe(win)

        def window() -> Tensor:
            return sampling.sample(net, noise, angles, replace(settings, method=method), observation=obs,
                                   clip=caps.clip_x, generator=gen, callback=step_done)

        x = (window() if caps.run is None else caps.run(window, tuple(noise.shape), angles))[0].detach().float().cpu()
        x = x[:, [j - win.start for j in win.new]]
        out[:, list(win.new)] = x.clamp(-1, 1) if caps.clip_x else x
        first += len(angles) - 1
    return out
