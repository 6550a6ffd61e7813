"""Extend Clip, Interpolate Frames, Upscale Video: each describes a job for Sample DDIM-v."""
from __future__ import annotations

from comfy_api.latest import io

from ..vdm_core import workflow
from .common import TILE_TOOLTIP, WINDOW_TOOLTIP, clip_inputs, job_output

CATEGORY = "VDM/jobs"
OVERLAP_TOOLTIP = ("Frames shared by neighbouring windows, so they join smoothly (0 = automatic: about half a "
                   "window for interpolation, a quarter for upscaling).")


class VDMExtendClip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VDM_ExtendClip",
            display_name="Extend Clip (VDM)",
            category=CATEGORY,
            description="Describes an extension: new frames that continue the clip forward in time. The input "
                        "frames are kept unchanged; each window sees the last `context` frames made so far. "
                        "Connect the job to Sample DDIM-v.",
            inputs=[
                io.Int.Input("new_frames", default=16, min=1, max=4096,
                             tooltip="Frames to add after the clip. Output: input frames + new_frames."),
                io.Int.Input("context", default=0, min=0, max=4096,
                             tooltip="Known frames each window conditions on (0 = automatic: half the window). "
                                     "Must be smaller than the window."),
                io.Int.Input("window", default=0, min=0, max=4096, tooltip=WINDOW_TOOLTIP),
                io.Int.Input("tile", default=0, min=0, max=8192, tooltip=TILE_TOOLTIP),
                *clip_inputs(),
            ],
            outputs=job_output(),
        )

    @classmethod
    def execute(cls, new_frames: int = 16, context: int = 0, window: int = 0, tile: int = 0, frames=None,
                fps: float = workflow.DEFAULT_FPS, audio=None, job=None) -> io.NodeOutput:
        return io.NodeOutput(*workflow.extend_clip(frames=frames, fps=fps, audio=audio, job=job,
                                                   new_frames=new_frames, context=context, window=window, tile=tile))


class VDMInterpolateFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VDM_InterpolateFrames",
            display_name="Interpolate Frames (VDM)",
            category=CATEGORY,
            description="Describes an interpolation: new frames between every pair of input frames. N frames "
                        "become (N − 1)·multiplier + 1 at multiplier × the frame rate, so the duration and the "
                        "audio stay the same. Connect the job to Sample DDIM-v, or to Upscale Video to do both.",
            inputs=[
                io.Int.Input("multiplier", default=2, min=2, max=16,
                             tooltip="Frame-rate multiplier k: k − 1 new frames between each pair of input "
                                     "frames."),
                io.Int.Input("window", default=0, min=0, max=4096, tooltip=WINDOW_TOOLTIP),
                io.Int.Input("overlap", default=0, min=0, max=4096, tooltip=OVERLAP_TOOLTIP),
                io.Int.Input("tile", default=0, min=0, max=8192, tooltip=TILE_TOOLTIP),
                *clip_inputs(),
            ],
            outputs=job_output(),
        )

    @classmethod
    def execute(cls, multiplier: int = 2, window: int = 0, overlap: int = 0, tile: int = 0, frames=None,
                fps: float = workflow.DEFAULT_FPS, audio=None, job=None) -> io.NodeOutput:
        return io.NodeOutput(*workflow.interpolate_frames(frames=frames, fps=fps, audio=audio, job=job,
                                                          multiplier=multiplier, window=window, overlap=overlap,
                                                          tile=tile))


class VDMUpscaleVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VDM_UpscaleVideo",
            display_name="Upscale Video (VDM)",
            category=CATEGORY,
            description="Describes an upscale: every frame factor × wider and higher, sampled so that its "
                        "block averages match the input (reconstruction guidance). Frame count, frame rate and "
                        "audio stay the same. Connect the job to Sample DDIM-v.",
            inputs=[
                io.Int.Input("factor", default=2, min=2, max=8,
                             tooltip="Scale factor for width and height (2 = twice as wide and high)."),
                io.Int.Input("window", default=0, min=0, max=4096, tooltip=WINDOW_TOOLTIP),
                io.Int.Input("overlap", default=0, min=0, max=4096, tooltip=OVERLAP_TOOLTIP),
                io.Int.Input("tile", default=0, min=0, max=8192, tooltip=TILE_TOOLTIP),
                *clip_inputs(),
            ],
            outputs=job_output(),
        )

    @classmethod
    def execute(cls, factor: int = 2, window: int = 0, overlap: int = 0, tile: int = 0, frames=None,
                fps: float = workflow.DEFAULT_FPS, audio=None, job=None) -> io.NodeOutput:
        return io.NodeOutput(*workflow.upscale_video(frames=frames, fps=fps, audio=audio, job=job, factor=factor,
                                                     window=window, overlap=overlap, tile=tile))
