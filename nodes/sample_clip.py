"""The clip the extend_video example loads: put into ComfyUI's input folder when the pack loads."""
from __future__ import annotations

import logging
import os

import folder_paths

from ..vdm_app import clips, node_functions

NAME = "vdm_sprites.mp4"
"""What workflows/extend_video.json's Load Video reads."""


def put_sample_clip() -> None:
    """Write ``input/vdm_sprites.mp4`` (the sprite clip of the extend example, 16 frames of 16×16 at 8 fps) if
    no file of that name is there; a user's file of that name is never touched, and a read-only input
    folder only costs the example its clip (logged)."""
    path = os.path.join(folder_paths.get_input_directory(), NAME)
    if os.path.exists(path):
        return
    try:
        images, fps = node_functions.sprite_clip(seed=0, size=16, length=16, fps=8.0)
        clips.write_clip(path, images, fps)
    except OSError as e:
        logging.warning("comfyui-vdm: could not write the example clip %s (%s); the extend_video example needs a "
                        "clip of that name in ComfyUI's input folder", path, e)
