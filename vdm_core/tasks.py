"""Jobs as recipes: generate, extend, interpolate and upscale clips with one guided sampler.

Every job is an observation ``y = A(x)`` of the output clip (DESIGN.md): extension knows the first
frames, interpolation knows every k-th frame, upscaling knows every frame at low resolution (area
average, ``guidance.downsample``); interpolate + upscale knows the keyframes at low resolution.

Long clips are **time windows** of the model's native frame count, sampled one after the other
(flat device memory). A window's observation holds what is known about its frames: input frames
and frames already made by earlier windows exactly (``guidance.select_frames``), frames known only at
low resolution through the downsampler (with method ``both`` their block means are finally set to the
input's, ``guidance.match_block_means``). Each output frame is written by exactly one window (the
first that contains it as unknown); known input frames are copied into the output unchanged.

Frames larger than the model's native resolution are sampled as overlapping **spatial tiles**:
at every step the model runs on each tile and the tiles' ``v̂`` are blended with raised-cosine
weights that sum to one (MultiDiffusion-style), so tiles agree at every step instead of being stitched
afterwards. With guidance each tile's forward is recomputed in the backward pass (activation
checkpointing), so memory is one tile's activations however large the frame. The observation is
always of the whole frame, so any integer upscale factor works with any tile size.

Noise comes from a CPU ``torch.Generator`` seeded with ``seed + window index`` and is then moved to
the model's device: the same seed gives the same clip on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from . import guidance, sampling
from .schedule import sampling_angles

Callback = Callable[[int, int, "Tensor | None"], None]
"""``callback(done, total, preview)``: ``done``/``total`` count tile-steps of the whole job (known up
front); ``preview`` is x̂ of the current window, ``[C, F, H, W]`` in [-1, 1] on the CPU (None for a model
that samples latents). Raising stops."""

RANGE_EPS = 1e-3  # clip values may overshoot [-1, 1] by this much (rounding in conversions)


# ---------------------------------------------------------------------------------------------- jobs


def _int(name: str, value, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}" + (f"; {hint}" if hint else ""))
    return int(value)


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
    keyframe intervals); ``tile``: spatial tile size (default: the model's native resolution).
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
        new = _int("new_frames", self.new_frames, 0)
        k = _int("multiplier", self.multiplier, 1)
        s = _int("factor", self.factor, 1)
        if new == 0 and k == 1 and s == 1:
            raise ValueError("the job asks for nothing: set new_frames ≥ 1 (extend), multiplier ≥ 2 "
                             "(interpolate) or factor ≥ 2 (upscale)")
        if new and (k > 1 or s > 1):
            other = "interpolation" if k > 1 else "upscaling"
            raise ValueError(f"extend cannot be combined with {other} in one job; run them one after the other")
        if k > 1 and self.clip.shape[1] < 2:
            raise ValueError(f"interpolation needs a clip of at least 2 frames, got {self.clip.shape[1]}")
        if self.context is not None:
            _int("context", self.context, 1)
        if self.window is not None:
            _int("window", self.window, 1)
        if self.overlap is not None:
            _int("overlap", self.overlap, 0)
        if self.tile is not None:
            _int("tile", self.tile, 1)

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

    def total_steps(self, steps: int) -> int:
        """Tile-steps of the whole job: windows × tiles × steps (the callback's ``total``)."""
        return len(self.windows) * self.tiles * steps


def _native(model) -> tuple[int | None, int | None]:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "frames", None), getattr(cfg, "resolution", None)


def _window(model, window: int | None) -> int:
    if window is not None:
        return _int("window", window, 1)
    frames, _ = _native(model)
    if frames is None:
        raise ValueError("the model has no config.frames to size the time windows; pass window=")
    return int(frames)


def _tile(model, tile: int | None) -> int | None:
    if tile is not None:
        return _int("tile", tile, 1)
    _, res = _native(model)
    return None if res is None else int(res)


def spans(length: int, tile: int | None, overlap: int) -> tuple[tuple[int, int], ...]:
    """Cover ``[0, length)`` with spans of ``tile`` overlapping by at least ``overlap``, evenly spread.
    One span when the length fits in a tile (``tile=None``: never split)."""
    if tile is None or length <= tile:
        return ((0, length),)
    n = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(i * (length - tile) / (n - 1)) for i in range(n)]
    return tuple((s, s + tile) for s in starts)


def _extend_windows(made: int, total: int, window: int, context: int) -> list[tuple[int, int]]:
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


def _grid_windows(total: int, grid: int, window: int, overlap: int) -> list[tuple[int, int]]:
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


def _assign(wins, total: int, exact: set[int], low: set[int]) -> tuple[Window, ...]:
    made, out = set(exact), []
    for a, b in wins:
        new = tuple(i for i in range(a, b) if i not in made)
        out.append(Window(a, b, tuple(i for i in range(a, b) if i in made),
                          tuple(i for i in new if i in low), new))
        made.update(new)
    assert len(made) == total, "windows must cover every output frame"
    return tuple(out)


def plan(model, job: Job) -> Plan:
    """The windows and tiles ``run(model, job)`` will sample; raises ValueError for unusable settings."""
    c, f, h, w = job.clip.shape
    shape = job.output_shape()
    total, k, s = shape[1], job.multiplier, job.factor
    win = _window(model, job.window)
    if job.new_frames:
        if win < 2:
            raise ValueError(f"extension needs windows of at least 2 frames, got window={win}")
        context = win // 2 if job.context is None else job.context
        if not 1 <= context < win:
            raise ValueError(f"context must be at least 1 and smaller than the window ({win} frames), "
                             f"got {context}")
        wins = _extend_windows(f, total, win, context)
        exact, low = set(range(f)), set()
    else:
        grid = k
        if job.overlap is None:
            overlap = ((win - 1) // grid // 2) * grid + 1 if k > 1 else win // 4
        else:
            overlap = job.overlap
        if overlap >= win:
            raise ValueError(f"overlap ({overlap} frames) must be smaller than the window ({win} frames)")
        wins = _grid_windows(total, grid, win, overlap)
        keys = set(range(0, total, k))
        exact, low = (keys, set()) if s == 1 else (set(), keys)
    tile = _tile(model, job.tile)
    ov = 0 if tile is None else tile // 4
    return Plan(shape, _assign(wins, total, exact, low), spans(shape[2], tile, ov), spans(shape[3], tile, ov))


def generate_plan(model, frames: int, height: int, width: int, *, channels: int = 3, context: int | None = None,
                  window: int | None = None, tile: int | None = None) -> Plan:
    """The windows and tiles ``generate`` will sample (first window unconditional, the rest extend it)."""
    frames, height, width = (_int(n, v, 1) for n, v in (("frames", frames), ("height", height), ("width", width)))
    win = _window(model, window)
    context = win // 2 if context is None else _int("context", context, 1)
    if frames > win and not 1 <= context < win:
        raise ValueError(f"context must be at least 1 and smaller than the window ({win} frames), got {context}")
    tile = _tile(model, tile)
    ov = 0 if tile is None else tile // 4
    wins = _extend_windows(0, frames, win, context)
    return Plan((channels, frames, height, width), _assign(wins, frames, set(), set()),
                spans(height, tile, ov), spans(width, tile, ov))


def total_steps(job: Job | tuple[int, int, int, int], model, steps: int, **kw) -> int:
    """Tile-steps a job (or an unconditional ``(C, F, H, W)`` generation, ``kw``: context/window/tile)
    will take: the ``total`` its callback reports."""
    if isinstance(job, Job):
        return plan(model, job).total_steps(steps)
    c, f, h, w = job
    return generate_plan(model, f, h, w, channels=c, **kw).total_steps(steps)


# ---------------------------------------------------------------------------------------------- sampling


def _blend_weights(sp: tuple[tuple[int, int], ...]) -> list[Tensor]:
    """Per span, 1-D weights: 1 inside, raised-cosine ramps (sin², cos²) across each overlap with a
    neighbour, normalised so the weights of all spans sum to one at every position."""
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
    """``v̂`` of frames larger than the model's tile: the model on every overlapping tile, blended
    with :func:`_blend_weights` (``v̂ = Σ_tiles w_r w_c · model(z_tile)``). Under autograd each tile's
    forward is checkpointed, so a guided step holds one tile's activations at a time."""

    def __init__(self, model, rows, cols):
        self.model, self.rows, self.cols = model, rows, cols
        self.wr, self.wc = _blend_weights(rows), _blend_weights(cols)

    def __call__(self, z: Tensor, phi: Tensor) -> Tensor:
        v = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        grad = torch.is_grad_enabled() and z.requires_grad
        for (r0, r1), wr in zip(self.rows, self.wr):
            for (c0, c1), wc in zip(self.cols, self.wc):
                zt = z[..., r0:r1, c0:c1]
                vt = checkpoint(self.model, zt, phi, use_reentrant=False) if grad else self.model(zt, phi)
                v[..., r0:r1, c0:c1] += vt.float() * (wr[:, None] * wc[None, :]).to(z.device)
        return v


def _device(model, fallback) -> torch.device:
    """The model's device (``model.device``, else its first parameter's), else ``fallback`` (or CPU)."""
    dev = getattr(model, "device", None)
    if dev is None and isinstance(model, torch.nn.Module):
        dev = next((p.device for p in model.parameters()), None)
    return torch.device(dev if dev is not None else fallback if fallback is not None else "cpu")


def _observation(win: Window, out: Tensor, low: Tensor | None, k: int, s: int, device) -> guidance.Observation | None:
    """What window ``win`` knows: its exact frames (input or made by earlier windows) selected, its
    low-resolution frames through the downsampler; :func:`guidance.combine` when it has both."""
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


def default_guidance_weight(factor: int = 1) -> float:
    """``w_r`` used when none is given: ``guidance.DEFAULT_GUIDANCE_WEIGHT`` (16) for frames known exactly,
    ``4·s²`` when frames are known at ``1/s`` resolution. Area averaging by ``s`` has gain ``‖AAᵀ‖ = 1/s²``,
    so the same pull on low-resolution pixels needs ``s²`` times the weight; on the bundled model
    (docs/benchmarks.md) ×2 was best at 16 among 4/16 and ×4 at 48 among 16/48."""
    return guidance.DEFAULT_GUIDANCE_WEIGHT if factor == 1 else 4.0 * factor * factor


def _angles(model, steps: int) -> list[float]:
    """The step grid: the model's own (``model.angles(steps)``, e.g. ``external.SigmaModel``) or the pack's
    cosine grid ``schedule.sampling_angles``."""
    own = getattr(model, "angles", None)
    return own(steps) if own is not None else sampling_angles(steps).tolist()


def _execute(model, p: Plan, out: Tensor, observe: Callable[[Window], guidance.Observation | None], *, steps, eta,
             weight, method, seed, callback, device) -> Tensor:
    """Sample ``p``'s windows in order into ``out`` (CPU ``[C, F, H, W]`` in the model's space, known frames
    already in place); ``observe(window)`` is what a window knows. A model that samples inside a host's
    session (``model.run(fn, shape)``) gets each window's sampling as ``fn``. Pixel models (``model.clip_x``,
    default True) have x̂ clipped to [-1, 1] and a preview; latents are neither clipped nor previewed."""
    _int("steps", steps, 1)
    _int("seed", seed, 0)
    angles = _angles(model, steps)
    pixels = getattr(model, "clip_x", True)
    run = getattr(model, "run", None)
    net = TiledModel(model, p.rows, p.cols) if p.tiles > 1 else model
    c, _, h, w = p.shape
    total, per_step = p.total_steps(steps), p.tiles
    for i, win in enumerate(p.windows):
        n = win.stop - win.start
        gen = torch.Generator().manual_seed(seed + i)
        noise = torch.randn((1, c, n, h, w), generator=gen).to(device)
        done = i * steps * per_step
        cb = None
        if callback is not None:
            def cb(step, _steps, x, done=done):
                callback(done + step * per_step, total, x[0].detach().float().clamp(-1, 1).cpu() if pixels else None)
        obs = observe(win)

        def window() -> Tensor:
            return sampling.sample(net, noise, angles, observation=obs, method=method, guidance_weight=weight,
                                   eta=eta, clip=pixels, generator=gen, callback=cb)

        x = (window() if run is None else run(window, noise.shape))[0].detach().float().cpu()
        x = x[:, [j - win.start for j in win.new]]
        out[:, list(win.new)] = x.clamp(-1, 1) if pixels else x
    return out


# ---------------------------------------------------------------------------------------------- latent models


@dataclass(frozen=True)
class PixelsKnown:
    """Pixel frames a latent job knows: ``frames`` (output frame indices) with values ``values``
    (``[3, len(frames), H/s, W/s]``, at ``1/s`` of the output's resolution)."""

    frames: tuple[int, ...]
    values: Tensor
    factor: int = 1


def _latent_plan(model, space, shape: tuple[int, int, int, int], *, window: int | None, context: int | None = None,
                 overlap: int | None = None, made: int = 0, grid: bool = False) -> tuple[Tensor, Plan]:
    """Latent buffer and time windows (in latent frames) for an output clip of pixel ``shape``: windows of
    the model's native latent frame count (or ``window`` pixel frames), extension-style (``made`` latents
    known first, ``context`` pixel frames of context) or, with ``grid``, overlapping (``overlap`` pixel
    frames) like interpolation and upscaling. No spatial tiles: the decoder needs the whole frame."""
    _, f, h, w = shape
    s = space.scale
    if h % s or w % s:
        raise ValueError(f"the output frames are {w}×{h} pixels; this model's VAE needs width and height that are "
                         f"multiples of {s} (e.g. {w // s * s or s}×{h // s * s or s}): resize the input first")
    total = space.latent_frames(f)
    native = getattr(getattr(model, "config", None), "frames", None)
    win = space.latent_frames(_int("window", window, 1)) if window is not None else (native or total)
    if grid:
        ov = win // 4 if overlap is None else space.latent_frames(overlap) - 1
        wins = _grid_windows(total, 1, win, min(ov, win - 1) if win > 1 else 0)
    else:
        ctx = win // 2 if context is None else space.latent_frames(context)
        if total > win and not 1 <= ctx < win:
            raise ValueError(f"context must be smaller than the window ({space.pixel_frames(win)} frames for this "
                             f"model), got {context}")
        wins = _extend_windows(made, total, win, ctx)
    lat = torch.zeros((space.channels, total, h // s, w // s))
    cols = ((0, w // s),)
    return lat, Plan(tuple(lat.shape), _assign(wins, total, set(range(made)), set()), ((0, h // s),), cols)


def _latent_observation(win: Window, lat: Tensor, space, known: PixelsKnown | None, device,
                        auto_weight: float) -> guidance.Observation | None:
    """What latent window ``win`` knows: latents known exactly (encoded input frames, or made by earlier
    windows) selected, and the known pixel frames whose latent is new here through the decoder,
    ``A(x) = degrade(decode(x))[frames]`` (``degrade``: area averaging by ``known.factor``). The window is
    decoded on its own: its local frame ``j`` is output frame ``j + time·start``.

    Pixels cannot be replaced in latent space, so their guidance must stay stable by itself (gain
    ``w_r·‖J‖² < 2``, ``sampling.conditioned``), and a decoder's gain ``‖J‖²`` is nothing like a frame
    selection's 1. The pixel term is therefore scaled by ``1/(auto_weight·‖J‖²)`` (``guidance.operator_gain``
    at a unit-normal latent, what normalised latents look like: a VAE decoder's gain at the zero latent can be
    far larger, ~45× for Wan 2.1's): at the job's auto weight its gain is 1, and it grows in proportion to
    ``w_r``."""
    n, exact, pixels = win.stop - win.start, None, None
    if win.exact:
        y = lat[:, list(win.exact)].unsqueeze(0).to(device)
        exact = guidance.select_frames(y, tuple(i - win.start for i in win.exact), n)
    if known is not None:
        first = space.time * win.start
        new = set(win.new)
        idx = [i for i, f in enumerate(known.frames) if space.latent_of(f) in new and f >= first]
        if idx:
            local = [known.frames[i] - first for i in idx]
            factor = known.factor

            def operator(x: Tensor) -> Tensor:
                img = space.decode(x)[:, :, local]
                return guidance.area_downsample(img, factor) if factor > 1 else img

            pixels = guidance.Observation(y=known.values[:, idx].unsqueeze(0).to(device), operator=operator,
                                          num_frames=n)
            typical = torch.randn((1, *lat.shape[:1], n, *lat.shape[2:]), generator=torch.Generator().manual_seed(0))
            gain = guidance.operator_gain(operator, typical.to(device))
            if gain > 0:
                pixels = guidance.scaled(pixels, 1.0 / (auto_weight * gain))
    if exact is not None and pixels is not None:
        return guidance.combine(exact, pixels)
    return exact if exact is not None else pixels


def _decoded(space, lat: Tensor, frames: int) -> Tensor:
    """The finished latents decoded (``space.decode_final``) to ``[3, frames, H, W]`` in [-1, 1], on the CPU."""
    with torch.no_grad():
        clip = space.decode_final(lat.unsqueeze(0))[0]
    return clip[:, :frames].detach().float().cpu().clamp(-1, 1)


def _run_latent(model, space, job: Job, clip: Tensor, **sampling_kw) -> Tensor:
    """``run`` for a model that samples latents (``external.LatentSpace``). Extension of a clip by a causal
    encoder: its complete first ``1 + time·k`` frames are encoded once and known exactly as ``k + 1``
    latents (replaced and guided as frames); every other known frame — the rest of the input, the
    keyframes of interpolation, the low-resolution frames of upscaling — is observed in pixels through the
    decoder. The output keeps the input frames unchanged where they are known at full resolution."""
    c, f, h, w = clip.shape
    shape = job.output_shape()
    k, s = job.multiplier, job.factor
    made = 0
    if job.new_frames:
        if space.causal and space.encode is not None:
            made = (f - 1) // space.time + 1
        rest = tuple(range(space.pixel_frames(made), f)) if made else tuple(range(f))
        known = PixelsKnown(rest, clip[:, list(rest)]) if rest else None
    else:
        keys = tuple(range(0, shape[1], k))
        known = PixelsKnown(keys, clip, s)
    lat, p = _latent_plan(model, space, shape, window=job.window, context=job.context, overlap=job.overlap,
                          made=made, grid=not job.new_frames)
    if made:
        with torch.no_grad():
            prefix = clip[:, :space.pixel_frames(made)].unsqueeze(0).to(sampling_kw["device"])
            lat[:, :made] = space.encode(prefix)[0, :, :made].detach().float().cpu()
    device, auto = sampling_kw["device"], default_guidance_weight(s)
    lat = _execute(model, p, lat, lambda win: _latent_observation(win, lat, space, known, device, auto),
                   **sampling_kw)
    out = _decoded(space, lat, shape[1])
    if job.new_frames:
        out[:, :f] = clip
    elif s == 1:
        out[:, ::k] = clip
    return out


# ---------------------------------------------------------------------------------------------- jobs API


def run(model, job: Job, *, steps: int = 50, eta: float = 0.0, guidance_weight: float | None = None,
        method: str = "both", seed: int = 0, callback: Callback | None = None) -> Tensor:
    """Sample ``job`` with ``model``; returns a CPU float32 ``[C, F_out, H_out, W_out]`` clip in [-1, 1].

    ``guidance_weight`` is ``w_r`` of reconstruction guidance (None: :func:`default_guidance_weight`);
    ``method``: ``reconstruction`` | ``replacement`` | ``both``. ``both`` (VDM's): frames known exactly
    are replaced every step and the rest guided; frames known at low resolution are guided, then
    shifted so their block means equal the input (:func:`guidance.match_block_means`). Upscaling
    needs guidance (not ``replacement``). A model with a latent space (``model.space``,
    ``external.LatentSpace``) samples latents and observes the pixels: :func:`_run_latent`.
    """
    weight = default_guidance_weight(job.factor) if guidance_weight is None else float(guidance_weight)
    device = _device(model, job.clip.device)
    clip = job.clip.detach().float().cpu()
    space = getattr(model, "space", None)
    if space is not None:
        return _run_latent(model, space, job, clip, steps=steps, eta=eta, weight=weight, method=method, seed=seed,
                           callback=callback, device=device)
    p = plan(model, job)
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "channels", clip.shape[0]) != clip.shape[0]:
        raise ValueError(f"the clip has {clip.shape[0]} channels but the model makes {cfg.channels}")
    out = torch.zeros(p.shape)
    f, k, s = clip.shape[1], job.multiplier, job.factor
    if job.new_frames:
        out[:, :f] = clip
    elif s == 1:
        out[:, ::k] = clip
    low = clip if s > 1 else None
    return _execute(model, p, out, lambda win: _observation(win, out, low, k, s, device), steps=steps, eta=eta,
                    weight=weight, method=method, seed=seed, callback=callback, device=device)


def generate(model, frames: int, height: int, width: int, *, channels: int | None = None, steps: int = 50,
             eta: float = 0.0, seed: int = 0, callback: Callback | None = None, context: int | None = None,
             window: int | None = None, tile: int | None = None, guidance_weight: float | None = None,
             method: str = "both") -> Tensor:
    """An unconditional ``[C, frames, height, width]`` clip. Longer than a window: the first window is
    unconditional, the rest extend it (``context`` known frames each); larger than a tile: tiled."""
    cfg_channels = getattr(getattr(model, "config", None), "channels", None)
    if channels is None:
        channels = cfg_channels or 3
    elif cfg_channels is not None and channels != cfg_channels:
        raise ValueError(f"channels={channels} but the model makes {cfg_channels}")
    weight = default_guidance_weight() if guidance_weight is None else float(guidance_weight)
    sampling_kw = dict(steps=steps, eta=eta, weight=weight, method=method, seed=seed, callback=callback,
                       device=_device(model, None))
    space = getattr(model, "space", None)
    if space is not None:
        frames, height, width = (_int(n, v, 1) for n, v in (("frames", frames), ("height", height), ("width", width)))
        lat, p = _latent_plan(model, space, (3, frames, height, width), window=window, context=context, made=0)
        out = _execute(model, p, lat, lambda win: _latent_observation(win, lat, space, None, sampling_kw["device"],
                                                                      weight), **sampling_kw)
        return _decoded(space, out, frames)
    p = generate_plan(model, frames, height, width, channels=channels, context=context, window=window, tile=tile)
    out = torch.zeros(p.shape)
    return _execute(model, p, out, lambda win: _observation(win, out, None, 1, 1, sampling_kw["device"]),
                    **sampling_kw)


def extend(model, clip: Tensor, new_frames: int, *, context: int | None = None, window: int | None = None,
           tile: int | None = None, steps: int = 50, eta: float = 0.0, guidance_weight: float | None = None,
           method: str = "both", seed: int = 0, callback: Callback | None = None) -> Tensor:
    """``clip`` followed by ``new_frames`` new frames: ``[C, F + new_frames, H, W]``; the input frames
    are returned unchanged."""
    _int("new_frames", new_frames, 1, "extend adds at least one frame")
    job = Job(clip, new_frames=new_frames, context=context, window=window, tile=tile)
    return run(model, job, steps=steps, eta=eta, guidance_weight=guidance_weight, method=method, seed=seed,
               callback=callback)


def interpolate(model, clip: Tensor, multiplier: int, *, window: int | None = None, overlap: int | None = None,
                tile: int | None = None, steps: int = 50, eta: float = 0.0, guidance_weight: float | None = None,
                method: str = "both", seed: int = 0, callback: Callback | None = None) -> Tensor:
    """``[C, (F − 1)·multiplier + 1, H, W]``: the input frames at 0, k, 2k, … and new frames between."""
    _int("multiplier", multiplier, 2, "multiplier 2 doubles the frame rate")
    job = Job(clip, multiplier=multiplier, window=window, overlap=overlap, tile=tile)
    return run(model, job, steps=steps, eta=eta, guidance_weight=guidance_weight, method=method, seed=seed,
               callback=callback)


def upscale(model, clip: Tensor, factor: int, *, window: int | None = None, overlap: int | None = None,
            tile: int | None = None, steps: int = 50, eta: float = 0.0, guidance_weight: float | None = None,
            method: str = "both", seed: int = 0, callback: Callback | None = None) -> Tensor:
    """``[C, F, H·factor, W·factor]`` whose area average by ``factor`` matches ``clip`` (VDM eq. 8)."""
    _int("factor", factor, 2, "factor 2 doubles width and height")
    job = Job(clip, factor=factor, window=window, overlap=overlap, tile=tile)
    return run(model, job, steps=steps, eta=eta, guidance_weight=guidance_weight, method=method, seed=seed,
               callback=callback)
