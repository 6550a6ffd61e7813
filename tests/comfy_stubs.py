"""Small stand-ins for the ComfyUI modules the pack imports, so node tests run without a ComfyUI checkout.

They follow ComfyUI 0.3.64's API (comfy_api/latest/_io.py, folder_paths.py, comfy/utils.py,
comfy/model_management.py, comfy/model_patcher.py) for the parts the pack uses, written from its
documented behaviour, including what has bitten packs before:

* ``Schema.validate`` rejects an id shared by an input and an output (ComfyUI then drops the pack);
* ``ComfyNode.GET_SCHEMA`` finalizes (default output ids) and validates;
* input constructors take exactly 0.3.64's keyword arguments (a 0.33-only argument is a TypeError);
* ``ModelPatcher`` sets ``model.device`` on construction (when missing) and on every load;
* ``ProgressBar`` calls the global hook; interruption raises ``InterruptProcessingException`` once;
* ``comfy.samplers.CFGGuider.sample`` loads the model, turns the conditionings into per-cond dicts (tensors
  made inside inference mode when called there, like ComfyUI's), calls the Sampler's ``sample`` with itself as
  ``model_wrap`` (``model_wrap(x, σ, model_options=…, seed=…)`` → CFG-combined x̂0 of the model's
  ``apply_model``) and returns ``process_latent_out`` of the result; ``calculate_sigmas`` is the "simple"
  scheduler of tests/comfy_model_sampling.py.

``modules(models_dir)`` returns ``{module name: module}`` for ``unittest.mock.patch.dict(sys.modules, ...)``.
"""
from __future__ import annotations

import enum
import math
import os
import types
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch


# ---------------------------------------------------------------------------------------------- comfy_api.latest.io


class Input:
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy

    @property
    def io_type(self):
        return self.Parent.io_type


class WidgetInput(Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 socketless=None, widget_type=None, force_input=None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input


class Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    @property
    def io_type(self):
        return self.Parent.io_type


def _comfytype(io_type: str, input_cls=Input, has_output=True):
    ns = {"io_type": io_type}
    ns["Input"] = type("Input", (input_cls,), {})
    if has_output:
        ns["Output"] = type("Output", (Output,), {})
    cls = type(io_type.title(), (), ns)
    cls.Input.Parent = cls
    if has_output:
        cls.Output.Parent = cls
    return cls


class _IntInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate


class _FloatInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round


class _ComboInput(WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options = options


def _io_module():
    io = types.ModuleType("comfy_api.latest.io")
    io.Input, io.WidgetInput, io.Output = Input, WidgetInput, Output
    io.Int = _comfytype("INT", _IntInput)
    io.Float = _comfytype("FLOAT", _FloatInput)
    io.Combo = _comfytype("COMBO", _ComboInput)
    io.Boolean = _comfytype("BOOLEAN", WidgetInput)
    io.String = _comfytype("STRING", WidgetInput)
    for name, io_type in (("Image", "IMAGE"), ("Audio", "AUDIO"), ("Video", "VIDEO"), ("Mask", "MASK"),
                          ("Model", "MODEL"), ("Latent", "LATENT"), ("Vae", "VAE"), ("Conditioning", "CONDITIONING")):
        setattr(io, name, _comfytype(io_type))
    io.Custom = lambda io_type: _comfytype(io_type)

    class Hidden(str, enum.Enum):
        unique_id = "UNIQUE_ID"
        prompt = "PROMPT"

    @dataclass
    class Schema:
        node_id: str
        display_name: str = None
        category: str = "sd"
        inputs: list = None
        outputs: list = None
        hidden: list = None
        description: str = ""
        is_input_list: bool = False
        is_output_node: bool = False
        is_deprecated: bool = False
        is_experimental: bool = False
        is_api_node: bool = False
        not_idempotent: bool = False
        enable_expand: bool = False

        def validate(self):
            ins = [i.id for i in self.inputs or []]
            outs = [o.id for o in self.outputs or []]
            issues = []
            if len(set(ins)) != len(ins):
                issues.append(f"Input ids must be unique, but {[k for k, n in Counter(ins).items() if n > 1]} are not.")
            if len(set(outs)) != len(outs):
                issues.append(f"Output ids must be unique, but {[k for k, n in Counter(outs).items() if n > 1]} are not.")
            if set(ins) & set(outs):
                issues.append(f"Ids must be unique between inputs and outputs, but {set(ins) & set(outs)} are not.")
            if issues:
                raise ValueError("\n".join(issues))

        def finalize(self):
            for i, o in enumerate(self.outputs or []):
                if o.id is None:
                    o.id = f"_{i}_{o.io_type}_"

    class NodeOutput:
        def __init__(self, *args, ui=None, expand=None, block_execution=None):
            self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

        @property
        def result(self):
            return self.args if self.args else None

        def __getitem__(self, index):
            return self.args[index]

    class ComfyNode(ABC):
        hidden = None

        @classmethod
        @abstractmethod
        def define_schema(cls) -> Schema: ...

        @classmethod
        @abstractmethod
        def execute(cls, **kwargs) -> NodeOutput: ...

        @classmethod
        def GET_SCHEMA(cls) -> Schema:
            schema = cls.define_schema()
            schema.finalize()
            schema.validate()
            return schema

        @classmethod
        def INPUT_TYPES(cls) -> dict:
            """V1 view: required / optional inputs, the frontend's widget order."""
            schema = cls.GET_SCHEMA()
            out = {"required": {}}
            for i in schema.inputs or []:
                out.setdefault("optional" if i.optional else "required", {})[i.id] = i
            return out

    io.Hidden, io.Schema, io.NodeOutput, io.ComfyNode = Hidden, Schema, NodeOutput, ComfyNode
    return io


# ---------------------------------------------------------------------------------------------- comfy.*


class InterruptProcessingException(Exception):
    pass


def _model_management():
    mm = types.ModuleType("comfy.model_management")
    state = {"interrupt": False, "loads": []}
    mm.state = state
    mm.InterruptProcessingException = InterruptProcessingException
    mm.OOM_EXCEPTION = torch.cuda.OutOfMemoryError
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = lambda force=False: None

    def interrupt_current_processing(value=True):
        state["interrupt"] = value

    def processing_interrupted():
        return state["interrupt"]

    def throw_exception_if_processing_interrupted():
        if state["interrupt"]:
            state["interrupt"] = False
            raise InterruptProcessingException()

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        for m in models:
            state["loads"].append((m, memory_required, force_full_load))
            m.load(m.load_device)

    mm.interrupt_current_processing = interrupt_current_processing
    mm.processing_interrupted = processing_interrupted
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.load_models_gpu = load_models_gpu
    return mm


class ModelPatcher:
    """What the real one does to the module it wraps: reads/sets ``model.device``, moves it on load."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device = model, load_device, offload_device
        if not hasattr(self.model, "device"):
            self.model.device = offload_device
        elif self.model.device is None:
            self.model.device = offload_device
        self.model.model_loaded_weight_memory = 0

    def model_patches_models(self):
        return []

    def get_model_object(self, name):
        return getattr(self.model, name)

    def load(self, device_to):
        self.model.to(device_to)
        self.model.device = device_to
        self.model.model_loaded_weight_memory = sum(p.numel() * p.element_size() for p in self.model.parameters())


def _utils():
    utils = types.ModuleType("comfy.utils")
    utils.PROGRESS_BAR_HOOK = None

    def set_progress_bar_global_hook(function):
        utils.PROGRESS_BAR_HOOK = function

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current, self.hook, self.node_id = total, 0, utils.PROGRESS_BAR_HOOK, node_id

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            if self.hook is not None:
                self.hook(self.current, self.total, preview, node_id=self.node_id)

        def update(self, value):
            self.update_absolute(self.current + value)

    utils.set_progress_bar_global_hook, utils.ProgressBar = set_progress_bar_global_hook, ProgressBar
    return utils


def _samplers(mm):
    import comfy_model_sampling

    samplers = types.ModuleType("comfy.samplers")
    samplers.state = {"samples": []}
    samplers.calculate_sigmas = comfy_model_sampling.calculate_sigmas

    class Sampler:
        def sample(self):
            pass

    class CFGGuider:
        def __init__(self, model_patcher):
            self.model_patcher, self.cfg, self.original_conds = model_patcher, 1.0, {}

        def set_conds(self, positive, negative):
            self.original_conds = {"positive": positive, "negative": negative}

        def set_cfg(self, cfg):
            self.cfg = cfg

        def __call__(self, x, timestep, model_options={}, seed=None):
            cond = self.inner_model.apply_model(x, timestep, self.conds["positive"])
            if math.isclose(self.cfg, 1.0):
                return cond
            uncond = self.inner_model.apply_model(x, timestep, self.conds["negative"])
            return uncond + (cond - uncond) * self.cfg

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                   seed=None):
            mm.load_models_gpu([self.model_patcher])
            self.inner_model = self.model_patcher.model
            self.conds = {}
            for key, conds in self.original_conds.items():
                self.conds[key] = [{"cross_attn": c[0].clone(), "model_conds": {
                    name: value.clone() if torch.is_tensor(value) else value for name, value in c[1].items()}}
                    for c in conds]
            samplers.state["samples"].append({"noise": noise.clone(), "latent": latent_image.clone(),
                                              "sigmas": sigmas.clone(), "cfg": self.cfg, "seed": seed})
            out = sampler.sample(self, sigmas, {"model_options": {"transformer_options": {"sample_sigmas": sigmas}},
                                                "seed": seed}, callback, noise, latent_image, denoise_mask, disable_pbar)
            return self.inner_model.process_latent_out(out.float())

    samplers.Sampler, samplers.CFGGuider = Sampler, CFGGuider
    return samplers


def _folder_paths(models_dir: str):
    fp = types.ModuleType("folder_paths")
    fp.models_dir = models_dir
    fp.supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
    fp.folder_names_and_paths = {}

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        if folder_name in fp.folder_names_and_paths:
            paths = fp.folder_names_and_paths[folder_name][0]
            if full_folder_path not in paths:
                paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
        else:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

    def get_filename_list(folder_name):
        paths, exts = fp.folder_names_and_paths[folder_name]
        out = []
        for base in paths:
            for root, _, files in os.walk(base):
                for f in files:
                    if not exts or os.path.splitext(f)[1].lower() in exts:
                        out.append(os.path.relpath(os.path.join(root, f), base))
        return sorted(out)

    def get_full_path(folder_name, filename):
        for base in fp.folder_names_and_paths[folder_name][0]:
            p = os.path.join(base, filename)
            if os.path.isfile(p):
                return p
        return None

    def get_full_path_or_raise(folder_name, filename):
        p = get_full_path(folder_name, filename)
        if p is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return p

    def get_input_directory():  # ComfyUI: <base>/input beside <base>/models
        return os.path.join(os.path.dirname(models_dir), "input")

    fp.add_model_folder_path, fp.get_filename_list = add_model_folder_path, get_filename_list
    fp.get_full_path, fp.get_full_path_or_raise = get_full_path, get_full_path_or_raise
    fp.get_input_directory = get_input_directory
    return fp


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Not called by 0.3.64's loader."""

    @abstractmethod
    async def get_node_list(self) -> list: ...


def modules(models_dir: str) -> dict[str, Any]:
    """Fresh stub modules, keyed by the names the pack imports."""
    io = _io_module()
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ComfyExtension = io, ComfyExtension
    latest.ui = types.ModuleType("comfy_api.latest.ui")
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.latest = latest
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    mm, utils = _model_management(), _utils()
    patcher = types.ModuleType("comfy.model_patcher")
    patcher.ModelPatcher = ModelPatcher
    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(preview_size=512)
    samplers = _samplers(mm)
    comfy.model_management, comfy.utils, comfy.model_patcher, comfy.cli_args = mm, utils, patcher, cli_args
    comfy.samplers = samplers
    return {
        "comfy_api": comfy_api, "comfy_api.latest": latest, "comfy": comfy, "comfy.model_management": mm,
        "comfy.utils": utils, "comfy.model_patcher": patcher, "comfy.cli_args": cli_args, "comfy.samplers": samplers,
        "folder_paths": _folder_paths(models_dir),
    }
