"""What every VDM node shares: the custom socket types and ComfyUI's services as vdm_core.workflow hooks."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy.cli_args import args
from comfy_api.latest import io

from ..vdm_core import workflow

VDMModel = io.Custom("VDM_MODEL")
VDMJob = io.Custom("VDM_JOB")

AUTO = "0 = automatic"
WINDOW_TOOLTIP = (f"Frames sampled together in one window ({AUTO}: the model's native frame count). Longer clips "
                  "are made window by window. Lower it if you run out of memory.")
TILE_TOOLTIP = (f"Tile size in pixels for frames larger than the model ({AUTO}: the model's native resolution). "
                "Tiles overlap and are blended at every step. Lower it if you run out of memory.")


def clip_inputs() -> list:
    """The clip a job node works on: frames + fps + audio, or an upstream job."""
    return [
        io.Image.Input("frames", optional=True,
                       tooltip="The clip: an IMAGE batch, one image per frame (e.g. from Load Video → Get Video "
                               "Components, VideoHelperSuite's Load Video, or Sprite Clip). Leave it unconnected "
                               "when you connect `job`."),
        io.Float.Input("fps", optional=True, default=workflow.DEFAULT_FPS, min=0.01, max=1000.0, step=0.01,
                       tooltip="Frame rate of `frames` (frames per second). Ignored when `job` is connected: "
                               "a chained job keeps its own frame rate."),
        io.Audio.Input("audio", optional=True,
                       tooltip="Sound of the clip (optional). It is passed on to the sampler's `audio` output; "
                               "extension pads it with silence to the new length."),
        VDMJob.Input("job", optional=True,
                     tooltip="An upstream VDM job instead of `frames`: the jobs are combined and sampled in one "
                             "pass (e.g. Interpolate Frames → Upscale Video)."),
    ]


def job_output() -> list:
    return [VDMJob.Output("vdm_job", display_name="job",
                          tooltip="The job description; connect it to Sample DDIM-v (or to another job node to "
                                  "combine jobs).")]


def progress_hook():
    """``progress(done, total, preview)`` for vdm_core.workflow: a ComfyUI ProgressBar with a JPEG frame
    strip of the current x̂; every call is a cancel point."""
    bar = None

    def progress(done: int, total: int, preview: torch.Tensor | None) -> None:
        nonlocal bar
        mm.throw_exception_if_processing_interrupted()
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        picture = None if preview is None else ("JPEG", workflow.preview_strip(preview), args.preview_size)
        bar.update_absolute(done, total, picture)

    return progress


def load_to_device(model: workflow.VDMModel, memory_required: int) -> torch.nn.Module:
    """Put the network on ComfyUI's torch device through its model manager (one load_models_gpu call).
    Whole model: its layers are plain torch layers, which ComfyUI cannot load partially."""
    mm.load_models_gpu([model.handle], memory_required=memory_required, force_full_load=True)
    return model.network


def oom_errors() -> tuple[type[BaseException], ...]:
    """ComfyUI's out-of-memory exception type (it falls back to Exception on torch builds without one,
    which would swallow every error: then rely on torch's own)."""
    return (torch.cuda.OutOfMemoryError,) if mm.OOM_EXCEPTION is Exception else (mm.OOM_EXCEPTION,)
