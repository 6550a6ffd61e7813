"""Sample DDIM-v: runs a VDM job (or makes an unconditional clip) with the guided DDIM sampler."""
from __future__ import annotations

from comfy_api.latest import io

from .common import SpecNode, load_to_device, oom_errors, progress_hook, run


class VDMSampleDDIMv(SpecNode):
    NODE_ID = "VDM_SampleDDIMv"

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return run(cls.NODE_ID, inputs, progress=progress_hook(), load_model_to_device=load_to_device,
                   oom_errors=oom_errors())
