"""Sample DDIM-v: runs a VDM job (or makes an unconditional clip) with the guided DDIM sampler."""
from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io

from ..vdm_core import workflow
from .common import VDMJob, VDMModel, load_to_device, oom_errors, progress_hook


class VDMSampleDDIMv(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VDM_SampleDDIMv",
            display_name="Sample DDIM-v (VDM)",
            category="VDM/sampling",
            description="Samples a clip with the Video Diffusion Model (DDIM in angle form, v-prediction). With a "
                        "job (Extend Clip, Interpolate Frames, Upscale Video) the known frames or pixels guide "
                        "the sampler; without one it makes a new clip of the given size. Shows a preview and "
                        "stops at the next step when you cancel.",
            inputs=[
                VDMModel.Input("model", tooltip="The model from Load VDM."),
                io.Int.Input("length", default=16, min=1, max=4096,
                             tooltip="Frames of a new clip (only without a job). Longer than the model's window: "
                                     "made window by window."),
                io.Int.Input("width", default=16, min=1, max=8192,
                             tooltip="Width in pixels of a new clip (only without a job). Larger than the model: "
                                     "made in blended tiles."),
                io.Int.Input("height", default=16, min=1, max=8192,
                             tooltip="Height in pixels of a new clip (only without a job)."),
                io.Int.Input("steps", default=workflow.DEFAULT_STEPS, min=1, max=1000,
                             tooltip="DDIM steps per window. More is slower and a little cleaner; 32 is plenty "
                                     "for the bundled model."),
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01, round=0.001,
                               tooltip="Fresh noise per step: 0 = deterministic DDIM, 1 = ancestral sampling."),
                io.Float.Input("guidance_weight", default=workflow.DEFAULT_GUIDANCE_WEIGHT, min=0.0, max=100.0,
                               step=0.5, round=0.01,
                               tooltip="Reconstruction guidance weight w_r: how hard the sample is pulled towards "
                                       "the known frames or pixels of the job. 0 turns it off. With the bundled "
                                       "model 16 suits extend, interpolate and ×2 upscaling; use about "
                                       "4·factor² (64) for ×4 upscaling."),
                io.Combo.Input("method", options=list(workflow.METHODS), default="both",
                               tooltip="How the job's known frames steer sampling: both (default, as in VDM: "
                                       "frames known exactly are replaced by noised copies and everything else is "
                                       "pulled by reconstruction guidance; upscaled frames finally get the input's block "
                                       "averages exactly; every job), reconstruction (guidance "
                                       "only), or replacement (no guidance; extend and interpolate only)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same clip on any device."),
                VDMJob.Input("job", optional=True,
                             tooltip="What to make: the output of Extend Clip, Interpolate Frames or Upscale "
                                     "Video. Unconnected: a new clip of length × width × height."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images",
                                tooltip="The clip as an IMAGE batch (one image per frame)."),
                io.Float.Output("fps", display_name="fps",
                                tooltip="Frame rate of the result: the input's (× the multiplier after "
                                        "interpolation); 8 for a new clip."),
                io.Audio.Output("audio", display_name="audio",
                                tooltip="The job's audio (padded with silence after extension); None when there "
                                        "is none — core Create Video accepts that as silence."),
            ],
        )

    @classmethod
    def execute(cls, model, length: int = 16, width: int = 16, height: int = 16, steps: int = workflow.DEFAULT_STEPS,
                eta: float = 0.0, guidance_weight: float = workflow.DEFAULT_GUIDANCE_WEIGHT,
                method: str = "both", seed: int = 0, job=None) -> io.NodeOutput:
        images, fps, audio = workflow.sample_ddim_v(
            model, job, length=length, width=width, height=height, steps=steps, eta=eta,
            guidance_weight=guidance_weight, method=method, seed=seed,
            progress=progress_hook(), load_model_to_device=load_to_device,
            check_interrupt=mm.throw_exception_if_processing_interrupted, oom_errors=oom_errors())
        return io.NodeOutput(images, fps, audio)
