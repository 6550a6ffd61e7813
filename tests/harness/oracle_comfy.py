"""The exact Gaussian oracles through the real ComfyUI: Use ComfyUI Model on a ComfyUI MODEL whose network is
the exact denoiser of a Gaussian clip prior, for each prediction type as ComfyUI's own model-sampling patches
make it, and the pack's jobs on it, against the closed-form conditionals.

The MODEL is the random tiny Wan 2.1 of ``make_models.py`` (UNETLoader), its ``diffusion_model`` replaced by the
oracle and its ``model_sampling`` by ComfyUI's own classes (the ModelSamplingDiscrete / ContinuousEDM / SD3 nodes,
and Flux's schedule with LTX-Video's μ 2.37). The oracle is written from ComfyUI's ``model_sampling`` alone (no
pack code): at noise level σ (``transformer_options["sigmas"]``, which ComfyUI's sampler passes) the state
``x = a·x0 + b·ε`` with ``(a, b)`` from ``noise_scaling``, ``x`` from the network's input by ``calculate_input``'s
factor, the prior's exact ``E[x0 | x]`` (``tests/oracle.py``: every latent pixel an AR(1) series over 16 frames),
and the network output that ``calculate_denoised`` turns into it (the output enters it affinely). Jobs
(``benchmarks/posterior_oracles.py``'s, in 16 frames): extension 8 → 16 frames, interpolation ×5 from keyframes
0, 5, 10, 15, upscaling ×2 from 2×2 block means, and ``--drift``: 8 windows of extension, the contrast of each; each through
``vdm_core.tasks`` on the node's model, so inside ComfyUI's CFGGuider, on the grid jobs sample it on, under
``torch.inference_mode()`` as ComfyUI runs nodes. Per kind, job and method: the worst frame's |slope − 1| of the
unknown frames on the exact conditional mean and the range of their variance ratio (both 1 for exact sampling).

usage: COMFY_HOME=/work/comfy/h033 $COMFY_HOME/venv/bin/python tests/harness/oracle_comfy.py MODELS_DIR
           [--kinds wan flow ltxv eps v x0 v_edm] [--jobs extend interpolate upscale2] [--methods posterior both]
           [--steps 32] [--rho 0.9] [--std 0.25] [--drift]
(MODELS_DIR: written by ``make_models.py MODELS_DIR``.)
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import comfyenv
import torch

import comfy.model_sampling as cms
import nodes as comfy_nodes
from comfy_extras import nodes_model_advanced as advanced

sys.path.insert(0, str(comfyenv.PACK))
sys.path.insert(0, str(comfyenv.PACK / "tests"))
import oracle  # noqa: E402  (tests/oracle.py)
from vdm_core import guidance, tasks  # noqa: E402

UNET = "vdm_test_wan21_tiny.safetensors"
CHANNELS, FRAMES, SIZE = 16, 16, 24


def patched(mp, kind: str):
    """``mp`` with the model sampling of ``kind`` (ComfyUI's own patch nodes and classes)."""
    if kind == "wan":
        return mp  # Wan 2.1's own: flow, shift 8
    if kind == "flow":
        return advanced.ModelSamplingSD3().patch(mp, shift=1.0)[0]
    if kind in ("eps", "v", "x0"):
        return advanced.ModelSamplingDiscrete().patch(mp, {"v": "v_prediction"}.get(kind, kind), False)[0]
    if kind == "v_edm":
        return advanced.ModelSamplingContinuousEDM().patch(mp, "v_prediction", 700.0, 0.002)[0]
    if kind == "ltxv":
        class LTXV(cms.ModelSamplingFlux, cms.CONST):
            pass

        ms = LTXV(mp.model.model_config)
        ms.set_parameters(shift=2.37)
        m = mp.clone()
        m.add_object_patch("model_sampling", ms)
        return m
    raise ValueError(kind)


class Oracle(torch.nn.Module):
    """The exact denoiser of ``prior`` as the network of ``base`` (module docstring): output ``out`` with
    ``calculate_denoised(σ, out, x) = E[x0 | x]``."""

    def __init__(self, prior, base):
        super().__init__()
        self.prior = prior
        self.__dict__["base"] = base  # not a submodule: base holds this module
        # what ComfyUI's WAN21 and the node read off its network: input channels, text width, dtype
        self.patch_embedding = base.diffusion_model.patch_embedding
        self.text_dim = base.diffusion_model.text_embedding[0].in_features
        self.dtype = torch.float32

    def forward(self, xc, timestep, context=None, transformer_options={}, **kwargs):
        ms = self.base.model_sampling
        sigma = transformer_options["sigmas"].float().reshape(-1)[:1]
        one = torch.ones(1, dtype=torch.float32)
        a = float(ms.noise_scaling(sigma, torch.zeros(1), one))
        b = float(ms.noise_scaling(sigma, one, torch.zeros(1)))
        x = xc.float() / float(ms.calculate_input(sigma, one))
        x0 = self.prior.mean(x / math.hypot(a, b), math.atan2(b, a))
        d0 = ms.calculate_denoised(sigma, torch.zeros_like(x), x)
        d1 = ms.calculate_denoised(sigma, torch.ones_like(x), x)
        return ((x0 - d0) / (d1 - d0)).to(xc.dtype)


def job(name: str, prior, x: torch.Tensor):
    """(the node-level job on clip ``x`` ``[C, F, H, W]`` as ``f(model, **kw) → clip``, unknown frames, exact
    conditional mean and variances of the unknown frames, ``[1, C, F', H, W]`` and ``[F']``)."""
    f = x.shape[1]
    if name in ("extend", "interpolate"):
        known = list(range(f // 2)) if name == "extend" else list(range(0, f, 5))
        k, var = oracle.gaussian_conditional(prior.cov, known)
        mean = torch.einsum("uk,ckhw->cuhw", k.float(), x[:, known])[None]
        unknown = [i for i in range(f) if i not in known]
        if name == "extend":
            return (lambda m, **kw: tasks.extend(m, x[:, known], f - len(known), window=f, **kw)), unknown, mean, var
        return (lambda m, **kw: tasks.interpolate(m, x[:, known], 5, window=f, **kw)), unknown, mean, var
    y = guidance.area_downsample(x[None], 2)
    return ((lambda m, **kw: tasks.upscale(m, y[0], 2, window=f, **kw)), list(range(f)),
            y.repeat_interleave(2, 3).repeat_interleave(2, 4), 0.75 * torch.diag(prior.cov))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models_dir")
    ap.add_argument("--kinds", nargs="+", default=["wan", "flow", "ltxv", "eps", "v", "x0", "v_edm"])
    ap.add_argument("--jobs", nargs="*", default=["extend", "interpolate", "upscale2"])
    ap.add_argument("--methods", nargs="+", default=["posterior", "both"])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rho", type=float, default=0.9)
    ap.add_argument("--std", type=float, default=0.25)
    ap.add_argument("--drift", action="store_true", help="also the contrast over 8 extension windows")
    a = ap.parse_args()
    t0 = time.time()
    pack = comfyenv.load_pack()
    comfyenv.use_models(a.models_dir)
    prior = oracle.CorrelatedGaussian(FRAMES, a.rho, a.std)
    x = prior.draw(CHANNELS, SIZE, SIZE, seed=22)[:, 0].clamp(-1, 1)  # [C, F, H, W]: every channel a draw (a clip
    # lies in [-1, 1]: the tails beyond 4 std are cut)
    print(f"Command: `COMFY_HOME={comfyenv.HOME} python tests/harness/oracle_comfy.py {' '.join(sys.argv[1:])}`\n\n"
          f"ComfyUI {comfyenv.version()}; ρ {a.rho}, std {a.std}; {CHANNELS}×{SIZE}² latent series of {FRAMES} "
          f"frames; {a.steps} steps, auto weight.\n\n"
          "| job | kind | method | worst slope error | variance ratio | s |\n| --- | --- | --- | --- | --- | --- |")
    with torch.inference_mode():
        (base_mp,) = comfy_nodes.UNETLoader().load_unet(UNET, "default")
    base_mp.model.diffusion_model = Oracle(prior, base_mp.model)
    for kind in a.kinds:
        with torch.inference_mode():
            mp = patched(base_mp, kind)
            vdm = pack["VDM_FromComfyModel"].execute(model=mp, vae=None, cfg=1.0, checkpointing=False).args[0]
        for name in a.jobs:
            run, unknown, mean, var = job(name, prior, x)
            for method in a.methods:
                t = time.time()
                with torch.inference_mode():
                    out = run(vdm.network, steps=a.steps, method=method, seed=3)
                slopes, ratios = oracle.frame_fit(out[None][:, :, unknown].float(), mean, var)
                print(f"| {name} | {kind} | {method} | {max(abs(s - 1) for s in slopes):.3f} | "
                      f"{min(ratios):.2f}–{max(ratios):.2f} | {time.time() - t:.0f} |", flush=True)
    if a.drift:
        print(f"\n| kind | method | contrast per window ({a.steps} steps, 8 windows of 16, 8 known) |\n| --- | --- | --- |")
        clip = x[:, :8]
        for kind in a.kinds:
            with torch.inference_mode():
                mp = patched(base_mp, kind)
                vdm = pack["VDM_FromComfyModel"].execute(model=mp, vae=None, cfg=1.0, checkpointing=False).args[0]
            for method in a.methods:
                with torch.inference_mode():
                    out = tasks.extend(vdm.network, clip, 64, window=16, steps=a.steps, method=method, seed=3)
                contrast = [out[:, 8 + 8 * w:16 + 8 * w].std().item() / a.std for w in range(8)]
                print(f"| {kind} | {method} | {', '.join(f'{c:.2f}' for c in contrast)} |", flush=True)
    print(f"\ndone in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
