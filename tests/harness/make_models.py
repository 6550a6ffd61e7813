"""Write random-weight stand-ins of ComfyUI's video models into a models/ folder, built with ComfyUI's own
classes (seeded random weights), as small as the release's loaders accept:

  diffusion_models/vdm_test_wan21_tiny.safetensors  Wan 2.1 T2V (comfy/ldm/wan/model.py WanModel): dim 128
                   (ComfyUI reads num_heads = dim // 128, so 128 is the smallest), ffn 256, 2 blocks, in/out 16
                   channels, text_dim 4096; detected as WAN21, flow, shift 8. 1.1 M parameters.
  vae/vdm_test_wan21_vae.safetensors               Wan 2.1 VAE (comfy/ldm/wan/vae.py WanVAE): dim 8 where the
                   loader reads the width from the file (0.33), else the full dim 96 (0.3.64 builds dim 96
                   whatever the file holds: 127 M parameters, 484 MiB).
  diffusion_models/vdm_test_ltxv_tiny.safetensors   LTX-Video (comfy/ldm/lightricks/model.py LTXVModel): 32 heads
                   (fixed by ComfyUI) × head_dim 4, 2 blocks, caption 4096; detected as LTXV, Flux shift 2.37.
  vae/vdm_test_ltxv_vae_tiny.safetensors           LTX-Video VAE (…/causal_video_autoencoder.py VideoVAE), 128
                   latent channels, ×8 time, ×32 space, 32 base channels where the release reads them from the
                   config (0.33: 1.1 M parameters; 0.3.64: 128, 14 M), its config as metadata (VAELoader passes it
                   on 0.33 only).
  checkpoints/vdm_test_ltxv_tiny_aio.safetensors    both in one file: CheckpointLoaderSimple passes the metadata
                   on both releases, so this is how 0.3.64 gets a small LTX-Video VAE.

With ``--trained`` the Wan files are the trained tiny Wan 2.1 of tests/harness/models/ (README.md there:
a 4-block denoiser and a dim-8 VAE trained on the pack's procedural clips by tests/harness/tiny_wan.py)
instead of random weights, also under their own names ``diffusion_models/vdm_test_wan21_trained.safetensors``
and ``vae/vdm_test_wan21_trained_vae.safetensors`` (what tests/harness/eval_tiny_wan.py loads). Where the
release builds dim 96 whatever the file holds (0.3.64), the VAE is written widened to dim 96 with zero
channels (``tiny_wan.lift_vae``: the same function, 127 M parameters, 484 MiB).

With ``--templates`` the Wan files are also written under the names ComfyUI's Wan 2.1 templates (and this
pack's workflows/wan_*.json) load: ``diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors`` and
``vae/wan_2.1_vae.safetensors``. The UMT5-XXL text encoder those workflows also load
(``text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors``) has no small stand-in: ComfyUI always builds it at
full size (5.7 B parameters) whatever the file holds, so the Wan workflows still cannot run here.

usage: $COMFY_HOME/venv/bin/python tests/harness/make_models.py MODELS_DIR [--templates | --templates-only]
                                                                    [--only wan,ltxv] [--trained [DIR]]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import comfyenv  # noqa: F401  (ComfyUI on sys.path, --cpu, one thread)
import torch
from safetensors.torch import save_file

import comfy.ops
import comfy.sd

OPS = comfy.ops.disable_weight_init
WAN_TINY = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=128, ffn_dim=256, freq_dim=256,
                text_dim=4096, out_dim=16, num_heads=1, num_layers=2, window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=True, eps=1e-6)
WAN_1_3B = dict(WAN_TINY, dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
"""Wan 2.1 T2V 1.3B's real configuration (what ComfyUI detects from wan2.1_t2v_1.3B_fp16.safetensors)."""
WAN_VAE = dict(z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True],
               dropout=0.0)
LTXV_TINY = dict(in_channels=128, cross_attention_dim=128, attention_head_dim=4, num_attention_heads=32,
                 caption_channels=4096, num_layers=2)
LTXV_VAE = {
    "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
    "encoder_blocks": [["compress_all", {}], ["compress_all", {}], ["compress_all", {}]],
    "decoder_blocks": [["compress_all", {}], ["compress_all", {}], ["compress_all", {}], ["res_x", {"num_layers": 1}]],
    "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
    "use_quant_conv": False, "causal_decoder": False,
}
"""The smallest LTX-Video VAE both releases build: patch 4, three ×2 space-time compressions (×8 time, ×32
space), a res block first in the decoder (ComfyUI recognises the VAE by decoder.up_blocks.0.res_blocks.0)."""
TEMPLATE_NAMES = {"wan": "wan2.1_t2v_1.3B_fp16.safetensors", "wan_vae": "wan_2.1_vae.safetensors"}
TRAINED = Path(__file__).resolve().parent / "models"
TRAINED_FILES = {"wan": "wan21_tiny_t2v.safetensors", "wan_vae": "wan21_tiny_vae.safetensors"}
"""The trained tiny Wan 2.1 in tests/harness/models/ (README.md there) and the names it is written under."""
TRAINED_NAMES = {"wan": "vdm_test_wan21_trained.safetensors", "wan_vae": "vdm_test_wan21_trained_vae.safetensors"}


def randomize(module: torch.nn.Module, seed: int, in_place: bool = False) -> torch.nn.Module:
    """Seeded weights: fan-in scaled normals for matrices and kernels, ones for norm gains, zeros for biases,
    small normals for modulation tables and the rest. ``in_place``: draw the matrices straight into the
    parameters (no temporary; other numbers than the default, for large models)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim >= 2 and "modulation" not in name and "scale_shift_table" not in name:
                if in_place and p.device.type == "cpu":
                    p.normal_(0.0, 1 / math.sqrt(p[0].numel()), generator=g)
                    continue
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif leaf == "gamma" or ("norm" in name and leaf == "weight"):
                p.fill_(1.0)
            elif leaf.startswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return module


def state_dict(module, dtype=torch.float32) -> dict:
    return {k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()}


def wan_model(cfg=WAN_TINY, seed=0, dtype=torch.float32):
    import comfy.ldm.wan.model

    return randomize(comfy.ldm.wan.model.WanModel(**cfg, device="cpu", dtype=dtype, operations=OPS), seed)


def wan_vae(dim: int, seed=1):
    import comfy.ldm.wan.vae

    return randomize(comfy.ldm.wan.vae.WanVAE(dim=dim, **WAN_VAE), seed)


def smallest_wan_vae() -> tuple[dict, int]:
    """The dim-8 Wan VAE if ``comfy.sd.VAE`` builds it from the file, else the dim-96 one ComfyUI insists on."""
    sd = state_dict(wan_vae(8))
    try:
        comfy.sd.VAE(sd=sd)
        return sd, 8
    except RuntimeError as e:  # "size mismatch … current model is [96, …]"
        if "size mismatch" not in str(e):
            raise
    return state_dict(wan_vae(96)), 96


def ltxv_model(seed=2):
    import comfy.ldm.lightricks.model

    return randomize(comfy.ldm.lightricks.model.LTXVModel(**LTXV_TINY, device="cpu", dtype=torch.float32,
                                                          operations=OPS), seed)


def ltxv_vae(config: dict, seed=3):
    import comfy.ldm.lightricks.vae.causal_video_autoencoder as cva

    vae = randomize(cva.VideoVAE(config=dict(config)), seed)
    with torch.no_grad():  # latent statistics: identity normalisation
        vae.per_channel_statistics.get_buffer("std-of-means").fill_(1.0)
        vae.per_channel_statistics.get_buffer("mean-of-means").zero_()
    return vae


def smallest_ltxv_vae() -> tuple[dict, dict]:
    """(state dict, config) of the LTX-Video VAE with 32 base channels where the release builds that from the
    config (0.33: ``encoder/decoder_base_channels``); 0.3.64 ignores them and builds 128 (its file is larger)."""
    small = dict(LTXV_VAE, encoder_base_channels=32, decoder_base_channels=32)
    sd = state_dict(ltxv_vae(small))
    try:
        comfy.sd.VAE(sd=sd, metadata={"config": json.dumps({"vae": small})})
        return sd, small
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
    return state_dict(ltxv_vae(LTXV_VAE)), LTXV_VAE


def trained_wan(src: Path = TRAINED) -> tuple[dict, dict, int]:
    """(denoiser, VAE, VAE width) state dicts of the trained tiny Wan, the VAE widened to dim 96 where this
    release's VAELoader builds that whatever the file holds (0.3.64)."""
    from safetensors.torch import load_file

    from tiny_wan import lift_vae

    sd = {k: v.float() for k, v in load_file(str(Path(src) / TRAINED_FILES["wan"])).items()}
    vae_sd = load_file(str(Path(src) / TRAINED_FILES["wan_vae"]))
    try:
        comfy.sd.VAE(sd=vae_sd)
        return sd, vae_sd, vae_sd["decoder.head.0.gamma"].shape[0]
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
    return sd, lift_vae(vae_sd, 96), 96


def save(sd: dict, path: Path, metadata=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {path}: {n / 1e6:.3f} M parameters, {path.stat().st_size / 2 ** 20:.1f} MiB", flush=True)
    return path


def write(models: Path, only=("wan", "ltxv"), templates=False, own_names=True, trained=None) -> dict[str, Path]:
    out = {}
    if "wan" in only:
        if trained:
            sd, vae_sd, dim = trained_wan(trained)
            print(f"  trained tiny Wan from {trained}; its VAE as dim {dim}")
            out["wan_trained"] = save(sd, models / "diffusion_models" / TRAINED_NAMES["wan"])
            out["wan_vae_trained"] = save(vae_sd, models / "vae" / TRAINED_NAMES["wan_vae"])
        else:
            sd = state_dict(wan_model())
            vae_sd, dim = smallest_wan_vae()
            print(f"  Wan VAE: dim {dim} is the smallest this ComfyUI builds from a file")
        if own_names:
            out["wan"] = save(sd, models / "diffusion_models" / "vdm_test_wan21_tiny.safetensors")
            out["wan_vae"] = save(vae_sd, models / "vae" / "vdm_test_wan21_vae.safetensors")
        if templates:
            out["wan_template"] = save(sd, models / "diffusion_models" / TEMPLATE_NAMES["wan"])
            out["wan_vae_template"] = save(vae_sd, models / "vae" / TEMPLATE_NAMES["wan_vae"])
    if "ltxv" in only:
        model_sd, (vae_sd, config) = state_dict(ltxv_model()), smallest_ltxv_vae()
        meta = {"config": json.dumps({"vae": config})}
        out["ltxv"] = save(model_sd, models / "diffusion_models" / "vdm_test_ltxv_tiny.safetensors")
        out["ltxv_vae"] = save(vae_sd, models / "vae" / "vdm_test_ltxv_vae_tiny.safetensors", meta)
        aio = {f"model.diffusion_model.{k}": v for k, v in model_sd.items()}
        aio.update({f"vae.{k}": v for k, v in vae_sd.items()})
        out["ltxv_aio"] = save(aio, models / "checkpoints" / "vdm_test_ltxv_tiny_aio.safetensors", meta)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models_dir", type=Path)
    ap.add_argument("--templates", action="store_true", help="also write the Wan files under the template names")
    ap.add_argument("--templates-only", action="store_true", help="write only the Wan files under the template names")
    ap.add_argument("--only", default="wan,ltxv")
    ap.add_argument("--trained", nargs="?", const=TRAINED, type=Path,
                    help="the Wan files are the trained tiny Wan (of this folder; default tests/harness/models)")
    a = ap.parse_args()
    t = time.time()
    print(f"ComfyUI {comfyenv.version()}")
    only = ("wan",) if a.templates_only else tuple(a.only.split(","))
    write(a.models_dir, only, a.templates or a.templates_only, own_names=not a.templates_only, trained=a.trained)
    print(f"done in {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
