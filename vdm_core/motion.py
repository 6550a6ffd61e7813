"""Training data that teaches motion: procedural scenes (generator version ``MOTION_VERSION``) mixed with
moving sprites v1 (``vdm_core.data``).

A motion scene is a background and 1–4 objects drawn back to front, optionally behind a static
foreground bar (occlusion), over 16+ frames:

* background (any colour): flat, linear gradient, radial gradient, stripes, checkerboard or smooth
  noise (a sum of random sinusoids); textured ones may pan (the camera moves at constant velocity);
* objects: disc, ellipse, rectangle, regular polygon (3–8 sides), star, ring, cross, each of any
  colour at least ``MIN_CONTRAST`` from the background's mean, radius 0.06–0.30 of the frame, moving
  at 0–0.11 frame widths per frame (0–1.8 px at 16 px) with elastic bounces off the walls, slowly
  rotating.

Shapes are signed distance functions ``d(p)`` in object-local coordinates (negative inside), drawn
with coverage ``clamp(0.5 − d/pixel, 0, 1)`` (one-pixel anti-aliasing), so the same seed gives the
same scene at any resolution. The splits' seeds are ``vdm_core.data.split_seed``'s (disjoint). Clips are ``[3, F, size, size]`` in ``[-1, 1]``. Changing what a seed draws
requires a new version.

:class:`MotionMix` is what ``vdm train --data motion`` reads: a clip is a moving-sprites v1 clip with
probability ``SPRITES_SHARE`` and a motion scene otherwise.
"""
from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass

import torch
from torch import Tensor

from .data import SPLIT_SIZE, SPRITES_VERSION, item_rng, split_seed, sprite_clip

MOTION_VERSION = 1
BACKGROUNDS = ("flat", "linear", "radial", "stripes", "checker", "noise")
SHAPES = ("disc", "ellipse", "rectangle", "polygon", "star", "ring", "cross")
MIN_CONTRAST = 0.35  # RGB distance (on [0, 1]) of every object colour from the background's mean
SPRITES_SHARE = 1 / 2  # v1 replay: at 1/3 the v1 test clips lost 0.5–1.5 dB in 1,500 fine-tuning steps (runs/sanity)


@dataclass(frozen=True)
class Background:
    """``kind`` of ``BACKGROUNDS``; colours ``a``/``b`` in [0, 1]³; ``params`` the kind's numbers;
    ``pan``: camera velocity (frame widths per frame)."""

    kind: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    params: tuple[float, ...]
    pan: tuple[float, float]


@dataclass(frozen=True)
class MovingObject:
    """One object: ``shape`` of ``SHAPES``, ``params`` its proportions, RGB ``colour`` in [0, 1],
    bounding ``radius``, ``start`` centre and ``velocity`` (frame units), ``angle``/``spin`` (rad, rad/frame)."""

    shape: str
    params: tuple[float, ...]
    colour: tuple[float, float, float]
    radius: float
    start: tuple[float, float]
    velocity: tuple[float, float]
    angle: float
    spin: float

    def centres(self, frames: int) -> Tensor:
        """``[F, 2]`` (x, y) centres: straight motion folded back at the walls ``radius`` and ``1 − radius``."""
        t = torch.arange(frames, dtype=torch.float64)[:, None]
        lo, span = self.radius, 1.0 - 2.0 * self.radius
        p = torch.remainder(torch.tensor(self.start, dtype=torch.float64) - lo
                            + torch.tensor(self.velocity, dtype=torch.float64) * t, 2.0 * span)
        return lo + torch.where(p > span, 2.0 * span - p, p)


@dataclass(frozen=True)
class Scene:
    """A motion scene: background, objects back to front, and an optional foreground bar
    ``(x0, y0, x1, y1)`` of colour ``bar_colour`` drawn over everything."""

    background: Background
    objects: tuple[MovingObject, ...]
    bar: tuple[float, float, float, float] | None
    bar_colour: tuple[float, float, float]


def _colour(rng: random.Random) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.05, 1.0)))


def _contrasting(rng: random.Random, ref: tuple[float, float, float]) -> tuple[float, float, float]:
    while True:
        c = _colour(rng)
        if math.dist(c, ref) >= MIN_CONTRAST:
            return c


def _background(rng: random.Random) -> Background:
    kind = rng.choice(BACKGROUNDS)
    a = _colour(rng)
    b = tuple(min(1.0, max(0.0, x + rng.uniform(-0.35, 0.35))) for x in a)  # a related second colour
    theta = rng.uniform(0, 2 * math.pi)
    if kind == "radial":
        params = (rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.4, 1.2))
    elif kind in ("stripes", "checker"):
        params = (theta, rng.uniform(1.5, 4.0), rng.uniform(0, 1))  # direction, periods per frame, phase
    elif kind == "noise":  # 6 sinusoids: (frequency x, frequency y, phase) each
        params = tuple(v for _ in range(6) for v in (rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(0, 2 * math.pi)))
    else:
        params = (theta,)
    panning = kind != "flat" and rng.random() < 0.4
    pan = tuple(rng.uniform(-0.05, 0.05) for _ in range(2)) if panning else (0.0, 0.0)
    return Background(kind, a, b, params, pan)


def _object(rng: random.Random, ref: tuple[float, float, float]) -> MovingObject:
    shape = rng.choice(SHAPES)
    radius = rng.uniform(0.06, 0.30)
    params = {"ellipse": (rng.uniform(0.35, 0.8),), "rectangle": (rng.uniform(0.3, 1.0),),
              "polygon": (float(rng.randint(3, 8)),), "star": (float(rng.randint(4, 7)), rng.uniform(0.35, 0.6)),
              "ring": (rng.uniform(0.2, 0.45),), "cross": (rng.uniform(0.25, 0.45),)}.get(shape, ())
    start = (rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius))
    speed, heading = rng.uniform(0.0, 0.11), rng.uniform(0, 2 * math.pi)
    velocity = (speed * math.cos(heading), speed * math.sin(heading))
    spin = rng.uniform(-0.15, 0.15) if rng.random() < 0.5 else 0.0
    return MovingObject(shape, params, _contrasting(rng, ref), radius, start, velocity,
                        rng.uniform(0, 2 * math.pi), spin)


def motion_scene(seed: int) -> Scene:
    """The scene of clip ``seed``."""
    rng = random.Random(f"motion-v{MOTION_VERSION}-{seed}")
    bg = _background(rng)
    ref = tuple((x + y) / 2 for x, y in zip(bg.a, bg.b))
    objects = tuple(_object(rng, ref) for _ in range(rng.choices((1, 2, 3, 4), weights=(4, 4, 2, 1))[0]))
    bar = None
    if rng.random() < 0.2:
        w, vertical, pos = rng.uniform(0.08, 0.2), rng.random() < 0.5, rng.uniform(0.2, 0.8)
        bar = (pos - w / 2, 0.0, pos + w / 2, 1.0) if vertical else (0.0, pos - w / 2, 1.0, pos + w / 2)
    return Scene(bg, objects, bar, _contrasting(rng, ref))


def motion_clip(seed: int, size: int = 16, frames: int = 16) -> Tensor:
    """Render clip ``seed`` as ``[3, F, size, size]`` in ``[-1, 1]``."""
    scene = motion_scene(seed)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")  # [H, W]
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    img = _render_background(scene.background, gx - scene.background.pan[0] * t,
                             gy - scene.background.pan[1] * t, size)  # [3, F, H, W]
    for ob in scene.objects:
        c = ob.centres(frames).float()
        ang = ob.angle + ob.spin * t[:, :, 0]  # [F, 1]
        dx, dy = gx[None] - c[:, 0, None, None], gy[None] - c[:, 1, None, None]  # [F, H, W]
        cos, sin = torch.cos(ang)[:, :, None], torch.sin(ang)[:, :, None]
        u, v = (cos * dx + sin * dy) / ob.radius, (-sin * dx + cos * dy) / ob.radius  # object-local, radius 1
        cover = _coverage(_shape_sdf(ob, u, v) * ob.radius, size)
        img = img + (torch.tensor(ob.colour)[:, None, None, None] - img) * cover[None]
    if scene.bar is not None:
        x0, y0, x1, y1 = scene.bar
        d = torch.maximum(torch.maximum(x0 - gx, gx - x1), torch.maximum(y0 - gy, gy - y1))
        img = img + (torch.tensor(scene.bar_colour)[:, None, None, None] - img) * _coverage(d, size)
    return (img.clamp(0, 1) * 2 - 1).float()


def motion_centres(seed: int, frames: int = 16) -> Tensor:
    """``[S, F, 2]`` object centres in ``[0, 1]`` (x, y), back to front — ground truth for metrics."""
    return torch.stack([ob.centres(frames) for ob in motion_scene(seed).objects])


def _coverage(d: Tensor, size: int) -> Tensor:
    """Share of a pixel inside a shape with signed distance ``d`` (frame units) at its centre."""
    return (0.5 - d * size).clamp(0, 1)


def _render_background(bg: Background, x: Tensor, y: Tensor, size: int) -> Tensor:
    """``[3, F, H, W]`` background at world coordinates ``x``, ``y`` (``[F, H, W]``)."""
    if bg.kind == "flat":
        w = torch.zeros_like(x)
    elif bg.kind == "linear":
        w = (math.cos(bg.params[0]) * (x - 0.5) + math.sin(bg.params[0]) * (y - 0.5)) / math.sqrt(2) + 0.5
    elif bg.kind == "radial":
        cx, cy, r = bg.params
        w = torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
    elif bg.kind in ("stripes", "checker"):
        theta, periods, phase = bg.params
        s = periods * (math.cos(theta) * x + math.sin(theta) * y) + phase
        d = (torch.remainder(s, 1.0) - 0.5).abs() - 0.25  # < 0 on half of every period
        if bg.kind == "checker":
            s2 = periods * (-math.sin(theta) * x + math.cos(theta) * y)
            d2 = (torch.remainder(s2, 1.0) - 0.5).abs() - 0.25
            d = -torch.sign(d * d2) * d.abs().minimum(d2.abs())  # nearest edge; inside where the signs agree
        w = _coverage(d / periods, size)
    else:  # noise
        p = bg.params
        w = sum(torch.sin(p[i] * 2 * math.pi * x + p[i + 1] * 2 * math.pi * y + p[i + 2])
                for i in range(0, len(p), 3)) / 6 + 0.5
    w = w.clamp(0, 1)[None]
    a, b = (torch.tensor(c)[:, None, None, None] for c in (bg.a, bg.b))
    return a + (b - a) * w


def _shape_sdf(ob: MovingObject, u: Tensor, v: Tensor) -> Tensor:
    """Signed distance (units of the bounding radius, negative inside) of ``ob``'s shape at local (u, v)."""
    r = torch.sqrt(u * u + v * v)
    if ob.shape == "disc":
        return r - 1
    if ob.shape == "ellipse":  # semi-axes 1 and params[0]; distance scaled by the short axis
        q = ob.params[0]
        return (torch.sqrt(u * u + (v / q) ** 2) - 1) * q
    if ob.shape == "rectangle":  # half-sides cos·s, sin·s so the corners touch the unit circle
        k = math.atan(ob.params[0])
        return _box(u, v, math.cos(k), math.sin(k))
    if ob.shape == "ring":
        return (r - (1 - ob.params[0] / 2)).abs() - ob.params[0] / 2
    if ob.shape == "cross":
        w = ob.params[0]
        return torch.minimum(_box(u, v, 1.0, w), _box(u, v, w, 1.0))
    theta = torch.atan2(v, u)
    if ob.shape == "polygon":  # regular n-gon with circumradius 1: distance to the nearest edge line
        n = ob.params[0]
        sector = 2 * math.pi / n
        a = torch.remainder(theta, sector) - sector / 2
        return r * torch.cos(a) - math.cos(math.pi / n)
    n, inner = ob.params  # star: radius alternates between 1 (tips) and inner, linearly in angle
    sector = 2 * math.pi / n
    a = (torch.remainder(theta, sector) - sector / 2).abs() / (sector / 2)  # 0 between tips, 1 at a tip
    return (r - (inner + (1 - inner) * a)) * inner


def _box(u: Tensor, v: Tensor, hx: float, hy: float) -> Tensor:
    qx, qy = u.abs() - hx, v.abs() - hy
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def motion_batch(split: str, indices, size: int = 16, frames: int = 16) -> Tensor:
    """``[B, 3, F, size, size]`` motion scenes of a split."""
    return torch.stack([motion_clip(split_seed(split, i), size, frames) for i in indices])


class MotionMix(torch.utils.data.Dataset):
    """Endless random clips ``[3, F, size, size]`` of a split: item ``n`` (any ``n >= 0``) is a moving-sprites
    v1 clip with probability ``SPRITES_SHARE``, else a motion scene, drawn from ``(seed, n)`` alone
    (``data.item_rng``), so processes and DataLoader workers share one stream (``vdm_core.distributed``)."""

    description = (f"motion scenes v{MOTION_VERSION} ({1 - SPRITES_SHARE:.0%}) + "
                   f"moving sprites v{SPRITES_VERSION} ({SPRITES_SHARE:.0%})")

    def __init__(self, size: int, frames: int, seed: int = 0, split: str = "train"):
        split_seed(split, 0)  # a clear error for an unknown split
        self.size, self.frames, self.seed, self.split = size, frames, seed, split

    def __getitem__(self, n: int) -> Tensor:
        rng = item_rng("motion-mix", self.seed, n)
        index = split_seed(self.split, rng.randrange(SPLIT_SIZE))
        make = sprite_clip if rng.random() < SPRITES_SHARE else motion_clip
        return make(index, self.size, self.frames)
