"""One window of our own DDIM loop run inside ComfyUI's sampling of a MODEL (``external.SigmaModel.run``).

ComfyUI samples a MODEL through ``comfy.samplers.CFGGuider.sample`` (ComfyUI: comfy/samplers.py): it copies
the conditionings, applies hooks and patches, loads the model through its memory manager
(``comfy.sampler_helpers.prepare_sampling``), encodes the conds for the noise's shape and then calls the
``sample`` method of a ``comfy.samplers.Sampler`` with ``model_wrap``, the guider itself, whose call
``model_wrap(x, σ, model_options=…, seed=…)`` is the CFG-combined x̂0 with every patch applied. Our
:class:`LoopSampler` is such a Sampler: its ``sample`` hands that denoiser to the SigmaModel and runs the
window's loop (``fn``). The guider's return value (``process_latent_out`` of it) is ignored: the session
returns ``fn()``'s latents in the model's own normalisation, what ``vdm_core`` samples.

What else the session does, in order, all undone in ``finally`` (measured in the real ComfyUI by
tests/harness/direct_loop.py and server_e2e.py; ComfyUI: execution.py runs nodes under
``torch.inference_mode()``, comfy/model_management.py ``load_models_gpu`` / ``in_training``):

* one ``comfy.model_management.load_models_gpu([model, vae.patcher], memory_required=…)`` with a rough
  forward+backward estimate, before the first model call, so the VAE's decoder (pixel observations)
  never triggers a load of its own between model calls;
* :func:`autograd_safe` on the diffusion model's and the VAE's modules, and on the processed conds:
  ComfyUI runs nodes under ``torch.inference_mode()`` and the weights it loads or moves there are
  inference tensors, which autograd refuses; each is replaced by a normal clone, one tensor at a time
  (peak memory: the largest tensor). Redone every session: ComfyUI's later moves and unpatching bring
  inference tensors back;
* ``comfy.model_management.in_training = True`` where the flag exists (0.33: plain-torch RoPE and
  friends instead of comfy_kitchen kernels that have no backward; ComfyUI's own trainer sets it);
* the diffusion model's forward wrapped in ``torch.func.functionalize`` for models whose forward updates
  saved tensors in place (LTX-Video: ``x += …``/``addcmul_``; any other model whose backward reports
  "modified by an inplace operation" gets it too, and the window is sampled again);
* optionally (the node's ``checkpointing``) activation checkpointing of each transformer block, by
  wrapping the block's own ``forward`` (never Wan's ``patches_replace`` ``original_block`` closure, which
  recomputes the wrong block); for a functionalized model each checkpointed block is functionalized on
  its own instead (a checkpoint inside a functionalized forward fails to recompute).

ComfyUI's cancel exception (``InterruptProcessingException``: an ``Exception`` on 0.3.64, a
``BaseException`` on 0.33) passes through untouched: nothing here catches more than a RuntimeError.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import comfy.model_management as mm
import comfy.samplers
import torch
import torch.utils.checkpoint

from ..vdm_app.autograd_weights import autograd_safe, unusable_for_autograd

BLOCK_LISTS = ("blocks", "transformer_blocks", "double_blocks", "single_blocks", "joint_blocks")
"""Names of the ModuleLists of transformer blocks in ComfyUI's video models (comfy/ldm/wan/model.py
``blocks``, comfy/ldm/lightricks/model.py ``transformer_blocks``, comfy/ldm/hunyuan_video/model.py
``double_blocks``/``single_blocks``)."""
INPLACE_ERROR = "modified by an inplace operation"
INPLACE_MODELS = ("LTXV", "LTXAV")
"""``comfy.model_base`` classes (and their subclasses) whose diffusion model updates saved activations in
place (comfy/ldm/lightricks/model.py: ``x += …``, ``addcmul_`` on tensors autograd saved)."""


# ---------------------------------------------------------------------------------------------- tensors


@torch.inference_mode(False)
def autograd_safe_conds(obj, _seen=None) -> int:
    """Clone, in place, the inference tensors held by processed conds (``CFGGuider.conds``: lists of dicts
    whose ``model_conds`` hold ``comfy.conds.CONDRegular``-like objects with a ``cond`` tensor); returns how
    many. A cond used by an op that saves it for backward would otherwise fail like the weights."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    n = 0
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in list(items):
        if torch.is_tensor(value):
            if unusable_for_autograd(value):
                obj[key] = value.clone()
                n += 1
        else:
            n += autograd_safe_conds(value, seen)
    cond = getattr(obj, "cond", None)
    if torch.is_tensor(cond) and unusable_for_autograd(cond):
        obj.cond = cond.clone()
        n += 1
    return n


# ---------------------------------------------------------------------------------------------- model wrappers


def block_modules(diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a diffusion model (the ModuleLists named in :data:`BLOCK_LISTS`)."""
    out = []
    for name in BLOCK_LISTS:
        blocks = getattr(diffusion_model, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            out.extend(blocks)
    return out


@contextlib.contextmanager
def checkpointed_blocks(diffusion_model: torch.nn.Module, enabled: bool = True, functional: bool = False):
    """Each block's forward recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant) while
    autograd records; plain otherwise. The wrapper is bound to its own block, so a recompute runs that
    block. ``functional``: each block also runs through ``torch.func.functionalize`` on a copy of its first
    input (a checkpoint cannot sit inside a functionalized forward — its recompute runs outside the
    transform — and a block that updates its input in place must not touch the caller's tensor, which
    autograd saved). Restored (the instance attribute removed) on exit."""
    blocks = block_modules(diffusion_model) if enabled else []
    if enabled and not blocks:
        logging.warning("comfyui-vdm: %s has no block list (%s): checkpointing has no effect",
                        type(diffusion_model).__name__, ", ".join(BLOCK_LISTS))
    wrapped = []
    try:
        for block in blocks:
            if "forward" in block.__dict__:  # someone else's wrapper: leave the block alone
                continue
            original = block.forward
            if functional:
                def body(x, *args, _original=original, **kwargs):
                    return torch.func.functionalize(lambda x_, *a: _original(x_.clone(), *a, **kwargs))(x, *args)
            else:
                body = original

            def forward(*args, _body=body, **kwargs):
                if torch.is_grad_enabled():
                    return torch.utils.checkpoint.checkpoint(_body, *args, use_reentrant=False, **kwargs)
                return _body(*args, **kwargs)

            block.forward = forward
            wrapped.append(block)
        yield len(wrapped)
    finally:
        for block in wrapped:
            del block.forward


@contextlib.contextmanager
def functionalized(diffusion_model: torch.nn.Module, enabled: bool = True):
    """The whole forward of ``diffusion_model`` through ``torch.func.functionalize`` (in-place updates become
    out-of-place, so tensors autograd saved stay intact). Per-block functionalize is not enough: the
    mutation of a block's input is copied back (measured with LTX-Video by tests/harness/direct_loop.py).
    Restored on exit."""
    if not enabled or "forward" in diffusion_model.__dict__:
        yield False
        return
    original = diffusion_model.forward

    def forward(*args, **kwargs):
        return torch.func.functionalize(lambda *a: original(*a, **kwargs))(*args)

    diffusion_model.forward = forward
    try:
        yield True
    finally:
        del diffusion_model.forward


@contextlib.contextmanager
def training_flag():
    """``comfy.model_management.in_training = True`` where the flag exists (0.33), restored on exit."""
    if not hasattr(mm, "in_training"):
        yield
        return
    old = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = old


# ---------------------------------------------------------------------------------------------- the session


class LoopSampler(comfy.samplers.Sampler):
    """A ``comfy.samplers.Sampler`` whose ``sample`` runs ``loop(denoise, model_wrap)`` instead of a ComfyUI
    sampler; ``denoise(x, σ[B]) → x̂0`` is ComfyUI's CFG denoiser with the sampling's model options and
    seed. Returns the loop's result (ComfyUI then applies ``process_latent_out`` to it)."""

    def __init__(self, loop: Callable):
        self.loop = loop

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        options, seed = extra_args.get("model_options", {}), extra_args.get("seed")

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return model_wrap(x, sigma.to(x.device), model_options=options, seed=seed)

        return self.loop(denoise, model_wrap)


class ComfySession:
    """The ``external.Session`` of an ``external.SigmaModel`` driving a ComfyUI MODEL: ``session(window, shape,
    sigmas)`` samples one window of latents ``shape`` inside ``CFGGuider.sample`` at the noise levels ``sigmas``
    (the window's grid, ending in 0), calling ``window(denoise)`` with ComfyUI's denoiser.

    ``patcher``: the MODEL (its patches apply); ``positive``/``negative``: conditionings (ComfyUI's
    CONDITIONING lists, never empty: an empty list runs without calling the model and returns x̂0 = 0);
    ``cfg``: classifier-free guidance scale (1: the negative is never evaluated); ``vae``: a ``comfy.sd.VAE``
    to load and ready with the model, or None; ``checkpointing``: per-block activation checkpointing;
    ``memory(shape)``: bytes to reserve beside the weights. ``active`` is True while a window samples."""

    def __init__(self, patcher, positive, negative, cfg: float, *, vae=None, checkpointing: bool = False,
                 memory: Callable[[tuple], int] | None = None):
        self.patcher, self.positive, self.negative, self.cfg = patcher, positive, negative, float(cfg)
        self.vae, self.checkpointing, self.memory = vae, bool(checkpointing), memory
        self.functionalize = bool({c.__name__ for c in type(patcher.model).__mro__} & set(INPLACE_MODELS))
        self.active = False
        self.stats = {"sessions": 0, "cloned": 0, "cloned_conds": 0}

    def __call__(self, window: Callable, shape: tuple, sigmas: list[float]) -> torch.Tensor:
        try:
            return self._sample(window, shape, sigmas)
        except RuntimeError as e:
            if INPLACE_ERROR not in str(e) or self.functionalize:
                raise
            logging.info("comfyui-vdm: %s updates tensors in place that the guidance gradient needs; sampling "
                         "the window again with its forward functionalized", type(self.patcher.model).__name__)
            self.functionalize = True
            return self._sample(window, shape, sigmas)

    def _sample(self, window, shape, sigmas) -> torch.Tensor:
        result = {}

        def loop(denoise, model_wrap):
            base = model_wrap.inner_model
            with torch.inference_mode(False):
                patchers = [model_wrap.model_patcher] + ([self.vae.patcher] if self.vae is not None else [])
                need = int(self.memory(shape)) if self.memory is not None else 0
                mm.load_models_gpu(patchers, memory_required=need)
                self.stats["cloned"] += autograd_safe(base)
                if self.vae is not None:
                    self.stats["cloned"] += autograd_safe(self.vae.first_stage_model)
                self.stats["cloned_conds"] += autograd_safe_conds(model_wrap.conds)
                self.active = True
                dm = base.diffusion_model
                per_block = self.checkpointing and bool(block_modules(dm))
                try:
                    with training_flag(), functionalized(dm, self.functionalize and not per_block), \
                            checkpointed_blocks(dm, per_block, functional=self.functionalize):
                        result["x"] = window(denoise)
                finally:
                    self.active = False
            out = result["x"]  # what ComfyUI gets (it applies process_latent_out); ours is returned below
            return out.detach().clone() if torch.is_tensor(out) and tuple(out.shape) == tuple(shape) else \
                torch.zeros(shape, device=model_wrap.model_patcher.load_device)

        zeros = torch.zeros(shape)
        guider = comfy.samplers.CFGGuider(self.patcher)
        guider.set_conds(self.positive, self.negative)
        guider.set_cfg(self.cfg)
        self.stats["sessions"] += 1
        guider.sample(zeros, zeros.clone(), LoopSampler(loop), torch.tensor(sigmas, dtype=torch.float32),
                      disable_pbar=True, seed=0)
        return result["x"]
