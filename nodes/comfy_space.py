"""A ComfyUI VAE as the ``external.LatentSpace`` of a MODEL: how its latents relate to pixel clips.

``vdm_core`` samples the model's latents in the model's own normalisation (what ``process_latent_in``
gives: Wan's per-channel ``(z − mean)/std``, LTX-Video's identity; ComfyUI: comfy/latent_formats.py) and
observes pixels through the decoder. ComfyUI's VAE works on raw latents (``VAE.encode`` returns them,
``VAE.decode`` takes them; comfy/sd.py), so:

* ``decode`` (inside a session, differentiable): the latent un-normalised by the affine map probed from
  ``process_latent_out`` (probing, not calling it under autograd: Wan's mean/std are inference tensors),
  then ``vae.first_stage_model.decode`` directly — ``VAE.decode`` clamps (zero gradient outside [0, 1]),
  loads the VAE on its own and has no gradient once it tiles. Output ``[B, 3, F, H, W]`` in [-1, 1]
  unclamped. The session (nodes/comfy_session.py) has loaded the decoder with the model and made its
  weights usable by autograd. Called outside a session (``vdm_core.tasks`` probes the decoder's gain before a
  window), it loads the VAE and readies its weights itself — between windows, where no model call is in
  flight;
* ``decode_final`` (after sampling, no gradient): ``VAE.decode``, or ``VAE.decode_tiled`` in temporal tiles
  for long clips;
* ``encode``: ``VAE.encode`` of the pixels, then ``process_latent_in``.

Causality (``LatentSpace.causal``, latents of the first ``1 + time·k`` frames independent of later frames)
by the VAE's class: Wan 2.1/2.2 (comfy/ldm/wan/vae.py, vae2_2.py: measured, encoder and decoder causal),
LTX-Video (comfy/ldm/lightricks/vae/causal_video_autoencoder.py: encoder measured causal, decoder not),
HunyuanVideo (an ``AutoencoderKL`` with 3-D convolutions padded on past frames only, comfy/ldm/modules/
diffusionmodules/model.py ``VideoConv3d``: causal by construction, not measured here).
"""
from __future__ import annotations

import contextlib
import inspect

import comfy.model_management as mm
import torch
import torch.utils.checkpoint

from ..vdm_core import external
from ..vdm_app.autograd_weights import autograd_safe

CAUSAL_VAES = {"WanVAE", "VideoVAE"}
"""``first_stage_model`` classes with a causal encoder: Wan 2.1/2.2 (``WanVAE``) and LTX-Video (``VideoVAE``)."""
LONG_CLIP_LATENTS = 32
"""Latent frames above which ``decode_final`` decodes in temporal tiles (twice the native window when known)."""


def is_causal(vae) -> bool:
    """Whether the VAE's encoder is causal in time (see the module docstring)."""
    fsm = vae.first_stage_model
    name = type(fsm).__name__
    if name in CAUSAL_VAES:
        return True
    # HunyuanVideo's VAE: AutoencoderKL with 3-D causal convolutions, 4× in time, 8× in space (comfy/sd.py)
    return name == "AutoencoderKL" and getattr(vae, "latent_dim", 2) == 3 and vae.temporal_compression_decode() == 4


@torch.inference_mode(False)
def latent_out_affine(base_model, channels: int, ndim: int = 5, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``base_model.process_latent_out(z) == A·z + B``, per channel (normal tensors, shaped
    ``[1, C, 1, …]``): probed on 0 and 1 without gradient, checked on a random latent. Raises ValueError if
    the model's latent format is not a per-channel affine map."""
    shape = (1, channels) + (1,) * (ndim - 2)
    with torch.no_grad():
        b = base_model.process_latent_out(torch.zeros(shape, device=device)).clone().float()
        a = base_model.process_latent_out(torch.ones(shape, device=device)).clone().float() - b
        probe = torch.randn((1, channels) + (3,) * (ndim - 2), generator=torch.Generator().manual_seed(0)).to(device)
        got = base_model.process_latent_out(probe.clone()).float()
    if not torch.allclose(got, a * probe + b, rtol=1e-4, atol=1e-5):
        raise ValueError(f"{type(base_model).__name__}'s latent format is not a per-channel affine map; it cannot "
                         "be observed through its VAE here")
    return a, b


def _chunk_calls(module: torch.nn.Module) -> bool:
    """Whether ``module`` is called with a causal cache (Wan 2.1/2.2's ``Decoder3d``, once per chunk of latent
    frames, and its blocks: ``forward(x, feat_cache=list, feat_idx=[i])``, comfy/ldm/wan/vae.py)."""
    return "feat_cache" in inspect.signature(module.forward).parameters


def _checkpointed_call(original, store: torch.device | None = None, inner: tuple = ()):
    """``original(x, feat_cache, feat_idx)`` (a call that reads and replaces entries of a causal cache) recomputed
    in the backward pass, exactly: the cache enters the checkpointed call as inputs and leaves as outputs, so a
    recompute sees the cache its own call saw and gradients flow through it to earlier calls. With ``store``,
    the cache a call was given is kept there until the backward pass (copied back for the recompute; the copies
    are differentiable, so the gradient is the same). ``inner``: modules whose calls are checkpointed the same
    way while ``original`` runs — installed by the checkpointed call itself, so its recompute (in the backward
    pass, after the caller's ``with checkpointed_chunks`` may have ended) runs the same wrapped blocks and saves
    the same tensors as the forward did."""

    def forward(x, feat_cache=None, feat_idx=None, **kw):
        if feat_cache is None or not torch.is_grad_enabled():
            return original(x, feat_cache=feat_cache, feat_idx=[0] if feat_idx is None else feat_idx, **kw)
        start, device = 0 if feat_idx is None else feat_idx[0], x.device

        def call(x, *cache):
            cache = [c.to(device) if store is not None and isinstance(c, torch.Tensor) else c for c in cache]
            idx = [start]
            with _each_checkpointed(inner):
                out = original(x, feat_cache=cache, feat_idx=idx, **kw)
            return out, cache, idx[0]

        given = [c.to(store) if store is not None and isinstance(c, torch.Tensor) else c for c in feat_cache]
        out, cache, used = torch.utils.checkpoint.checkpoint(call, x, *given, use_reentrant=False)
        feat_cache[:] = cache
        if feat_idx is not None:
            feat_idx[0] = used
        return out

    return forward


@contextlib.contextmanager
def checkpointed_chunks(first_stage_model: torch.nn.Module, store: torch.device | None = None):
    """Each chunk call of a causal video decoder recomputed in the backward pass (activation checkpointing), and
    inside it each block that takes the cache (Wan's residual, attention and resampling blocks), exactly: every
    cache (``feat_cache``, the last frames of every causal convolution's input) enters a checkpointed call as an
    input and leaves as an output (``_checkpointed_call``). A pixel observation's gradient then holds the caches,
    the chunks' inputs and the block inputs of one chunk, and recomputes one block at a time, instead of every
    frame's activations (tests/harness/bench_decoder.py). With ``store`` (the host's memory, when the decoder runs
    on an accelerator) each chunk's cache waits there for the backward pass, and the accelerator holds one chunk's
    cache at a time: at 33×480×832 the caches are most of what grows with the frames. Decoders without chunk
    calls (LTX-Video) are left alone. Restored on exit."""
    decoder = getattr(first_stage_model, "decoder", None)
    if decoder is None or "forward" in decoder.__dict__ or not _chunk_calls(decoder):
        yield False
        return
    blocks = [m for name in ("middle", "upsamples") for m in getattr(decoder, name, ())
              if "forward" not in m.__dict__ and _chunk_calls(m)]
    decoder.forward = _checkpointed_call(decoder.forward, store, tuple(blocks))
    try:
        yield True
    finally:
        del decoder.forward


@contextlib.contextmanager
def _each_checkpointed(modules: tuple):
    """Each of ``modules`` called through ``_checkpointed_call`` inside the block (instance attributes, removed on
    exit): a chunk call's blocks, during that call and during its recompute."""
    for module in modules:
        module.forward = _checkpointed_call(module.forward)
    try:
        yield
    finally:
        for module in modules:
            del module.forward


def vae_space(vae, base_model, session, *, native_latents: int | None = None) -> external.LatentSpace:
    """The ``LatentSpace`` of ``vae`` for the MODEL whose ``comfy.model_base`` object is ``base_model``.
    ``session`` is the ``ComfySession`` (``decode_final`` and ``encode`` refuse to run inside it: they load
    the VAE on their own, which can move the diffusion model off the device between its calls)."""
    channels = int(vae.latent_channels)
    time = vae.temporal_compression_decode() or 1
    scale = int(vae.spacial_compression_decode())
    affine = {}

    def un_normalise(x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.ndim)
        if key not in affine:
            affine[key] = latent_out_affine(base_model, channels, x.ndim, x.device)
        a, b = affine[key]
        return a * x.float() + b

    def outside(name: str) -> None:
        if session.active:
            raise RuntimeError(f"LatentSpace.{name} runs outside SigmaModel.run (it loads the VAE on its own); "
                               "inside use decode")

    def decode(x: torch.Tensor) -> torch.Tensor:
        if not session.active:  # e.g. probing the decoder's gain before a window: ready it here, nothing runs now
            mm.load_models_gpu([vae.patcher], memory_required=int(3 * vae.memory_used_decode(x.shape, vae.vae_dtype)))
            autograd_safe(vae.first_stage_model)
        raw = un_normalise(x).to(device=vae.device, dtype=vae.vae_dtype)
        store = torch.device("cpu") if raw.device.type != "cpu" else None
        with checkpointed_chunks(vae.first_stage_model, store):
            images = vae.first_stage_model.decode(raw)
        return images.to(device=x.device, dtype=torch.float32)

    def decode_final(x: torch.Tensor) -> torch.Tensor:
        outside("decode_final")
        with torch.no_grad():
            raw = un_normalise(x)
            long = 2 * native_latents if native_latents else LONG_CLIP_LATENTS
            if raw.ndim == 5 and raw.shape[2] > long:
                tile = native_latents or LONG_CLIP_LATENTS // 2
                images = vae.decode_tiled(raw, tile_x=raw.shape[-1], tile_y=raw.shape[-2], overlap=0,
                                          tile_t=tile, overlap_t=max(1, tile // 8))
            else:
                images = vae.decode(raw)  # [B, F, H, W, 3] in [0, 1] (ComfyUI falls back to tiles itself on OOM)
            if images.ndim == 4:  # an image VAE: one frame
                images = images.unsqueeze(1)
        return (images.movedim(-1, 1).float() * 2 - 1).to(x.device)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        outside("encode")
        out = []
        with torch.no_grad():
            for clip in pixels:  # [3, F, H, W] in [-1, 1] → IMAGE [F, H, W, 3] in [0, 1]
                image = ((clip.float() + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0).cpu()
                raw = vae.encode(image)
                out.append(base_model.process_latent_in(raw.to(pixels.device).float()))
        with torch.inference_mode(False):
            return torch.cat(out).clone()

    return external.LatentSpace(decode=decode, decode_final=decode_final, channels=channels, time=time, scale=scale,
                                encode=encode, causal=is_causal(vae))
