"""The job functions every front end runs: the pack's nodes on plain values, no ComfyUI imports.

One function per node (``spec.NODES[node_id].function``); its keyword names are the node's inputs
(declared with their defaults and ranges in :mod:`vdm_app.spec`; :func:`run_node` fills them in, checks
them and calls the function) and it returns a tuple in the node's output order. The ComfyUI nodes (``nodes/``), ``vdm
run`` and the ``vdm`` command call the same functions. Host services are keyword-only hooks:
``progress(done, total, preview)``, ``load_model_to_device(model, memory_required) -> network``,
``check_interrupt()``, ``resolve_path(model_name) -> path``.

Data types (ComfyUI's):

* IMAGE: float32 ``[F, H, W, 3]`` in [0, 1] on the CPU — a clip is a batch of frames.
* AUDIO: ``{"waveform": [B, channels, samples] float32, "sample_rate": int}`` or ``None`` (silence).
* fps: float frames per second.
* VDM_MODEL: :class:`VDMModel`; VDM_JOB: :class:`VDMJob`.

:func:`image_to_clip` / :func:`clip_to_image` are the one place where IMAGE and vdm_core's clip layout
``[C, F, H, W]`` in [-1, 1] are converted.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch import Tensor

from .lib import checkpoint, data, tasks, video_io
from . import spec
from .spec import AUTO, BUNDLED_NAME, DEFAULT_FPS

DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PREVIEW_FRAMES = 8

Progress = Callable[[int, int, "Tensor | None"], None]
"""``progress(done, total, preview)``: ``preview`` is an IMAGE ``[≤8, H, W, 3]`` of the current x̂ (or None)."""
DeviceLoader = Callable[["VDMModel", int], torch.nn.Module]
"""``load_model_to_device(model, memory_required_bytes) -> network`` ready to run on its device."""


# ---------------------------------------------------------------------------------------------- types


@dataclass(frozen=True, eq=False)
class VDMModel:
    """A loaded network (on its offload device until a sampler loads it) and its name for messages.
    ``handle`` is the host's own handle on it (ComfyUI: the ModelPatcher), opaque here."""

    network: UNet3D
    name: str
    handle: Any = None


@dataclass(frozen=True, eq=False)
class VDMJob:
    """A :class:`vdm_core.tasks.Job` with the frame rate and audio of its input clip."""

    job: tasks.Job
    fps: float
    audio: dict | None = None

    @property
    def output_fps(self) -> float:
        """Interpolation by k keeps the duration: k× the frame rate."""
        return self.fps * self.job.multiplier

    def output_audio(self) -> dict | None:
        """The input audio, padded with silence to the output's duration (extension); never cut."""
        if self.audio is None:
            return None
        frames = self.job.output_shape()[1]
        wave, rate = self.audio["waveform"], int(self.audio["sample_rate"])
        need = round(frames / self.output_fps * rate)
        if wave.shape[-1] >= need:
            return self.audio
        padded = torch.zeros((*wave.shape[:-1], need), dtype=wave.dtype)
        padded[..., : wave.shape[-1]] = wave
        return {"waveform": padded, "sample_rate": rate}


# ---------------------------------------------------------------------------------------------- layout


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


def _preview_frames(x: Tensor) -> Tensor:
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
    """Write an IMAGE batch (with its AUDIO, if any) as a video file (``video_io.write_video``); returns the path."""
    sound = None
    if audio is not None:
        wave = audio["waveform"]
        sound = video_io.Audio(wave[0] if wave.ndim == 3 else wave, int(audio["sample_rate"]))
    return video_io.write_video(path, image_to_clip(images, "images"), fps, sound)


# ---------------------------------------------------------------------------------------------- audio


def _audio(audio, name: str = "audio") -> dict | None:
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


# ---------------------------------------------------------------------------------------------- load


def resolve_dtype(dtype: str, device=None) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA GPU that supports it, float32 everywhere else (float16 only when
    asked for: a model trained in float32 can overflow in it)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(model_name: str, dtype: str, *, resolve_path: Callable[[str], Any] | None = None,
               device=None) -> tuple[VDMModel]:
    """Load VDM: the network of ``model_name`` on the CPU in ``dtype`` (``auto`` decided for ``device``, the
    device it will run on). ``resolve_path`` maps a listed name to a file (default: the name is a path).
    Raises :class:`vdm_core.checkpoint.CheckpointError` with a message an artist can act on."""
    torch_dtype = resolve_dtype(dtype, device)
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


# ---------------------------------------------------------------------------------------------- jobs


def _source(node: str, frames, fps, audio, job) -> tuple[tasks.Job | None, Tensor | None, float, dict | None]:
    """(upstream Job, input clip, fps, audio) of a job node; exactly one of frames / job must be given."""
    if frames is None and job is None:
        raise ValueError(f"{node}: connect a clip to `frames` (an IMAGE batch) or a VDM job to `job`")
    if frames is not None and job is not None:
        raise ValueError(f"{node}: connect either `frames` or `job`, not both (a chained job already holds its clip)")
    if job is not None:
        if not isinstance(job, VDMJob):
            raise ValueError(f"{node}: `job` must come from a VDM job node, got {type(job).__name__}")
        own_audio = _audio(audio)
        return job.job, None, job.fps, own_audio if own_audio is not None else job.audio
    return None, image_to_clip(frames), float(fps), _audio(audio)  # fps: checked by the spec


def _auto(value: int) -> int | None:
    """Widgets use 0 for "automatic"; vdm_core uses None."""
    return None if int(value) == AUTO else int(value)


def _make_job(node: str, frames, fps, audio, job, **settings) -> tuple[VDMJob]:
    upstream, clip, fps, audio = _source(node, frames, fps, audio, job)
    if clip is not None and settings.get("multiplier", 1) > 1 and clip.shape[1] < 2:
        raise ValueError(f"{node}: `frames` has 1 image; interpolation needs a clip of at least 2 frames")
    if upstream is not None:  # chained: combine with what the upstream node asked for
        clip = upstream.clip
        settings = {
            "new_frames": upstream.new_frames + settings.get("new_frames", 0),
            "multiplier": upstream.multiplier * settings.get("multiplier", 1),
            "factor": upstream.factor * settings.get("factor", 1),
            **{k: settings[k] if settings.get(k) is not None else getattr(upstream, k)
               for k in ("context", "window", "overlap", "tile")},
        }
    try:
        new_job = tasks.Job(clip, **settings)
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None
    return (VDMJob(new_job, fps, audio),)


def extend_clip(frames: Tensor | None, fps: float, audio: dict | None, job: VDMJob | None, *, new_frames: int,
                context: int, window: int, tile: int) -> tuple[VDMJob]:
    """Extend Clip: ``new_frames`` more frames after the clip; audio is padded with silence."""
    return _make_job("Extend Clip", frames, fps, audio, job, new_frames=new_frames, context=_auto(context),
                     window=_auto(window), tile=_auto(tile))


def interpolate_frames(frames: Tensor | None, fps: float, audio: dict | None, job: VDMJob | None, *, multiplier: int,
                       window: int, overlap: int, tile: int) -> tuple[VDMJob]:
    """Interpolate Frames: ``(F − 1)·multiplier + 1`` frames at ``multiplier ×`` the frame rate."""
    return _make_job("Interpolate Frames", frames, fps, audio, job, multiplier=multiplier, window=_auto(window),
                     overlap=_auto(overlap), tile=_auto(tile))


def upscale_video(frames: Tensor | None, fps: float, audio: dict | None, job: VDMJob | None, *, factor: int,
                  window: int, overlap: int, tile: int) -> tuple[VDMJob]:
    """Upscale Video: every frame ``factor ×`` wider and higher."""
    return _make_job("Upscale Video", frames, fps, audio, job, factor=factor, window=_auto(window),
                     overlap=_auto(overlap), tile=_auto(tile))


def sprite_clip(seed: int, size: int, length: int, fps: float) -> tuple[Tensor, float]:
    """Sprite Clip: the procedural moving-sprites clip ``seed`` (``vdm_core.data``) as an IMAGE batch."""
    return clip_to_image(data.sprite_clip(seed, size=size, frames=length)), fps


# ---------------------------------------------------------------------------------------------- sampling


class _CancelPoints:
    """The network with ``check()`` before every call (every tile of every step): a host's cancel button
    then works within one tile, not only between whole steps. Everything else (``config``, ``device``,
    ``space``, ``run``, …) is the network's, for vdm_core.tasks."""

    def __init__(self, network, check: Callable[[], None]):
        self.network, self.check = network, check

    def __getattr__(self, name: str):
        return getattr(self.network, name)

    def __call__(self, z: Tensor, phi: Tensor, **kwargs) -> Tensor:
        self.check()
        return self.network(z, phi, **kwargs)


def _keep_on_device(model: VDMModel, memory_required: int) -> torch.nn.Module:
    return model.network


def move_to(device) -> DeviceLoader:
    """A ``load_model_to_device`` hook for hosts without a model manager: move the network to ``device``."""
    def load(model: VDMModel, memory_required: int) -> torch.nn.Module:
        return model.network.to(device)
    return load


def estimate_memory(network: UNet3D, frames: int, height: int, width: int) -> int:
    """Rough bytes of activations one guided window needs (autograd keeps about one activation per
    layer and width): ``4 · F · H · W · Σ widths · 12``, with H, W capped at the tile (native) size."""
    cfg = network.config
    side = cfg.resolution or max(height, width)
    pixels = min(height, side) * min(width, side)
    return int(4 * min(frames, cfg.frames or frames) * pixels * sum(cfg.widths) * 12)


def _normal_weights(network: torch.nn.Module) -> torch.nn.Module:
    """Weights moved by a host inside ``torch.inference_mode`` become inference tensors, which autograd
    (reconstruction guidance) refuses; give such parameters normal copies."""
    for p in network.parameters():
        if p.is_inference():
            p.data = p.data.clone()
    return network


def _fallbacks(network, window: int | None, tile: int | None, multiplier: int):
    """Smaller (window, tile) settings to retry with after running out of memory: half the tile, then
    half the window too (kept large enough to span two keyframes). None for a model sampled in its host's
    latent space (no tiles there; the host manages its memory)."""
    cfg = network.config
    if getattr(network, "space", None) is not None:
        return []
    w = window or cfg.frames
    t = tile or cfg.resolution
    out = []
    if t and t >= 8:
        out.append((window, t // 2))
        if w and w // 2 >= max(2, multiplier + 1):
            out.append((w // 2, t // 2))
    return out


def native_size(network) -> tuple[int | None, int | None]:
    """(frames, pixels) a network makes natively — its config's, in pixels for a latent-space model — or None."""
    cfg, space = network.config, getattr(network, "space", None)
    frames, side = cfg.frames, cfg.resolution
    if space is not None:
        frames = space.pixel_frames(frames) if frames else None
        side = side * space.scale if side else None
    return frames, side


def sample_ddim_v(model: VDMModel, job: VDMJob | None, *, length: int, width: int, height: int, steps: int,
                  eta: float, guidance_weight: float, method: str, seed: int, progress: Progress | None = None,
                  load_model_to_device: DeviceLoader | None = None, check_interrupt: Callable[[], None] | None = None,
                  oom_errors: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,),
                  ) -> tuple[Tensor, float, dict | None]:
    """Sample DDIM-v: run ``job`` (or, without one, make an unconditional ``length × height × width`` clip;
    0 = the model's native frame count / resolution).

    ``guidance_weight`` below 0 is auto: ``tasks.default_guidance_weight`` of the job (16 for frames known
    exactly, 4·s² for upscaling by s). Returns (IMAGE, fps, AUDIO or None). Runs with autograd available
    even when called inside ``torch.inference_mode`` (reconstruction guidance differentiates through the
    model). Out of memory (``oom_errors``): retried with half the tile, then half the window; then a
    MemoryError naming the settings to lower. ``progress`` may raise to cancel, and so may
    ``check_interrupt()``, called before every model evaluation (each tile of each step).
    """
    if not isinstance(model, VDMModel):
        raise ValueError(f"Sample DDIM-v: model must come from Load VDM, got {type(model).__name__}")
    if job is not None and not isinstance(job, VDMJob):
        raise ValueError(f"Sample DDIM-v: job must come from a VDM job node (Extend / Interpolate / Upscale), got "
                         f"{type(job).__name__}")
    seed = seed % 2**63  # torch generators take seeds below 2**64; tasks adds the window index
    weight = None if guidance_weight < 0 else guidance_weight
    load = load_model_to_device or _keep_on_device

    def callback(done: int, total: int, x: Tensor) -> None:
        if progress is not None:
            progress(done, total, None if x is None else _preview_frames(x))  # latents: no preview

    if job is None:
        frames, side = native_size(model.network)
        shape = (length or frames, height or side, width or side)
        for name, value in zip(("length", "height", "width"), shape):
            if not value:
                raise ValueError(f"Sample DDIM-v: {model.name} has no native {name}; set {name} (not 0)")
        window, tile, k = None, None, 1
    else:
        shape = job.job.output_shape()[1:]
        window, tile, k = job.job.window, job.job.tile, job.job.multiplier
    settings = [(window, tile)] + _fallbacks(model.network, window, tile, k)
    sampling = dict(steps=steps, eta=eta, guidance_weight=weight, method=method, seed=seed, callback=callback)

    clip, oom = None, None
    with torch.inference_mode(False):
        if hasattr(model.network, "run"):  # sampled in its host's session, which loads it (external.SigmaModel)
            network = model.network
        else:
            network = _normal_weights(load(model, estimate_memory(model.network, *shape)))
        if check_interrupt is not None:
            network = _CancelPoints(network, check_interrupt)
        for win, til in settings:
            try:
                if job is None:
                    clip = tasks.generate(network, *shape, window=win, tile=til, **sampling)
                else:
                    run_job = dataclasses.replace(job.job, clip=job.job.clip.clone(), window=win, tile=til)
                    clip = tasks.run(network, run_job, **sampling)
                break
            except oom_errors as e:
                oom = e
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ValueError as e:
                if oom is not None:  # a smaller retry setting does not fit this job: report the OOM
                    break
                raise ValueError(f"Sample DDIM-v: {e}") from None
    if clip is None:
        raise MemoryError(
            f"out of memory sampling {shape[0]} frames of {shape[2]}×{shape[1]} with {model.name} (also with "
            "smaller tiles and windows). Lower `window` or `tile` on the job node, make fewer or smaller frames, "
            f"pick dtype fp16/bf16 on Load VDM, or free memory used by other models. ({type(oom).__name__}: {oom})")
    images = clip_to_image(clip)
    if job is None:
        return images, DEFAULT_FPS, None
    return images, job.output_fps, job.output_audio()


def run_node(node_id: str, values: dict, *, options: dict[str, tuple[str, ...]] | None = None, **hooks) -> tuple:
    """Run node ``node_id`` as every front end does: its inputs checked and completed with their defaults
    (``spec.check_inputs``; ``options``: COMBO choices the host lists), then its function here called with
    them and the host ``hooks``; returns its output tuple."""
    return globals()[spec.NODES[node_id].function](**spec.check_inputs(node_id, values, options), **hooks)
