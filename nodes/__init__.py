"""ComfyUI V3 nodes of comfyui-vdm: thin adapters over :mod:`vdm_core.workflow` (no math here).

ComfyUI imports the pack directory as a package and calls :func:`comfy_entrypoint`.
"""
from comfy_api.latest import ComfyExtension, io

from .jobs import VDMExtendClip, VDMInterpolateFrames, VDMUpscaleVideo
from .load import VDMLoadModel
from .sample import VDMSampleDDIMv
from .sprites import VDMSpriteClip

NODES: list[type[io.ComfyNode]] = [
    VDMLoadModel, VDMSampleDDIMv, VDMExtendClip, VDMInterpolateFrames, VDMUpscaleVideo, VDMSpriteClip,
]


class VDMExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> VDMExtension:
    return VDMExtension()
