"""Use ComfyUI Model: a MODEL loaded by ComfyUI (+ its VAE, conditioning, cfg) as a VDM_MODEL.

The result is a ``vdm_app.models.VDMModel`` whose network is an ``external.SigmaModel`` (vdm_core/external.py):
the pack's samplers and jobs drive it like their own models, in the MODEL's latent space, with its own
noise schedule. From the MODEL (ComfyUI: comfy/model_patcher.py, comfy/model_sampling.py, comfy/samplers.py):

* ``ms = model.get_model_object("model_sampling")`` — the prediction type and schedule, with the
  ModelSampling* nodes' patches (shift) applied; the sampler state is ``x = a·x0 + b·ε`` with
  ``a = ms.noise_scaling(σ, 0, 1)``, ``b = ms.noise_scaling(σ, 1, 0)`` for every prediction type;
* the step grid: ``comfy.samplers.calculate_sigmas(ms, "simple", steps)`` (it follows the shift);
* each window samples inside ComfyUI's own sampling (nodes/comfy_session.py), in the latent space of
  the VAE (nodes/comfy_space.py).

Without ``positive`` the model gets a zero text conditioning of the shape its cross-attention takes
(never an empty list: ComfyUI then skips the model and returns x̂0 = 0).
"""
from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.latest import io

from ..vdm_app import models, node_functions
from ..vdm_core import external
from .common import run, schema
from .comfy_session import ComfySession, block_modules
from .comfy_space import vae_space

NODE_ID = "VDM_FromComfyModel"
SCHEDULER = "simple"
NATIVE_LATENT_FRAMES = (("WAN22", 31), ("WAN21", 21), ("LTXV", 16), ("HunyuanVideo", 33))
"""Native windows in latent frames by ``comfy.model_base`` class (checked in this order, subclasses
included): Wan 2.2 5B 121 frames, Wan 2.1 (and 2.2 14B) 81 frames, LTX-Video 121 frames, HunyuanVideo 129
frames — the lengths of their reference settings and ComfyUI's templates."""


def _classes(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def sampling_functions(ms):
    """``(scaling, sigma_min, sigma_max, sigmas)`` of a ComfyUI ``model_sampling`` object for
    ``external.SigmaModel``."""

    def scaling(sigma: float) -> tuple[float, float]:
        s = torch.tensor([float(sigma)], dtype=torch.float64)
        zero, one = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
        a = ms.noise_scaling(s, zero.clone(), one.clone())
        b = ms.noise_scaling(s, one.clone(), zero.clone())
        return float(a.reshape(-1)[0]), float(b.reshape(-1)[0])

    def sigmas(steps: int) -> list[float]:
        return [float(s) for s in comfy.samplers.calculate_sigmas(ms, SCHEDULER, int(steps))]

    return scaling, float(ms.sigma_min), float(ms.sigma_max), sigmas


def native_latent_frames(base_model) -> int | None:
    names = _classes(base_model)
    return next((n for cls, n in NATIVE_LATENT_FRAMES if cls in names), None)


def zero_conditioning(base_model) -> list:
    """A CONDITIONING of one zero text token for the model's cross-attention (Wan: ``[1, 1, text_dim]``;
    LTX-Video: also its attention mask; HunyuanVideo: also a zero pooled vector). Raises ValueError for
    models whose text input is not known here."""
    names, dm = _classes(base_model), base_model.diffusion_model
    if "WAN21" in names:  # comfy/ldm/wan/model.py: text_embedding = Sequential(Linear(text_dim, dim), …)
        dim = getattr(dm, "text_dim", None) or dm.text_embedding[0].in_features
        return [[torch.zeros(1, 1, dim), {}]]
    if "LTXV" in names:  # comfy/ldm/lightricks/model.py: the forward takes the mask positionally
        dim = getattr(dm, "caption_channels", None) or dm.caption_projection.linear_1.in_features
        return [[torch.zeros(1, 1, dim), {"attention_mask": torch.ones(1, 1)}]]
    if "HunyuanVideo" in names:  # comfy/ldm/hunyuan_video/model.py: txt_in(context_in_dim), vector_in(vec_in_dim)
        p = dm.params
        extra = {"pooled_output": torch.zeros(1, p.vec_in_dim)} if getattr(p, "vec_in_dim", None) else {}
        return [[torch.zeros(1, 1, p.context_in_dim), extra]]
    raise ValueError(f"Use ComfyUI Model: this pack does not know the text input of {type(base_model).__name__} "
                     "models; connect `positive` (e.g. CLIP Text Encode of an empty prompt)")


def memory_estimate(patcher, vae, cfg: float, checkpointing: bool):
    """``memory(shape) → bytes`` to keep free beside the weights for one guided window: ComfyUI's forward
    estimate (``BaseModel.memory_required`` of the batch the CFG runs) times the blocks whose activations
    autograd keeps (two with checkpointing: the block inputs and one block recomputed), plus three of the
    VAE's decode estimates (``VAE.memory_used_decode``) when it decodes with gradient. A rough figure."""
    base = patcher.model
    blocks = max(1, len(block_modules(base.diffusion_model)))

    def memory(shape: tuple) -> int:
        batch = shape[0] * (2 if cfg > 1 else 1)
        need = base.memory_required([batch, *shape[1:]]) * (2 if checkpointing else blocks)
        if vae is not None:
            need += 3 * vae.memory_used_decode(shape, vae.vae_dtype)
        return int(need)

    return memory


def from_comfy_model(model, vae=None, positive=None, negative=None, *, cfg: float = 1.0,
                     checkpointing: bool = False) -> tuple[models.VDMModel]:
    """The VDM_MODEL of a ComfyUI MODEL (a ModelPatcher) and optionally its VAE and conditionings."""
    base = model.model
    ms = model.get_model_object("model_sampling")
    scaling, sigma_min, sigma_max, sigmas = sampling_functions(ms)
    if positive is None:
        positive = zero_conditioning(base)
    if negative is None:  # never evaluated at cfg 1; above it, CFG pushes away from a zero text input
        negative = positive if cfg <= 1 else zero_conditioning(base)
    channels = int(base.latent_format.latent_channels)
    if vae is not None and int(vae.latent_channels) != channels:
        raise ValueError(f"Use ComfyUI Model: the VAE makes {vae.latent_channels}-channel latents but the model takes "
                         f"{channels}; connect the model's own VAE")
    session = ComfySession(model, positive, negative, cfg, vae=vae, checkpointing=checkpointing,
                           memory=memory_estimate(model, vae, cfg, checkpointing))
    frames = native_latent_frames(base)
    space = vae_space(vae, base, session, native_latents=frames) if vae is not None else None
    try:
        network = external.SigmaModel(scaling, sigma_min, sigma_max, sigmas, channels=channels, session=session,
                                      space=space, frames=frames, resolution=None, device=model.load_device)
    except ValueError as e:
        raise ValueError(f"Use ComfyUI Model: {type(base).__name__}: {e}") from None
    return (models.VDMModel(network=network, name=type(base).__name__, handle=model),)


node_functions.register(NODE_ID, from_comfy_model)


class VDMFromComfyModel(io.ComfyNode):
    """The node (schema from ``spec.NODES``; host only: its inputs are ComfyUI objects)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(NODE_ID)

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        return run(NODE_ID, inputs)
