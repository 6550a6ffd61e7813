"""The nodes as functions on plain values, which every front end runs (no ComfyUI imports).

One function per node, in :data:`FUNCTIONS` by node id; its keyword names are the node's inputs (declared
with their defaults and ranges in :mod:`vdm_app.spec`) and it returns a tuple in the node's output order.
:func:`run_node` fills in the defaults, checks every value and calls it. The ComfyUI nodes (``nodes/``),
``vdm run`` and the ``vdm`` command all go through :func:`run_node`; the ComfyUI-only node (Use ComfyUI Model)
registers its function here when the pack loads (:func:`register`). Host services are keyword-only hooks:
``progress(done, total, preview)``, ``load_model_to_device(model, memory_required) -> network``,
``resolve_path(model_name) -> path``.

Data types: IMAGE and AUDIO as in :mod:`vdm_app.clips`; fps a float; VDM_MODEL a
:class:`vdm_app.models.VDMModel`; VDM_JOB a :class:`VDMJob`.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import spec
from .autograd_weights import autograd_safe
from .clips import check_audio, clip_to_image, image_to_clip, preview_frames
from .lib import contract, data, settings, tasks
from .models import VDMModel, estimate_memory, keep_on_device, load_model, native_size, smaller_settings
from .spec import AUTO, DEFAULT_FPS

Progress = Callable[[float, int, "Tensor | None"], None]
"""``progress(done, total, preview)``: ``done`` of ``total`` steps (fractions while a tiled step runs);
``preview`` is an IMAGE ``[≤8, H, W, 3]`` of the current x̂ (or None). It may raise to cancel."""
log = logging.getLogger("comfyui-vdm")


@dataclass(frozen=True, eq=False)
class VDMJob:
    """The VDM_JOB value: a :class:`vdm_core.tasks.Job` with the frame rate and audio of its input clip."""

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
        own_audio = check_audio(audio)
        return job.job, None, job.fps, own_audio if own_audio is not None else job.audio
    return None, image_to_clip(frames), float(fps), check_audio(audio)  # fps: checked by the spec


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


def _bundled_notice(model: VDMModel, caps: contract.Capabilities, job: VDMJob | None) -> None:
    """One line before sampling when the bundled demonstration model is about to extend or interpolate a clip
    larger than its native size: what to expect and what to use instead."""
    if not model.bundled or job is None or job.job.factor > 1 or caps.resolution is None:
        return
    _, _, h, w = job.job.clip.shape
    if max(h, w) <= caps.resolution:
        return
    side = caps.resolution
    tiles = -(-h // (side * 3 // 4)) * -(-w // (side * 3 // 4))
    log.warning(f"note: the bundled model is a {side}×{side} demonstration model trained on moving sprites; on "
                f"{w}×{h} frames it is run as about {tiles} tiles per step (slow), and it extends or interpolates "
                "real footage as colour noise. Use a model trained on your footage (vdm train --data FOLDER), or Use "
                "ComfyUI Model with a video model such as Wan 2.1 in ComfyUI (upscaling holds up better)")


def sample_ddim_v(model: VDMModel, job: VDMJob | None, *, length: int, width: int, height: int, steps: int,
                  eta: float, guidance_weight: float, method: str, iterations: int, seed: int,
                  progress: Progress | None = None,
                  load_model_to_device=None,
                  oom_errors: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,),
                  ) -> tuple[Tensor, float, dict | None]:
    """Sample DDIM-v: run ``job`` (or, without one, make an unconditional ``length × height × width`` clip;
    0 = the model's native frame count / resolution).

    ``guidance_weight`` below 0 is auto (``spec.AUTO_WEIGHT``; the core's None, resolved for the job by
    ``SamplerSettings.for_job``). Returns (IMAGE, fps, AUDIO or None). Runs with autograd available even when
    called inside ``torch.inference_mode`` (reconstruction guidance differentiates through the model). Out of
    memory (``oom_errors``): retried with smaller settings (``models.smaller_settings``); then a MemoryError
    naming the settings to lower. ``progress`` is called after every tile of every step and may raise to cancel.
    """
    if not isinstance(model, VDMModel):
        raise ValueError(f"Sample DDIM-v: model must come from Load VDM, got {type(model).__name__}")
    if job is not None and not isinstance(job, VDMJob):
        raise ValueError(f"Sample DDIM-v: job must come from a VDM job node (Extend / Interpolate / Upscale), got "
                         f"{type(job).__name__}")
    sampler = settings.SamplerSettings(steps=steps, eta=eta, method=method, seed=seed % 2**63, iterations=iterations,
                                       guidance_weight=None if guidance_weight < 0 else guidance_weight)
    caps = contract.capabilities(model.network)
    load = load_model_to_device or keep_on_device

    def callback(done: float, total: int, x: Tensor | None) -> None:
        if progress is not None:
            progress(done, total, None if x is None else preview_frames(x))

    if job is None:
        frames, side = native_size(caps)
        shape = (length or frames, height or side, width or side)
        for name, value in zip(("length", "height", "width"), shape):
            if not value:
                raise ValueError(f"Sample DDIM-v: {model.name} has no native {name}; set {name} (not 0)")
        window, tile, k = None, None, 1
    else:
        shape = job.job.output_shape()[1:]
        window, tile, k = job.job.window, job.job.tile, job.job.multiplier
    _bundled_notice(model, caps, job)
    attempts = [(window, tile)] + smaller_settings(caps, window, tile, k)

    clip, oom = None, None
    with torch.inference_mode(False):
        network = model.network
        if caps.run is None:  # a host's model is loaded by its own session
            network = load(model, estimate_memory(model.network.config, *shape))
            autograd_safe(network)
        for win, til in attempts:
            try:
                if job is None:
                    clip = tasks.run_unconditional(network, shape, sampler, window=win, tile=til, callback=callback)
                else:
                    run_job = dataclasses.replace(job.job, clip=job.job.clip.clone(), window=win, tile=til)
                    clip = tasks.run(network, run_job, sampler, callback=callback)
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


# ---------------------------------------------------------------------------------------------- dispatch


FUNCTIONS: dict[str, Callable[..., tuple]] = {
    "VDM_LoadModel": load_model,
    "VDM_SampleDDIMv": sample_ddim_v,
    "VDM_ExtendClip": extend_clip,
    "VDM_InterpolateFrames": interpolate_frames,
    "VDM_UpscaleVideo": upscale_video,
    "VDM_SpriteClip": sprite_clip,
}
"""The function of each node, by node id; a host adds the nodes only it can run (:func:`register`)."""


def register(node_id: str, function: Callable[..., tuple]) -> None:
    """Make ``function`` the function of node ``node_id`` (a host-only node of ``spec.NODES``)."""
    if node_id not in spec.NODES:
        raise KeyError(f"{node_id} is not a node of vdm_app.spec")
    FUNCTIONS[node_id] = function


def run_node(node_id: str, values: dict, *, options: dict[str, tuple[str, ...]] | None = None, **hooks) -> tuple:
    """Run node ``node_id`` as every front end does: its inputs checked and completed with their defaults
    (``spec.check_inputs``; ``options``: COMBO choices the host lists), then its function called with them and
    the host ``hooks``; returns its output tuple."""
    function = FUNCTIONS.get(node_id)
    if function is None:
        raise ValueError(f"{spec.NODES[node_id].display_name} runs only inside ComfyUI (its inputs are ComfyUI "
                         "objects)")
    return function(**spec.check_inputs(node_id, values, options), **hooks)
