"""Planning a job: what to make (:class:`Job`), and the time windows and spatial tiles that make it (:class:`Plan`).

Long clips are **time windows** of the model's native frame count, sampled one after the other
(flat device memory). A window knows input frames and frames already made by earlier windows exactly,
and frames known only at low resolution (upscaling) through the downsampler; each output frame is written
by exactly one window (the first that contains it as unknown). A model with no native frame count (a host's
model the pack does not know) samples the whole clip as one window unless ``window`` is given.

Frames larger than the model's native resolution are sampled as overlapping **spatial tiles**
(``vdm_core.tiling``); the observation is always of the whole frame, so any integer upscale factor works
with any tile size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .contract import Capabilities
from .settings import whole

RANGE_EPS = 1e-3  # clip values may overshoot [-1, 1] by this much (rounding in conversions)


def check_clip(clip, name: str = "clip") -> None:
    """Raise a ValueError unless ``clip`` is a non-empty finite ``[C, F, H, W]`` tensor in [-1, 1]."""
    if not torch.is_tensor(clip):
        raise ValueError(f"{name} must be a torch tensor [C, F, H, W], got {type(clip).__name__}")
    if clip.ndim != 4:
        raise ValueError(f"{name} must have shape [C, F, H, W] (one clip, no batch), got {tuple(clip.shape)}")
    if clip.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(clip.shape)}); give at least one frame")
    if not clip.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [-1, 1], got dtype {clip.dtype}")
    if not torch.isfinite(clip).all():
        raise ValueError(f"{name} contains NaN or inf values")
    lo, hi = clip.min().item(), clip.max().item()
    if lo < -1 - RANGE_EPS or hi > 1 + RANGE_EPS:
        raise ValueError(f"{name} values must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]; "
                         "map [0, 1] images with 2·x − 1")


@dataclass(frozen=True, eq=False)
class Job:
    """What to make from an input clip; jobs compose (interpolate + upscale in one sampling).

    ``clip`` is ``[C, F, H, W]`` in [-1, 1] (never modified). ``new_frames`` extends the clip forward,
    ``multiplier`` k gives ``(F − 1)·k + 1`` frames with the input at frames 0, k, 2k, …, ``factor`` s
    makes frames s× larger. ``context``: known frames per extension window (default: half the
    window); ``window``: frames per sampling window (default: the model's native frame count);
    ``overlap``: frames shared by neighbouring interpolate/upscale windows (rounded up to whole
    keyframe intervals); ``tile``: spatial tile size (default: the model's native resolution). A model with
    no native frame count samples the whole clip as one window (extension: every input frame as context).
    """

    clip: Tensor
    new_frames: int = 0
    multiplier: int = 1
    factor: int = 1
    context: int | None = None
    window: int | None = None
    overlap: int | None = None
    tile: int | None = None

    def __post_init__(self):
        check_clip(self.clip)
        new = whole("new_frames", self.new_frames, 0)
        k = whole("multiplier", self.multiplier, 1)
        s = whole("factor", self.factor, 1)
        if new == 0 and k == 1 and s == 1:
            raise ValueError("the job asks for nothing: set new_frames ≥ 1 (extend), multiplier ≥ 2 "
                             "(interpolate) or factor ≥ 2 (upscale)")
        if new and (k > 1 or s > 1):
            other = "interpolation" if k > 1 else "upscaling"
            raise ValueError(f"extend cannot be combined with {other} in one job; run them one after the other")
        if k > 1 and self.clip.shape[1] < 2:
            raise ValueError(f"interpolation needs a clip of at least 2 frames, got {self.clip.shape[1]}")
        if self.context is not None:
            whole("context", self.context, 1)
        if self.window is not None:
            whole("window", self.window, 1)
        if self.overlap is not None:
            whole("overlap", self.overlap, 0)
        if self.tile is not None:
            whole("tile", self.tile, 1)

    def output_shape(self) -> tuple[int, int, int, int]:
        """``[C, F_out, H_out, W_out]`` of the result."""
        c, f, h, w = self.clip.shape
        return c, (f - 1) * self.multiplier + 1 + self.new_frames, h * self.factor, w * self.factor


# ---------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Window:
    """One sampling over output frames ``[start, stop)``; the tuples hold output frame indices."""

    start: int
    stop: int
    exact: tuple[int, ...]  # known exactly: input frames, or frames made by an earlier window
    low: tuple[int, ...]    # known only at low resolution (upscale)
    new: tuple[int, ...]    # written by this window (every output frame is written once)


@dataclass(frozen=True)
class Plan:
    """Time windows and spatial tiles (``(start, stop)`` row and column spans) of a job."""

    shape: tuple[int, int, int, int]
    windows: tuple[Window, ...]
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def tiles(self) -> int:
        return len(self.rows) * len(self.cols)


def spans(length: int, tile: int | None, overlap: int) -> tuple[tuple[int, int], ...]:
    """Cover ``[0, length)`` with spans of ``tile`` overlapping by at least ``overlap``, evenly spread.
    One span when the length fits in a tile (``tile=None``: never split)."""
    if tile is None or length <= tile:
        return ((0, length),)
    n = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(i * (length - tile) / (n - 1)) for i in range(n)]
    return tuple((s, s + tile) for s in starts)


def extend_windows(made: int, total: int, window: int, context: int) -> list[tuple[int, int]]:
    """Autoregressive windows: ``context`` known frames then ``window − context`` new ones. A short
    start (fewer frames made than ``context``) or the last window use more new/known frames to fill
    the window; no window reaches past ``total``."""
    wins = []
    while made < total:
        new = min(window - min(context, made), total - made)
        known = min(made, window - new)
        wins.append((made - known, made + new))
        made += new
    return wins


def grid_windows(total: int, grid: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Windows that start and end on multiples of ``grid`` (keyframes), share at least ``overlap``
    frames with the previous window (rounded up to whole intervals), and end on the last frame."""
    m = (window - 1) // grid  # intervals per window
    if m < 1:
        raise ValueError(f"a window of {window} frames cannot span two keyframes {grid} frames apart; "
                         f"use multiplier ≤ {window - 1} (or interpolate twice) or a window ≥ {grid + 1}")
    n = (total - 1) // grid
    if n <= m:
        return [(0, total)]
    shared = min(-((1 - overlap) // grid), m - 1)  # ceil((overlap − 1)/grid) intervals (−1: disjoint)
    starts, s = [], 0
    while s + m < n:
        starts.append(s)
        s += m - shared
    starts.append(n - m)
    return [(a * grid, (a + m) * grid + 1) for a in starts]


def assign_frames(wins, total: int, exact: set[int], low: set[int]) -> tuple[Window, ...]:
    """Windows ``wins`` (``(start, stop)`` spans, in order) with each frame's role: known exactly (``exact`` or made
    by an earlier window), known at low resolution (``low``), or written here (the first window that has it)."""
    made, out = set(exact), []
    for a, b in wins:
        new = tuple(i for i in range(a, b) if i not in made)
        out.append(Window(a, b, tuple(i for i in range(a, b) if i in made),
                          tuple(i for i in new if i in low), new))
        made.update(new)
    assert len(made) == total, "windows must cover every output frame"
    return tuple(out)


def _window(caps: Capabilities, window: int | None, total: int) -> int:
    """Frames per window: ``window`` if given, else the model's native count, else the whole clip."""
    if window is not None:
        return whole("window", window, 1)
    return int(caps.frames) if caps.frames is not None else total


def _tile(caps: Capabilities, tile: int | None) -> int | None:
    if tile is not None:
        return whole("tile", tile, 1)
    return None if caps.resolution is None else int(caps.resolution)


def plan(caps: Capabilities, job: Job) -> Plan:
    """The windows and tiles a job is sampled in for a model of capabilities ``caps``; raises ValueError for
    unusable settings."""
    c, f, h, w = job.clip.shape
    shape = job.output_shape()
    total, k, s = shape[1], job.multiplier, job.factor
    win = _window(caps, job.window, total)
    if job.new_frames:
        if win < 2:
            raise ValueError(f"extension needs windows of at least 2 frames, got window={win}")
        context = win // 2 if job.context is None else job.context
        if caps.frames is None and job.window is None and job.context is None:
            context = f  # one window over the whole clip: every input frame is context
        if not 1 <= context < win:
            raise ValueError(f"context must be at least 1 and smaller than the window ({win} frames), "
                             f"got {context}")
        wins = extend_windows(f, total, win, context)
        exact, low = set(range(f)), set()
    else:
        grid = k
        if job.overlap is None:
            overlap = ((win - 1) // grid // 2) * grid + 1 if k > 1 else win // 4
        else:
            overlap = job.overlap
        if overlap >= win:
            raise ValueError(f"overlap ({overlap} frames) must be smaller than the window ({win} frames)")
        wins = grid_windows(total, grid, win, overlap)
        keys = set(range(0, total, k))
        exact, low = (keys, set()) if s == 1 else (set(), keys)
    tile = _tile(caps, job.tile)
    ov = 0 if tile is None else tile // 4
    return Plan(shape, assign_frames(wins, total, exact, low), spans(shape[2], tile, ov), spans(shape[3], tile, ov))


def generate_plan(caps: Capabilities, frames: int, height: int, width: int, *, channels: int = 3,
                  context: int | None = None, window: int | None = None, tile: int | None = None) -> Plan:
    """The windows and tiles of an unconditional clip (first window unconditional, the rest extend it)."""
    frames, height, width = (whole(n, v, 1) for n, v in (("frames", frames), ("height", height), ("width", width)))
    win = _window(caps, window, frames)
    context = win // 2 if context is None else whole("context", context, 1)
    if frames > win and not 1 <= context < win:
        raise ValueError(f"context must be at least 1 and smaller than the window ({win} frames), got {context}")
    tile = _tile(caps, tile)
    ov = 0 if tile is None else tile // 4
    wins = extend_windows(0, frames, win, context)
    return Plan((channels, frames, height, width), assign_frames(wins, frames, set(), set()),
                spans(height, tile, ov), spans(width, tile, ov))
