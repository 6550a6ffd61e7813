"""Quality metrics for the benchmark (benchmarks/quality.py, docs/benchmarks.md). Clips are ``[B, C, F, H, W]`` in ``[-1, 1]``.

* ``psnr``: ``10·log10(1 / MSE)`` on ``[0, 1]`` images, per clip.
* ``ssim``: mean SSIM (Gaussian window σ = 1.5, 7×7, per frame and channel), per clip.
* Object metrics (:func:`object_errors`) use a generator's ground truth (colours, radii, centres, the
  background without objects): for object ``i`` with colour ``c_i`` on background ``b(p)`` (one colour, or
  per pixel for a textured one), the *mass* of pixel ``p`` is ``clamp(1 − ‖x(p) − c_i‖ / ‖c_i − b(p)‖, 0, 1)``
  (1 at the object's colour, 0 at the background's), counted only where ``x(p)`` is nearer to ``c_i``
  than to the other objects' colours (so two objects of different colours do not mix).
  :func:`sprite_errors` is it for a moving-sprites v1 seed.
  - ``position error``: distance in pixels between the mass centroid and the true centre;
  - ``ghosting``: the share of the mass farther than ``1.5·r`` from the true centre (0 = one sharp
    sprite; a cross-fade between two positions scores about 0.5).
* Long extensions (:func:`window_drift`): per window of new frames, the mean colour against the known
  frames' and the contrast (standard deviation) against theirs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import sprite_centres, sprite_scene


def window_drift(clip: Tensor, known: int, per_window: int) -> tuple[Tensor, Tensor]:
    """Drift of an extended clip ``[B, C, F, H, W]`` (``[-1, 1]``) whose first ``known`` frames were given and
    whose next frames came ``per_window`` at a time: ``(colour, contrast)``, ``[B, W, C]`` and ``[B, W]`` for the
    ``W`` complete windows — each window's mean colour minus the known frames' per channel in 1/255 units
    (``x·255/2``), and the standard deviation of its frames over pixels, frames and channels divided by the known
    frames'."""
    windows = (clip.shape[2] - known) // per_window
    if known < 1 or per_window < 1 or windows < 1:
        raise ValueError(f"window_drift needs known ≥ 1 frames followed by at least one window of per_window ≥ 1 "
                         f"frames; got {clip.shape[2]} frames, known={known}, per_window={per_window}")
    ref = clip[:, :, :known].float()
    new = clip[:, :, known:known + windows * per_window].float().unflatten(2, (windows, per_window))
    colour = (new.mean((3, 4, 5)) - ref.mean((2, 3, 4))[:, :, None]).transpose(1, 2) * 127.5
    contrast = new.transpose(1, 2).flatten(2).std(2) / ref.flatten(1).std(1)[:, None]
    return colour, contrast


def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """``[B]`` PSNR in dB of ``x`` against ``ref`` on ``[0, 1]`` images."""
    mse = ((x - ref) / 2).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1 / mse)


def ssim(x: Tensor, ref: Tensor) -> Tensor:
    """``[B]`` mean SSIM (Wang et al. 2004) of ``x`` against ``ref`` on ``[0, 1]`` images."""
    b, c, f, h, w = x.shape
    a = ((x + 1) / 2).permute(0, 2, 1, 3, 4).reshape(b * f * c, 1, h, w).double()
    r = ((ref + 1) / 2).permute(0, 2, 1, 3, 4).reshape(b * f * c, 1, h, w).double()
    k = torch.exp(-((torch.arange(7, dtype=torch.float64) - 3) ** 2) / (2 * 1.5**2))
    win = (k[:, None] * k[None, :] / k.sum() ** 2)[None, None]

    def blur(t):
        return F.conv2d(F.pad(t, (3, 3, 3, 3), mode="replicate"), win)

    mu_a, mu_r = blur(a), blur(r)
    var_a, var_r = blur(a * a) - mu_a**2, blur(r * r) - mu_r**2
    cov = blur(a * r) - mu_a * mu_r
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_r + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_r**2 + c1) * (var_a + var_r + c2))
    return s.reshape(b, -1).mean(1).float()


def object_errors(clip: Tensor, centres, colours, radii, background, frames: list[int],
                  visible=None, min_visible: float = 0.5) -> tuple[float, float]:
    """Mean position error (pixels) and mean ghosting over the objects and ``frames`` of one clip
    ``[3, F, H, W]`` (in ``[-1, 1]``), given the ground truth of the scene it should show.

    ``centres``: ``[S, F, 2]`` true (x, y) centres in ``[0, 1]``; ``colours``: ``[S, 3]`` and
    ``background``: a ``[3]`` colour or the ``[3, F, H, W]`` scene without its objects, both in ``[0, 1]``;
    ``radii``: ``[S]`` in frame units (ghosting counts mass beyond ``1.5·radius``). ``visible``: optional
    ``[S, F]`` share of each object not hidden by what is in front of it; object-frames below
    ``min_visible`` are not scored. Returns ``(nan, nan)`` when nothing is scored.
    """
    h, w = clip.shape[-2:]
    x = ((clip + 1) / 2).double()
    centres = torch.as_tensor(np.asarray(centres), dtype=torch.float64)
    cols = torch.as_tensor(np.asarray(colours), dtype=torch.float64)[:, :, None, None]  # [S, 3, 1, 1]
    bg = torch.as_tensor(np.asarray(background), dtype=torch.float64)
    bg = bg[:, None, None, None].expand(3, x.shape[1], h, w) if bg.ndim == 1 else bg
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    pos_err, ghost = [], []
    for f in frames:
        dist = (x[None, :, f] - cols).norm(dim=1)  # [S, H, W]
        nearest = dist.argmin(0)
        for i in range(len(cols)):
            if visible is not None and visible[i][f] < min_visible:
                continue
            contrast = (cols[i] - bg[:, f]).norm(dim=0).clamp(min=1e-3)  # [H, W]
            mass = (1 - dist[i] / contrast).clamp(0, 1) * (nearest == i)
            total = float(mass.sum())
            cx, cy = (float(c) for c in centres[i, f])
            if total < 1e-6:  # the object vanished: count it as far away and fully ghosted
                pos_err.append(float(np.hypot(h, w)) / 2)
                ghost.append(1.0)
                continue
            mx, my = float((mass * xs).sum()) / total, float((mass * ys).sum()) / total
            pos_err.append(float(np.hypot((mx - cx) * w, (my - cy) * h)))
            far = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() > 1.5 * float(radii[i])
            ghost.append(float(mass[far].sum()) / total)
    if not pos_err:
        return float("nan"), float("nan")
    return float(np.mean(pos_err)), float(np.mean(ghost))


def sprite_errors(clip: Tensor, seed: int, frames: list[int]) -> tuple[float, float]:
    """:func:`object_errors` of one generated clip ``[3, F, H, W]`` of moving-sprites (v1) seed ``seed``."""
    background, sprites = sprite_scene(seed)
    return object_errors(clip, sprite_centres(seed, clip.shape[1]), [sp.colour for sp in sprites],
                         [sp.radius for sp in sprites], background, frames)
