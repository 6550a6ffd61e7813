"""Models as the front ends hold them: loading (dtype), device placement, and the out-of-memory policy.

A :class:`VDMModel` is ComfyUI's VDM_MODEL: a network that satisfies ``vdm_core.contract.VideoModel`` — the
pack's ``UNet3D`` (Load VDM) or an ``external.SigmaModel`` driving a host's model (Use ComfyUI Model) — with
its name for messages and the host's handle on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .lib import checkpoint, contract, precision, unet3d
from .spec import BUNDLED_NAME

DeviceLoader = Callable[["VDMModel", int], torch.nn.Module]
"""``load_model_to_device(model, memory_required_bytes) -> network`` ready to run on its device."""


@dataclass(frozen=True, eq=False)
class VDMModel:
    """A loaded network (on its offload device until a sampler loads it) and its name for messages.
    ``handle`` is the host's own handle on it (ComfyUI: the ModelPatcher), opaque here."""

    network: contract.VideoModel
    name: str
    handle: Any = None

    @property
    def bundled(self) -> bool:
        """Whether this is the bundled demonstration model."""
        return self.name == BUNDLED_NAME


def load_model(model_name: str, dtype: str, *, resolve_path: Callable[[str], Any] | None = None,
               device=None) -> tuple[VDMModel]:
    """Load VDM: the network of ``model_name`` on the CPU in ``dtype`` (``precision.resolve``: ``auto`` decided
    for ``device``, the device it will run on). ``resolve_path`` maps a listed name to a file (default: the
    name is a path). Raises :class:`vdm_core.checkpoint.CheckpointError` with a message an artist can act on."""
    torch_dtype = precision.resolve(dtype, device)
    if model_name == BUNDLED_NAME:
        if not checkpoint.BUNDLED.is_file():
            raise checkpoint.CheckpointError(
                f"Load VDM: the bundled model is missing ({checkpoint.BUNDLED}); reinstall comfyui-vdm, or put a "
                "VDM checkpoint (.safetensors written by `vdm train`) into models/vdm and pick it")
        path = None
    else:
        path = Path(resolve_path(model_name) if resolve_path else model_name)
    with torch.inference_mode(False):  # hosts run nodes in inference mode; guidance needs normal weights
        try:
            network = checkpoint.load(path, device="cpu", dtype=torch_dtype)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"Load VDM: {e}") from None
    return (VDMModel(network=network, name=model_name),)


def keep_on_device(model: VDMModel, memory_required: int) -> torch.nn.Module:
    """The default ``load_model_to_device``: the network where it is."""
    return model.network


def move_to(device) -> DeviceLoader:
    """A ``load_model_to_device`` hook for hosts without a model manager: move the network to ``device``."""
    def load(model: VDMModel, memory_required: int) -> torch.nn.Module:
        return model.network.to(device)
    return load


def estimate_memory(config: unet3d.UNet3DConfig, frames: int, height: int, width: int) -> int:
    """Rough bytes of activations one guided window of a U-Net needs (autograd keeps about one activation per
    layer and width): ``4 · F · H · W · Σ widths · 12``, with F, H, W capped at its native window and tile."""
    side = config.resolution or max(height, width)
    pixels = min(height, side) * min(width, side)
    return int(4 * min(frames, config.frames or frames) * pixels * sum(config.widths) * 12)


def native_size(caps: contract.Capabilities) -> tuple[int | None, int | None]:
    """(frames, pixels) a model makes natively — in pixels for a latent model — or None where it has none."""
    frames, side = caps.frames, caps.resolution
    if caps.space is not None:
        frames = caps.space.pixel_frames(frames) if frames else None
        side = side * caps.space.scale if side else None
    return frames, side


def smaller_settings(caps: contract.Capabilities, window: int | None, tile: int | None,
                     multiplier: int) -> list[tuple[int | None, int | None]]:
    """The out-of-memory policy: (window, tile) settings to retry with, in order — half the tile, then half the
    window too (kept large enough to span two keyframes). None for a model sampled in its host's latent space
    (no tiles there; the host manages its memory)."""
    if caps.space is not None:
        return []
    w = window or caps.frames
    t = tile or caps.resolution
    out = []
    if t and t >= 8:
        out.append((window, t // 2))
        if w and w // 2 >= max(2, multiplier + 1):
            out.append((w // 2, t // 2))
    return out
