"""Extend Clip, Interpolate Frames, Upscale Video (each describes a job for Sample DDIM-v) and Sprite Clip."""
from __future__ import annotations

from .common import SpecNode


class VDMExtendClip(SpecNode):
    NODE_ID = "VDM_ExtendClip"


class VDMInterpolateFrames(SpecNode):
    NODE_ID = "VDM_InterpolateFrames"


class VDMUpscaleVideo(SpecNode):
    NODE_ID = "VDM_UpscaleVideo"


class VDMSpriteClip(SpecNode):
    NODE_ID = "VDM_SpriteClip"
