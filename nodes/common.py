"""What every VDM node shares: V3 schemas built from the node spec, and ComfyUI's services as node-function hooks."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy.cli_args import args
from comfy_api.latest import io

from ..vdm_app import clips, models, node_functions, spec

CUSTOM = {"VDM_MODEL": io.Custom("VDM_MODEL"), "VDM_JOB": io.Custom("VDM_JOB")}
SOCKETS = {"IMAGE": io.Image, "AUDIO": io.Audio, "MODEL": io.Model, "VAE": io.Vae, "CONDITIONING": io.Conditioning,
           **CUSTOM}


def _input(inp: spec.Input, options=None):
    common = dict(tooltip=inp.tooltip, optional=inp.optional)
    if inp.type == "INT":
        extra = {"control_after_generate": True} if inp.seed else {}
        return io.Int.Input(inp.name, default=inp.default, min=inp.min, max=inp.max, **extra, **common)
    if inp.type == "FLOAT":
        return io.Float.Input(inp.name, default=inp.default, min=inp.min, max=inp.max, step=inp.step, round=0.001,
                              **common)
    if inp.type == "COMBO":
        return io.Combo.Input(inp.name, options=list(options or inp.options), default=inp.default, **common)
    if inp.type == "BOOLEAN":
        return io.Boolean.Input(inp.name, default=inp.default, **common)
    return SOCKETS[inp.type].Input(inp.name, **common)


def schema(node_id: str, options: dict[str, list[str]] | None = None) -> io.Schema:
    """The V3 schema of node ``node_id`` from ``spec.NODES``; ``options``: COMBO choices the host lists."""
    node = spec.NODES[node_id]
    return io.Schema(
        node_id=node.node_id, display_name=node.display_name, category=node.category, description=node.description,
        inputs=[_input(i, (options or {}).get(i.name)) for i in node.inputs],
        outputs=[SOCKETS.get(o.type, io.Float).Output(o.name, display_name=o.display_name or o.name, tooltip=o.tooltip)
                 for o in node.outputs],
    )


def run(node_id: str, inputs: dict, **hooks) -> io.NodeOutput:
    """``node_functions.run_node`` of the node; its errors reach the artist as ``ValueError: <node>: <what to change>``
    (not under the pack's module path)."""
    try:
        return io.NodeOutput(*node_functions.run_node(node_id, inputs, **hooks))
    except ValueError as e:
        if type(e) is ValueError:
            raise
        raise ValueError(str(e)) from None


class SpecNode(io.ComfyNode):
    """A node whose schema and execution come from ``spec.NODES[NODE_ID]`` with no host services."""

    NODE_ID = ""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(cls.NODE_ID)

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return run(cls.NODE_ID, inputs)


def progress_hook():
    """``progress(done, total, preview)`` for the node functions: a ComfyUI ProgressBar over the job's steps
    (moving within a tiled step) with a JPEG frame strip of the current x̂; every call is a cancel point."""
    bar = None

    def progress(done: int, total: int, preview: torch.Tensor | None) -> None:
        nonlocal bar
        mm.throw_exception_if_processing_interrupted()
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        picture = None if preview is None else ("JPEG", clips.preview_strip(preview), args.preview_size)
        bar.update_absolute(done, total, picture)

    return progress


def load_to_device(model: models.VDMModel, memory_required: int) -> torch.nn.Module:
    """Put the network on ComfyUI's torch device through its model manager (one load_models_gpu call).
    Whole model: its layers are plain torch layers, which ComfyUI cannot load partially."""
    mm.load_models_gpu([model.handle], memory_required=memory_required, force_full_load=True)
    return model.network


def oom_errors() -> tuple[type[BaseException], ...]:
    """ComfyUI's out-of-memory exception type (it falls back to Exception on torch builds without one,
    which would swallow every error: then rely on torch's own)."""
    return (torch.cuda.OutOfMemoryError,) if mm.OOM_EXCEPTION is Exception else (mm.OOM_EXCEPTION,)
