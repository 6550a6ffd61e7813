"""An independent test set of moving objects: a second renderer, written apart from every training generator.

Nothing here comes from ``vdm_core.data`` or ``vdm_core.motion`` (no import, no shared code, its own
random streams), so a model trained on those has never seen these clips' renderer. Each clip:

* background: a plain colour, bricks, polka dots, concentric rings, plaid, or bilinear value noise on a
  coarse lattice — any colour; a textured background pans (constant velocity) in a quarter of the clips;
* 1–3 objects from ``SHAPES`` (heart, crescent, capsule, arrow, L, half-disc — shapes no training
  generator draws), plain colours at least ``CONTRAST`` from every background colour and ``0.3`` from
  each other, bounding radius 0.10–0.26 of the frame, 0.2–1.6 px per frame at 16 px, no rotation; each
  moves in a straight line, reflected at the walls (simulated frame by frame), drawn in depth order;
* in 30 % of the clips a static foreground post or box that objects pass behind (occlusion).

Rendering: binary masks on a ``SUPER``× finer grid, box-averaged down (numpy, float64). Ground truth per
clip (:class:`IndependentClip`): the clip ``[3, F, H, W]`` in ``[-1, 1]``, each object's true centre (the
centroid of its shape) per frame ``[S, F, 2]`` in ``[0, 1]`` (x, y), colours ``[S, 3]`` and the
background without objects ``[3, F, H, W]`` (both in ``[0, 1]``), bounding radii ``[S]`` and the share
of each object left visible by what is in front of it ``[S, F]`` — what ``vdm_core.metrics.object_errors``
needs. Clip ``i`` is drawn from ``numpy.random.default_rng([STREAM, i])``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STREAM = 0x1D3_5EED  # the random stream of this test set (unrelated to any training split)
SUPER = 4
CONTRAST = 0.45
SHAPES = ("heart", "crescent", "capsule", "arrow", "ell", "half_disc")
BACKGROUNDS = ("plain", "bricks", "dots", "rings", "plaid", "lattice")


@dataclass
class IndependentClip:
    clip: torch.Tensor  # [3, F, H, W] in [-1, 1]
    centres: np.ndarray  # [S, F, 2] (x, y) in [0, 1]
    colours: np.ndarray  # [S, 3] in [0, 1]
    radii: np.ndarray  # [S] bounding radius, frame units
    background: np.ndarray  # [3, F, H, W] in [0, 1]: the clip with its objects left out
    visible: np.ndarray  # [S, F] share of each object's area not hidden by what is in front


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of ``shape`` at local coordinates (u right, v down), scaled so it fits the unit disc."""
    if shape == "heart":  # the classic implicit heart (x² + y² − 1)³ − x² y³ ≤ 0, y up, shrunk to fit
        x, y = u * 1.35, -v * 1.35 + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if shape == "crescent":
        return (u * u + v * v <= 1) & ((u - 0.45) ** 2 + (v + 0.15) ** 2 > 0.62)
    if shape == "capsule":  # a horizontal pill: segment from (-0.55, 0) to (0.55, 0), thickness 0.42
        du = np.clip(np.abs(u) - 0.55, 0, None)
        return du * du + v * v <= 0.42 ** 2
    if shape == "arrow":  # pointing right: shaft then head
        shaft = (u >= -0.9) & (u <= 0.1) & (np.abs(v) <= 0.25)
        head = (u > 0.1) & (u <= 0.9) & (np.abs(v) <= 0.7 * (0.9 - u) / 0.8)
        return shaft | head
    if shape == "ell":
        return ((u >= -0.65) & (u <= -0.15) & (v >= -0.7) & (v <= 0.7)) | \
               ((u >= -0.65) & (u <= 0.65) & (v >= 0.2) & (v <= 0.7))
    if shape == "half_disc":  # flat side up
        return (u * u + v * v <= 1) & (v >= -0.1)
    raise ValueError(shape)


def _centroid_offset(shape: str) -> np.ndarray:
    """(x, y) centroid of the shape in its local unit coordinates (from a 401² grid)."""
    g = np.linspace(-1, 1, 401)
    v, u = np.meshgrid(g, g, indexing="ij")
    m = shape_mask(shape, u, v)
    return np.array([u[m].mean(), v[m].mean()])


def _random_colour(rng) -> np.ndarray:
    return rng.uniform(0, 1, 3)


def _far_colour(rng, others) -> np.ndarray:
    for _ in range(1000):
        c = _random_colour(rng)
        if all(np.linalg.norm(c - o) >= d for o, d in others):
            return c
    raise RuntimeError("no colour far enough from the others")


def _background(rng, kind, u, v, frames):
    """``[3, F, n, n]`` background and the list of its colours; ``u, v``: ``[F, n, n]`` world coordinates."""
    a = _random_colour(rng)
    if kind == "plain":
        return np.broadcast_to(a[:, None, None, None], (3,) + u.shape).copy(), [a]
    b = _random_colour(rng)
    while np.linalg.norm(a - b) < 0.25:
        b = _random_colour(rng)
    if kind == "bricks":
        rows = rng.integers(3, 6)
        ry = v * rows
        shift = (np.floor(ry) % 2) * 0.5
        rx = u * rows / 2 + shift
        mortar = (ry - np.floor(ry) < 0.15) | (rx - np.floor(rx) < 0.08)
        w = mortar.astype(float)
    elif kind == "dots":
        k = rng.integers(3, 6)
        du, dv = (u * k) % 1 - 0.5, (v * k) % 1 - 0.5
        w = (du * du + dv * dv <= 0.3 ** 2).astype(float)
    elif kind == "rings":
        cx, cy = rng.uniform(-0.5, 1.5, 2)
        r = np.sqrt((u - cx) ** 2 + (v - cy) ** 2) * rng.uniform(3, 6)
        w = (r % 1 < 0.5).astype(float)
    elif kind == "plaid":
        k = rng.integers(2, 5)
        w = 0.5 * (((u * k) % 1 < 0.3).astype(float) + ((v * k) % 1 < 0.3).astype(float))
    else:  # lattice: bilinear interpolation of a 6×6 grid of random weights, tiled
        lat = rng.uniform(0, 1, (6, 6))
        gx, gy = (u * 5) % 6, (v * 5) % 6
        x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
        fx, fy = gx - x0, gy - y0
        x1, y1 = (x0 + 1) % 6, (y0 + 1) % 6
        w = (lat[y0, x0] * (1 - fx) * (1 - fy) + lat[y0, x1] * fx * (1 - fy)
             + lat[y1, x0] * (1 - fx) * fy + lat[y1, x1] * fx * fy)
    img = a[:, None, None, None] * (1 - w[None]) + b[:, None, None, None] * w[None]
    return img, [a, b, (a + b) / 2]


def _bounce_path(rng, radius, frames):
    """``[F, 2]`` reference points: constant velocity, reflected at ``radius`` and ``1 − radius``."""
    pos = rng.uniform(radius, 1 - radius, 2)
    speed, heading = rng.uniform(0.2, 1.6) / 16, rng.uniform(0, 2 * np.pi)
    vel = speed * np.array([np.cos(heading), np.sin(heading)])
    path = []
    for _ in range(frames):
        path.append(pos.copy())
        pos = pos + vel
        for k in range(2):
            if pos[k] < radius:
                pos[k], vel[k] = 2 * radius - pos[k], -vel[k]
            elif pos[k] > 1 - radius:
                pos[k], vel[k] = 2 * (1 - radius) - pos[k], -vel[k]
    return np.array(path)


def independent_clip(index: int, size: int = 16, frames: int = 16) -> IndependentClip:
    """Clip ``index`` of the independent test set at ``size``² pixels."""
    rng = np.random.default_rng([STREAM, index])
    n = size * SUPER
    g = (np.arange(n) + 0.5) / n
    gy, gx = np.meshgrid(g, g, indexing="ij")
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    pan = rng.uniform(-0.04, 0.04, 2) if kind != "plain" and rng.random() < 0.25 else np.zeros(2)
    t = np.arange(frames)[:, None, None]
    bg, bg_colours = _background(rng, kind, gx[None] + pan[0] * t, gy[None] + pan[1] * t, frames)

    count = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    occluded = rng.random() < 0.3
    taken = [(c, CONTRAST) for c in bg_colours]
    objects = []
    for _ in range(count):
        shape = SHAPES[rng.integers(len(SHAPES))]
        radius = rng.uniform(0.10, 0.26)
        colour = _far_colour(rng, taken)
        taken.append((colour, 0.3))
        objects.append((shape, radius, colour, _bounce_path(rng, radius, frames)))
    occluder = None
    if occluded:
        colour = _far_colour(rng, taken)
        if rng.random() < 0.6:  # a post across the frame
            w, p = rng.uniform(0.1, 0.18), rng.uniform(0.25, 0.75)
            occluder = ((p - w / 2, 0.0, p + w / 2, 1.0) if rng.random() < 0.5 else (0.0, p - w / 2, 1.0, p + w / 2), colour)
        else:  # a box
            x0, y0 = rng.uniform(0.1, 0.5, 2)
            occluder = ((x0, y0, x0 + rng.uniform(0.2, 0.4), y0 + rng.uniform(0.2, 0.4)), colour)

    img = bg.copy()
    masks = []
    for shape, radius, colour, path in objects:
        m = np.stack([shape_mask(shape, (gx - p[0]) / radius, (gy - p[1]) / radius) for p in path])  # [F, n, n]
        masks.append(m)
        img[:, m] = colour[:, None]
    front = np.zeros((frames, n, n), bool)
    if occluder is not None:
        (x0, y0, x1, y1), colour = occluder
        box = (gx >= x0) & (gx <= x1) & (gy >= y0) & (gy <= y1)
        front |= box[None]
        img[:, front] = colour[:, None]
        bg[:, front] = colour[:, None]
    visible = np.zeros((count, frames))
    for i in reversed(range(count)):  # front to back: what is in front of object i
        m = masks[i]
        visible[i] = (m & ~front).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)
        front = front | m
    centres = np.stack([path + _centroid_offset(shape) * radius for shape, radius, _, path in objects])

    def pool(a):
        return a.reshape(3, frames, size, SUPER, size, SUPER).mean((3, 5))

    return IndependentClip(clip=torch.from_numpy(pool(img) * 2 - 1).float(), centres=centres,
                           colours=np.stack([o[2] for o in objects]), radii=np.array([o[1] for o in objects]),
                           background=pool(bg), visible=visible)


def independent_set(indices, size: int = 16, frames: int = 16) -> list[IndependentClip]:
    """The clips ``indices`` of the independent test set."""
    return [independent_clip(i, size, frames) for i in indices]
