"""ComfyUI V3 nodes of comfyui-vdm: thin adapters over the node spec and job functions of ``vdm_app``
(no math here). ComfyUI imports the pack directory as a package and calls :func:`comfy_entrypoint`."""
from comfy_api.latest import ComfyExtension, io

from .comfy_model import VDMFromComfyModel
from .jobs import VDMExtendClip, VDMInterpolateFrames, VDMSpriteClip, VDMUpscaleVideo
from .load import VDMLoadModel
from .sample import VDMSampleDDIMv
from .sample_clip import put_sample_clip

NODES: list[type[io.ComfyNode]] = [
    VDMLoadModel, VDMSampleDDIMv, VDMExtendClip, VDMInterpolateFrames, VDMUpscaleVideo, VDMSpriteClip,
    VDMFromComfyModel,
]


class VDMExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> VDMExtension:
    put_sample_clip()
    return VDMExtension()
