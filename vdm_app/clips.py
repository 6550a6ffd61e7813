"""Clips as the front ends hold them: ComfyUI's IMAGE and AUDIO layouts, previews, and clip files.

* IMAGE: float32 ``[F, H, W, 3]`` in [0, 1] on the CPU — a clip is a batch of frames.
* AUDIO: ``{"waveform": [B, channels, samples] float32, "sample_rate": int}`` or ``None`` (silence).

:func:`image_to_clip` / :func:`clip_to_image` are the one place where IMAGE and vdm_core's clip layout
``[C, F, H, W]`` in [-1, 1] are converted.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from .lib import video_io, video_write

PREVIEW_FRAMES = 8


def image_to_clip(image: Tensor, name: str = "frames") -> Tensor:
    """IMAGE ``[F, H, W, 3]`` in [0, 1] → clip ``[3, F, H, W]`` float32 in [-1, 1] on the CPU (a new tensor;
    values are clamped to [0, 1] first). Raises ValueError naming ``name`` for anything else."""
    if not torch.is_tensor(image):
        raise ValueError(f"{name} must be an IMAGE batch [frames, height, width, 3], got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(f"{name} must be an IMAGE batch [frames, height, width, 3], got shape {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 images); connect a clip with at least one frame")
    if image.shape[-1] != 3:
        raise ValueError(f"{name} has {image.shape[-1]} channels; VDM works on RGB images with 3 channels "
                         "(remove the alpha channel or convert the images to RGB first)")
    return image.detach().to(device="cpu", dtype=torch.float32).clamp(0, 1).permute(3, 0, 1, 2) * 2 - 1


def clip_to_image(clip: Tensor) -> Tensor:
    """Clip ``[C, F, H, W]`` in [-1, 1] → IMAGE ``[F, H, W, C]`` float32 in [0, 1] on the CPU (contiguous)."""
    if not torch.is_tensor(clip) or clip.ndim != 4:
        raise ValueError(f"expected a clip [C, F, H, W], got {tuple(clip.shape) if torch.is_tensor(clip) else clip!r}")
    return ((clip.detach().to(device="cpu", dtype=torch.float32) + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0).contiguous()


def preview_strip(image: Tensor, min_height: int = 128) -> Image.Image:
    """The frames of an IMAGE ``[F, H, W, 3]`` side by side as one RGB picture, enlarged (nearest) to at
    least ``min_height`` pixels high so tiny clips are visible."""
    f, h, w, _ = image.shape
    strip = image.permute(1, 0, 2, 3).reshape(h, f * w, 3)
    pic = Image.fromarray((strip.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), "RGB")
    scale = max(1, math.ceil(min_height / h))
    return pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST) if scale > 1 else pic


def preview_frames(x: Tensor) -> Tensor:
    """IMAGE of at most ``PREVIEW_FRAMES`` evenly spaced frames of a clip ``[C, F, H, W]``."""
    f = x.shape[1]
    idx = torch.linspace(0, f - 1, min(f, PREVIEW_FRAMES)).round().long().unique()
    return clip_to_image(x[:, idx])


def read_clip(path, **read) -> tuple[Tensor, float, dict | None]:
    """A clip file as (IMAGE, fps, AUDIO or None), what LoadVideo → Get Video Components gives;
    ``read``: ``video_io.read_video``'s start / max_frames / short_side."""
    clip = video_io.read_video(path, **read)
    audio = None if clip.audio is None else {"waveform": clip.audio.waveform[None], "sample_rate": clip.audio.sample_rate}
    return clip_to_image(clip.frames), float(clip.fps), audio


def write_clip(path, images: Tensor, fps: float, audio: dict | None = None) -> Path:
    """Write an IMAGE batch (with its AUDIO, if any) as a video file (``video_write.write_video``); returns the path."""
    sound = None
    if audio is not None:
        wave = audio["waveform"]
        sound = video_io.Audio(wave[0] if wave.ndim == 3 else wave, int(audio["sample_rate"]))
    return video_write.write_video(path, image_to_clip(images, "images"), fps, sound)


def check_audio(audio, name: str = "audio") -> dict | None:
    """A checked AUDIO dict or None. A lazy AUDIO that cannot produce a waveform (VideoHelperSuite's
    for a video without sound raises on access) counts as no audio."""
    if audio is None:
        return None
    try:
        wave, rate = audio["waveform"], audio["sample_rate"]
    except Exception:  # noqa: BLE001 — lazy mappings of other packs raise their own errors for "no audio"
        return None
    if not torch.is_tensor(wave) or wave.ndim != 3:
        raise ValueError(f"{name} must hold a waveform [batch, channels, samples], got "
                         f"{tuple(wave.shape) if torch.is_tensor(wave) else type(wave).__name__}")
    if int(rate) < 1:
        raise ValueError(f"{name} has sample_rate {rate}; it must be a positive number of samples per second")
    return {"waveform": wave, "sample_rate": int(rate)}
