"""Sprite Clip: a procedural test clip, so example workflows need no input file."""
from __future__ import annotations

from comfy_api.latest import io

from ..vdm_core import workflow


class VDMSpriteClip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VDM_SpriteClip",
            display_name="Sprite Clip (VDM)",
            category="VDM/utils",
            description="Draws a clip of moving sprites (discs, squares, triangles, letters bouncing off the "
                        "walls) — the kind of clip the bundled model was trained on. The same seed always gives "
                        "the same clip, at any size.",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Which clip: sprites, colours and motion all follow from the seed."),
                io.Int.Input("size", default=16, min=4, max=1024,
                             tooltip="Width and height in pixels (the bundled model works at 16)."),
                io.Int.Input("length", default=16, min=1, max=4096, tooltip="Number of frames."),
                io.Float.Input("fps", default=workflow.DEFAULT_FPS, min=0.01, max=1000.0, step=0.01,
                               tooltip="Frame rate passed on with the clip."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images", tooltip="The clip as an IMAGE batch."),
                io.Float.Output("clip_fps", display_name="fps", tooltip="The frame rate (the fps input)."),
            ],
        )

    @classmethod
    def execute(cls, seed: int = 0, size: int = 16, length: int = 16, fps: float = workflow.DEFAULT_FPS) -> io.NodeOutput:
        return io.NodeOutput(*workflow.sprite_clip(seed=seed, size=size, length=length, fps=fps))
