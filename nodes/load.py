"""Load VDM: a checkpoint from models/vdm (or the bundled model) under ComfyUI's model manager."""
from __future__ import annotations

import dataclasses
import os

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..vdm_app import spec
from .common import SpecNode, run, schema

FOLDER = "vdm"
EXTENSIONS = {".safetensors", ".sft"}


def register_folder() -> None:
    """models/vdm (plus any ``vdm:`` paths from extra_model_paths.yaml), listing safetensors files only."""
    path = os.path.join(folder_paths.models_dir, FOLDER)
    folder_paths.add_model_folder_path(FOLDER, path)
    exts = folder_paths.folder_names_and_paths[FOLDER][1]
    if isinstance(exts, set):
        exts.update(EXTENSIONS)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # read-only install: the folder is only a convenience
        pass


register_folder()


class VDMNetwork(torch.nn.Module):
    """What the ModelPatcher manages (named so in ComfyUI's log): ComfyUI sets ``.device`` on the module it
    manages, which UNet3D exposes read-only, so the network rides inside this wrapper."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.net = network


class VDMLoadModel(SpecNode):
    NODE_ID = "VDM_LoadModel"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(cls.NODE_ID, {"model_name": [spec.BUNDLED_NAME] + folder_paths.get_filename_list(FOLDER)})

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        device = mm.get_torch_device()
        (model,) = run(cls.NODE_ID, inputs, device=device,
                       resolve_path=lambda name: folder_paths.get_full_path_or_raise(FOLDER, name)).args
        patcher = comfy.model_patcher.ModelPatcher(VDMNetwork(model.network), load_device=device,
                                                   offload_device=mm.unet_offload_device())
        return io.NodeOutput(dataclasses.replace(model, handle=patcher))
