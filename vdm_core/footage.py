"""The user's own footage as training data: a folder of clips, a folder of stills, and the two mixed.

Both datasets are endless and indexed by position (``vdm_core.data.item_rng``): item ``n`` belongs to
epoch ``n // N`` (``N`` clips, or ``N`` stills for stacks of stills), each epoch visits every clip (still) once
in an order drawn from ``(seed, epoch)``, and every random choice of item ``n`` (window start, crop) is drawn
from ``(seed, n)``. So whichever process or DataLoader worker reads item ``n`` gets the same tensor, and
positions that are disjoint (``vdm_core.distributed``) read no clip twice in an epoch.

Clips: every file under the folder (sub-folders too, hidden names skipped) with a video suffix; a window of
``frames`` frames taken every ``stride`` frames, resized as decoded so the short side is ``size`` (area
average when shrinking), cropped to a square (``crop``: ``"random"`` or ``"centre"``). Files that cannot be
opened or are shorter than a window are listed in ``skipped`` with the reason.

Stills (joint image–video training, VDM §3): item ``n`` is a stack ``[3, F, size, size]`` of ``F`` stills,
meant for the U-Net with ``independent_frames`` set, so only its spatial layers learn from them.
"""
from __future__ import annotations

import hashlib
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data import item_rng

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("all", "train", "val")
CROPS = ("random", "centre")


def _files(folder, suffixes: tuple[str, ...], what: str) -> tuple[Path, list[Path]]:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file; give the folder that holds the files")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ValueError(f"{what} folder {folder} holds no {'/'.join(suffixes)} file; put files there")
    return folder, files


def _held_out(name: str) -> float:
    """A number in [0, 1) fixed by a file's name: below the validation fraction means held out."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:12], 16) / 16**12


def _crop(x: Tensor, size: int, crop: str, rng: random.Random) -> Tensor:
    """The ``size``² square of ``x`` (``[..., H, W]``) at a random place or the centre."""
    h, w = x.shape[-2:]
    if crop == "centre":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = rng.randrange(h - size + 1), rng.randrange(w - size + 1)
    return x[..., top:top + size, left:left + size]


def _check(size: int, crop: str) -> None:
    if size < 1:
        raise ValueError(f"size must be at least 1 pixel, got {size}")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")


class _Order:
    """Epoch ``e``'s visiting order of ``n`` things: a permutation drawn from ``(seed, e)``, the last one kept."""

    def __init__(self, kind: str, seed: int, n: int):
        self.kind, self.seed, self.n, self.epoch, self.perm = kind, seed, n, None, None

    def __call__(self, k: int) -> int:
        """The thing visited at position ``k`` of the endless sequence."""
        epoch = k // self.n
        if epoch != self.epoch:
            perm = list(range(self.n))
            random.Random(f"{self.kind}-order-{self.seed}-{epoch}").shuffle(perm)
            self.epoch, self.perm = epoch, perm
        return self.perm[k % self.n]


class ClipFolder(torch.utils.data.Dataset):
    """Endless windows ``[3, frames, size, size]`` in [-1, 1] of the clips in a folder (see the module doc).

    ``split``: ``"all"`` the clips, or with ``val_fraction`` held out by a hash of their paths (stable
    when files are added; at least one clip each side), ``"train"`` the rest or ``"val"`` the held-out ones.
    ``clips``: ``(path, frame count)`` of the usable clips; ``skipped``: ``(path, reason)`` of the others.
    """

    def __init__(self, folder, size: int, frames: int, stride: int = 1, seed: int = 0, crop: str = "random",
                 split: str = "all", val_fraction: float = 0.1):
        from .video_io import VideoError, probe

        _check(size, crop)
        if frames < 1 or stride < 1:
            raise ValueError(f"frames and stride must be at least 1, got frames={frames}, stride={stride}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split != "all" and not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1 to hold clips out, got {val_fraction}")
        self.folder, files = _files(folder, VIDEO_SUFFIXES, "training clips")
        self.size, self.frames, self.stride, self.seed, self.crop = size, frames, stride, seed, crop
        self.need = need = (frames - 1) * stride + 1
        self.clips, self.skipped = [], []
        for p in files:
            try:
                n = probe(p).frames
            except (VideoError, OSError) as e:
                self.skipped.append((p, f"unreadable: {e}"))
                continue
            if n < need:
                self.skipped.append((p, f"{n} frames, fewer than the {need} a window spans"))
            else:
                self.clips.append((p, n))
        if not self.clips:
            why = "; ".join(f"{p.name}: {reason}" for p, reason in self.skipped[:3])
            more = f" (and {len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            raise ValueError(f"no clip in {self.folder} has the {need} frames a training window needs "
                             f"(frames={frames}, stride={stride}): {why}{more}; add longer clips or lower "
                             f"--frames / --stride")
        if split != "all":
            score = {p: _held_out(str(p.relative_to(self.folder))) for p, _ in self.clips}
            val = {p for p in score if score[p] < val_fraction} or {min(score, key=score.get)}
            if len(val) == len(self.clips):
                raise ValueError(f"{self.folder} has {len(self.clips)} usable clip(s): too few to hold "
                                 f"{val_fraction:.0%} out for validation and train on the rest; add clips or "
                                 f"turn validation off")
            self.clips = [c for c in self.clips if (c[0] in val) == (split == "val")]
        self._order = _Order("clips", seed, len(self.clips))

    def summary(self) -> str:
        """One line: clips used, files skipped and why (the first few)."""
        line = f"{self.folder}: {len(self.clips)} clip(s)"
        if self.skipped:
            why = "; ".join(f"{p.name}: {reason}" for p, reason in self.skipped[:3])
            line += f", {len(self.skipped)} file(s) skipped ({why}{', …' if len(self.skipped) > 3 else ''})"
        return line

    def __getitem__(self, n: int) -> Tensor:
        from .video_io import VideoError, read_video

        rng = item_rng("clips", self.seed, n)
        counts = [c for _, c in self.clips]  # lowered where this item's own reads come up short
        i = self._order(n)
        while True:
            path = self.clips[i][0]
            start = rng.randrange(counts[i] - self.need + 1)
            try:
                clip = read_video(path, start=start, max_frames=self.frames, stride=self.stride,
                                  short_side=self.size, audio=False).frames
            except VideoError as e:
                warnings.warn(f"{path} could not be read, another clip is used this time: {e}", stacklevel=2)
                clip, counts[i] = None, 0
            except ValueError:  # start is past the clip's real end
                clip = None
            got = 0 if clip is None else clip.shape[1]
            if got == self.frames:
                return _crop(clip, self.size, self.crop, rng)
            if counts[i]:  # the container claimed more frames than it decodes: it has at most this many
                counts[i] = start + got * self.stride
            usable = [j for j, c in enumerate(counts) if c >= self.need]
            if not usable:
                raise ValueError(f"no clip in {self.folder} decodes the {self.need} frames a training window "
                                 f"needs (their headers claim more frames than they hold); add longer clips")
            if counts[i] < self.need:
                i = usable[rng.randrange(len(usable))]


class ImageFolder(torch.utils.data.Dataset):
    """Endless stacks ``[3, frames, size, size]`` in [-1, 1] of independent stills from a folder (module doc):
    item ``n`` holds stills ``n·frames … n·frames + frames − 1`` of the endless visiting sequence, each resized
    so its short side is ``size`` and cropped. ``skipped``: ``(path, reason)`` of files that cannot be opened."""

    def __init__(self, folder, size: int, frames: int, seed: int = 0, crop: str = "random"):
        _check(size, crop)
        if frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        self.folder, files = _files(folder, IMAGE_SUFFIXES, "stills (--images)")
        self.size, self.frames, self.seed, self.crop = size, frames, seed, crop
        self.images, self.skipped = [], []
        for p in files:
            try:
                with Image.open(p) as img:
                    img.size  # noqa: B018 - the header is read: the file is an image Pillow knows
                self.images.append(p)
            except OSError as e:
                self.skipped.append((p, f"unreadable: {e}"))
        if not self.images:
            raise ValueError(f"no still in {self.folder} could be read ({self.skipped[0][0].name}: "
                             f"{self.skipped[0][1]}); give a folder of {'/'.join(IMAGE_SUFFIXES)} files")
        self._order = _Order("images", seed, len(self.images))

    def summary(self) -> str:
        line = f"{self.folder}: {len(self.images)} still(s)"
        if self.skipped:
            line += f", {len(self.skipped)} file(s) skipped ({self.skipped[0][0].name}: {self.skipped[0][1]}" + \
                    (", …)" if len(self.skipped) > 1 else ")")
        return line

    def _still(self, k: int) -> Tensor:
        """Still ``k`` of the visiting sequence as ``[3, H, W]`` (short side ``size``); one that fails to
        decode now is replaced by the next in the sequence, with a warning."""
        from .video_io import _resize  # the same resize as clip frames get

        for j in range(k, k + len(self.images)):
            path = self.images[self._order(j)]
            try:
                with Image.open(path) as img:
                    rgb = np.asarray(img.convert("RGB"))
            except OSError as e:
                warnings.warn(f"{path} could not be decoded, the next still is used: {e}", stacklevel=2)
                continue
            frame = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 127.5 - 1
            return _resize(frame, self.size, None)
        raise ValueError(f"no still in {self.folder} could be decoded; replace the broken files")

    def __getitem__(self, n: int) -> Tensor:
        rng = item_rng("images", self.seed, n)
        stills = [_crop(self._still(n * self.frames + i), self.size, self.crop, rng) for i in range(self.frames)]
        return torch.stack(stills, dim=1)


class WithImages(torch.utils.data.Dataset):
    """Item ``n``: ``(images[n], True)`` with probability ``ratio`` (drawn from ``(seed, n)``), else
    ``(clips[n], False)``; the flag is the U-Net's ``independent_frames`` for that item."""

    def __init__(self, clips, images: ImageFolder, ratio: float, seed: int = 0):
        if not 0 < ratio < 1:
            raise ValueError(f"image_ratio must be between 0 and 1 (the share of image stacks), got {ratio}")
        self.clips, self.images, self.ratio, self.seed = clips, images, ratio, seed

    def __getitem__(self, n: int) -> tuple[Tensor, bool]:
        if item_rng("mix", self.seed, n).random() < self.ratio:
            return self.images[n], True
        return self.clips[n], False
