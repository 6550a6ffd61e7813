"""Training and benchmark data: procedural moving sprites (folders of the user's clips: ``vdm_core.footage``).

Moving sprites (generator version ``SPRITES_VERSION``): each clip has 1–``max_sprites`` sprites
(disc, square, triangle or a glyph drawn with Pillow's built-in font) in random colours over a
random dark background, each moving at constant velocity and bouncing elastically off the walls,
drawn in depth order. Geometry lives in continuous coordinates ``[0, 1]²``, so the same seed gives
the same clip at any resolution (area-averaged from 4× supersampling). Seeds of the splits are
disjoint: ``train`` uses ``[0, 10⁷)``, ``val`` ``[10⁷, 2·10⁷)``, ``test`` ``[2·10⁷, 3·10⁷)``.
Clips are ``[C, F, H, W]`` in ``[-1, 1]``. Changing what a seed draws requires a new version.
Training datasets are endless and indexed by position: item ``n`` depends on ``(seed, n)`` only
(``item_rng``), which is what lets processes and DataLoader workers share one item sequence.
"""
from __future__ import annotations

import colorsys
import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SPRITES_VERSION = 1
SPLIT_BASE = {"train": 0, "val": 10_000_000, "test": 20_000_000}
SPLIT_SIZE = 10_000_000
KINDS = ("disc", "square", "triangle", "glyph")
GLYPHS = "ABCDEFHKLMNPRTVXYZ2345789"
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Sprite:
    """One sprite: kind, glyph, RGB colour in [0, 1], radius, start centre and velocity (units/frame)."""

    kind: str
    glyph: str
    colour: tuple[float, float, float]
    radius: float
    start: tuple[float, float]
    velocity: tuple[float, float]

    def centres(self, frames: int) -> np.ndarray:
        """``[F, 2]`` (x, y) centres: straight motion folded back at the walls (elastic bounce)."""
        t = np.arange(frames)[:, None]
        lo, span = self.radius, 1.0 - 2.0 * self.radius
        p = (np.asarray(self.start) - lo) + np.asarray(self.velocity) * t
        p = np.mod(p, 2.0 * span)
        return lo + np.where(p > span, 2.0 * span - p, p)


def split_seed(split: str, index: int) -> int:
    """The generator seed of clip ``index`` of a split."""
    if split not in SPLIT_BASE:
        raise ValueError(f"split must be one of {sorted(SPLIT_BASE)}, got {split!r}")
    if not 0 <= index < SPLIT_SIZE:
        raise ValueError(f"index must be in [0, {SPLIT_SIZE}), got {index}")
    return SPLIT_BASE[split] + index


def sprite_scene(seed: int, max_sprites: int = 2) -> tuple[tuple[float, float, float], list[Sprite]]:
    """Background colour and sprites (back to front) of clip ``seed``."""
    rng = random.Random(f"sprites-v{SPRITES_VERSION}-{seed}")
    background = tuple(rng.uniform(0.0, 0.3) for _ in range(3))
    sprites = []
    for _ in range(rng.randint(1, max_sprites)):
        kind = rng.choice(KINDS)
        radius = rng.uniform(0.14, 0.24)
        hue = rng.random()
        colour = tuple(float(c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)))
        start = (rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius))
        speed = [rng.uniform(0.025, 0.06) * rng.choice((-1, 1)) for _ in range(2)]
        sprites.append(Sprite(kind, rng.choice(GLYPHS), colour, radius, start, tuple(speed)))
    return background, sprites


def sprite_clip(seed: int, size: int = 16, frames: int = 16, max_sprites: int = 2) -> Tensor:
    """Render clip ``seed`` as ``[3, F, size, size]`` in ``[-1, 1]``."""
    background, sprites = sprite_scene(seed, max_sprites)
    n = size * SUPERSAMPLE
    coords = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    img = torch.tensor(background, dtype=torch.float64)[:, None, None, None].expand(3, frames, n, n).clone()
    for sp in sprites:
        c = torch.from_numpy(sp.centres(frames))  # [F, 2]
        dx = (gx[None] - c[:, 0, None, None]) / sp.radius  # [F, n, n], sprite-local coordinates
        dy = (gy[None] - c[:, 1, None, None]) / sp.radius
        mask = _shape_mask(sp, dx, dy)
        colour = torch.tensor(sp.colour, dtype=torch.float64)[:, None, None, None]
        img = img * (1 - mask[None]) + colour * mask[None]
    img = F.avg_pool2d(img.reshape(3 * frames, 1, n, n), SUPERSAMPLE).reshape(3, frames, size, size)
    return (img * 2 - 1).float()


def sprite_centres(seed: int, frames: int = 16, max_sprites: int = 2) -> np.ndarray:
    """``[S, F, 2]`` sprite centres in ``[0, 1]`` (x, y), back to front — ground truth for metrics."""
    return np.stack([sp.centres(frames) for sp in sprite_scene(seed, max_sprites)[1]])


def sprite_batch(split: str, indices, size: int = 16, frames: int = 16, max_sprites: int = 2) -> Tensor:
    """``[B, 3, F, size, size]`` clips of a split."""
    return torch.stack([sprite_clip(split_seed(split, i), size, frames, max_sprites) for i in indices])


def _shape_mask(sp: Sprite, dx: Tensor, dy: Tensor) -> Tensor:
    if sp.kind == "disc":
        return (dx * dx + dy * dy <= 1.0).double()
    if sp.kind == "square":
        return ((dx.abs() <= 0.8) & (dy.abs() <= 0.8)).double()
    if sp.kind == "triangle":  # apex at dy = -0.9, base at dy = 0.7 with half-width 0.92
        return ((dy <= 0.7) & (dx.abs() <= 0.92 * (dy + 0.9) / 1.6)).double()
    grid = torch.stack([dx, dy], dim=-1).float()  # glyph bitmap spans [-1, 1]²
    m = F.grid_sample(_glyph_bitmap(sp.glyph)[None, None].expand(dx.shape[0], 1, -1, -1), grid,
                      mode="bilinear", padding_mode="zeros", align_corners=False)
    return m[:, 0].double()


@lru_cache(maxsize=None)
def _glyph_bitmap(ch: str) -> Tensor:
    """``[64, 64]`` coverage of ``ch`` in Pillow's built-in font, scaled to fill the square."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=48)
    except TypeError:  # Pillow < 10.1: bitmap font only
        font = ImageFont.load_default()
    im = Image.new("L", (96, 96))
    ImageDraw.Draw(im).text((16, 8), ch, fill=255, font=font)
    im = im.crop(im.getbbox()).resize((56, 56), Image.BILINEAR)
    canvas = Image.new("L", (64, 64))
    canvas.paste(im, (4, 4))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)


def item_rng(kind: str, seed: int, n: int) -> random.Random:
    """The random draws of item ``n`` of an endless dataset: a function of ``(kind, seed, n)`` alone, so
    any process or DataLoader worker that makes item ``n`` makes the same one."""
    return random.Random(f"{kind}-{seed}-{n}")


def item_seed(kind: str, seed: int, n: int) -> int:
    """A 56-bit seed for a torch generator, a function of ``(kind, seed, n)`` alone (like ``item_rng``)."""
    return int.from_bytes(hashlib.blake2b(f"{kind}-{seed}-{n}".encode(), digest_size=7).digest(), "little")


class SpriteClips(torch.utils.data.Dataset):
    """Endless random clips ``[3, F, size, size]`` of a split: item ``n`` (any ``n >= 0``) is the clip whose
    index in ``split`` is drawn from ``(seed, n)`` (``item_rng``). Read it with a sampler of positions
    (``vdm_core.distributed.BatchPositions``); it has no length."""

    def __init__(self, size: int, frames: int, seed: int = 0, max_sprites: int = 2, split: str = "train"):
        split_seed(split, 0)  # a clear error for an unknown split
        self.size, self.frames, self.seed, self.max_sprites, self.split = size, frames, seed, max_sprites, split

    def __getitem__(self, n: int) -> Tensor:
        index = item_rng("sprites", self.seed, n).randrange(SPLIT_SIZE)
        return sprite_clip(split_seed(self.split, index), self.size, self.frames, self.max_sprites)
