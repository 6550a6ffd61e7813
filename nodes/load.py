"""Load VDM: a checkpoint from models/vdm (or the bundled model) under ComfyUI's model manager."""
from __future__ import annotations

import dataclasses
import os

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..vdm_core import checkpoint, workflow
from .common import VDMModel

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


class VDMLoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VDM_LoadModel",
            display_name="Load VDM",
            category="VDM/loaders",
            description="Loads a Video Diffusion Model: the bundled sprites model or a checkpoint (.safetensors "
                        "written by `vdm train`) from models/vdm. ComfyUI moves it to the GPU when a sampler "
                        "needs it and frees it like any other model.",
            inputs=[
                io.Combo.Input("model_name", options=[workflow.BUNDLED_NAME] + folder_paths.get_filename_list(FOLDER),
                               default=workflow.BUNDLED_NAME,
                               tooltip="The model. 'vdm-sprites-16 (bundled)' ships with the pack (16 frames of "
                                       "16×16, moving sprites); put your own checkpoints into models/vdm."),
                io.Combo.Input("dtype", options=list(workflow.DTYPES), default="auto",
                               tooltip="Number format of the weights. auto: bf16 on a GPU that supports it, fp32 "
                                       "otherwise. fp16 saves memory but can overflow (NaN) with some models."),
            ],
            outputs=[VDMModel.Output("model", display_name="model",
                                     tooltip="The loaded model; connect it to Sample DDIM-v.")],
        )

    @classmethod
    def execute(cls, model_name: str, dtype: str = "auto") -> io.NodeOutput:
        device = mm.get_torch_device()
        try:
            (model,) = workflow.load_model(
                model_name, dtype, device=device,
                resolve_path=lambda name: folder_paths.get_full_path_or_raise(FOLDER, name))
        except checkpoint.CheckpointError as e:  # shown as "ValueError: …", not under the pack's module path
            raise ValueError(f"Load VDM: {e}") from None
        patcher = comfy.model_patcher.ModelPatcher(VDMNetwork(model.network), load_device=device,
                                                   offload_device=mm.unet_offload_device())
        return io.NodeOutput(dataclasses.replace(model, handle=patcher))
