"""Train the tiny Wan 2.1 of the harness: a Wan 2.1 VAE (comfy/ldm/wan/vae.py ``WanVAE``) as a real
autoencoder, then a Wan 2.1 T2V denoiser (comfy/ldm/wan/model.py ``WanModel``) in its latent space, both on
the pack's procedural clips (``vdm_core.motion.MotionMix``: motion scenes + moving sprites v1, train split).
ComfyUI's own classes, built here and saved as state dicts its loaders read (the committed ones, and the
commands that made them: tests/harness/models/README.md).

  vae OUT.pt       train the VAE (MSE on pixels in [-1, 1] + a small KL), resumable from OUT.pt
  calibrate        fold a per-channel affine map into the VAE's 1×1 convs (``conv1``/``conv2``) so that
                   ComfyUI's Wan21 latent format (comfy/latent_formats.py) maps encoded clips to mean 0, std 1
  latents OUT.pt   encode training clips with the calibrated VAE (normalised as the Wan21 format does)
  dit OUT.pt       train the denoiser on those latents: flow matching x_σ = (1 − σ)·x0 + σ·ε, target ε − x0,
                   σ = shift·t / (1 + (shift − 1)·t), t ~ U(0, 1), shift 8 (comfy/supported_models.py WAN21_T2V,
                   ComfyUI's Wan templates), timestep 1000·σ, a zero text conditioning [B, 1, 4096]
  export DIR       write the safetensors under DIR (vae/, diffusion_models/)
  recon            reconstruction PSNR of a VAE on held-out clips (v1 test split, motion test split,
                   benchmarks/independent_scenes.py)

usage: $COMFY_HOME/venv/bin/python tests/harness/tiny_wan.py COMMAND ... (see --help of each)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import comfyenv  # noqa: F401  (ComfyUI on sys.path, --cpu, one thread)
import torch

PACK = comfyenv.PACK
sys.path.insert(0, str(PACK))
sys.path.insert(0, str(PACK / "benchmarks"))

from vdm_core.data import sprite_batch  # noqa: E402
from vdm_core.motion import MotionMix, motion_batch  # noqa: E402
from vdm_core.train import ema_update  # noqa: E402

VAE_CONFIG = dict(z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True], dropout=0.0)
"""Wan 2.1's VAE configuration as comfy/sd.py builds it (only ``dim`` is free, and only on 0.33)."""
DIT_CONFIG = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=128, ffn_dim=512,
                  freq_dim=256, text_dim=4096, out_dim=16, num_heads=1, num_layers=4, window_size=(-1, -1),
                  qk_norm=True, cross_attn_norm=True, eps=1e-6)
"""The denoiser: dim 128 (ComfyUI reads num_heads = dim // 128, so 128 is the smallest), what
comfy/model_detection.py reads back from the state dict (ffn, layers, in/out channels)."""
SHIFT = 8.0


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def train_step(loss, opt, params, model, ema, step: int, ema_max: float) -> None:
    """One optimiser step on ``loss`` (gradients of ``params`` clipped to norm 1), then ``ema`` follows ``model``
    with decay ``min(ema_max, (1 + step)/(10 + step))`` (``step``: steps done, this one included;
    ``vdm_core.train.ema_update``)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema_update(ema, model, min(ema_max, (1 + step) / (10 + step)))


# ---------------------------------------------------------------------------------------------- models


def init_conv(module: torch.nn.Module, zero_last: bool = True) -> torch.nn.Module:
    """Uniform weights of std 1/√fan_in and zero biases for ComfyUI's convolutions and linears (its
    ``disable_weight_init`` ops skip initialisation); with ``zero_last`` the second convolution of each residual branch starts at zero."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            for base in (torch.nn.Conv3d, torch.nn.Conv2d, torch.nn.Linear):
                if isinstance(m, base):
                    bound = math.sqrt(3 / m.weight[0].numel())  # std 1/√fan_in
                    m.weight.uniform_(-bound, bound, generator=g)
                    if m.bias is not None:
                        m.bias.zero_()
                    break
        if zero_last:
            import comfy.ldm.wan.vae as wv

            for m in module.modules():
                if isinstance(m, wv.ResidualBlock):
                    m.residual[-1].weight.zero_()
                    m.residual[-1].bias.zero_()
    return module


def new_vae(dim: int):
    import comfy.ldm.wan.vae as wv

    return init_conv(wv.WanVAE(dim=dim, **VAE_CONFIG))


def vae_from_state(sd: dict):
    dim = sd["decoder.head.0.gamma"].shape[0]
    vae = new_vae(dim)
    vae.load_state_dict(sd)
    return vae


class Posterior:
    """Captures the output of the VAE's ``conv1`` (mean and log-variance, 2·16 channels) during ``encode``,
    which returns only the mean."""

    def __init__(self, vae):
        self.out = None
        vae.conv1.register_forward_hook(lambda m, i, o: setattr(self, "out", o))

    def mean_logvar(self):
        mu, logvar = self.out.chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)


def clips(split: str, n: int, size: int, frames: int, start: int = 0):
    """``n`` clips ``[n, 3, F, S, S]`` in [-1, 1] of the motion mix of ``split`` (items start…start+n)."""
    ds = MotionMix(size, frames, seed=0, split=split)
    return torch.stack([ds[i] for i in range(start, start + n)])


def held_out_sets(n: int, size: int, frames: int) -> dict:
    """The held-out clips reconstruction is measured on: v1 test split, motion test split, independent set."""
    from independent_scenes import independent_set

    return {"v1 test": sprite_batch("test", range(n), size=size, frames=frames),
            "motion test": motion_batch("test", range(n), size=size, frames=frames),
            "independent": torch.stack([s.clip for s in independent_set(range(n), size, frames)])}


def psnr(x, ref):
    """``[B]`` PSNR (dB) on [0, 1] images of clips in [-1, 1] (as vdm_core.metrics.psnr; x clamped as ComfyUI's
    VAE.decode clamps)."""
    mse = ((x.clamp(-1, 1) - ref) / 2).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1 / mse)


@torch.no_grad()
def reconstruct(vae, x, batch: int = 8):
    return torch.cat([vae.decode(vae.encode(x[i:i + batch])) for i in range(0, len(x), batch)])


def lift_vae(sd: dict, dim: int = 96) -> dict:
    """The state dict of a Wan 2.1 VAE of width ``dim`` that computes exactly what ``sd`` (a narrower one,
    width d) computes: every channel axis of size k·d becomes k·dim with the real channels first and zeros
    after (zero channels stay zero through convolutions without bias, SiLU, nearest upsampling and
    residual sums), except where comfy/ldm/wan/vae.py splits a convolution's output into equal parts: the
    ``upsample3d`` time convolution (2 frames) and the attention's ``to_qkv`` (q, k, v), whose parts are
    padded each. ``RMS_norm`` (``F.normalize`` over channels · √channels · γ): the norm over the channels is
    unchanged by zeros, so γ is scaled by √(d/dim); the attention's scale 1/√channels is undone by scaling q
    by √(dim/d). For 0.3.64, whose VAELoader builds dim 96 whatever the file holds (comfy/sd.py)."""
    import comfy.ldm.wan.vae as wv

    small = sd["decoder.head.0.gamma"].shape[0]
    if dim % small:
        raise ValueError(f"dim {dim} is not a multiple of the VAE's width {small}")
    r = dim // small
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in wv.WanVAE(dim=dim, **VAE_CONFIG).state_dict().items()}
    out = {}
    for key, t in sd.items():
        big = torch.zeros(shapes[key], dtype=t.dtype)
        parts = 3 if ".to_qkv." in key else 2 if ".time_conv." in key and key.startswith("decoder.") else 1
        src = t.clone()
        if ".to_qkv." in key and big.shape[0] != t.shape[0]:
            src[:t.shape[0] // 3] *= math.sqrt(r)  # q: the attention divides by √channels
        if big.shape[0] != t.shape[0]:
            n, nb = t.shape[0] // parts, big.shape[0] // parts
        else:
            parts, n, nb = 1, t.shape[0], t.shape[0]
        for p in range(parts):
            big[(slice(p * nb, p * nb + n),) + tuple(slice(0, s) for s in t.shape[1:])] = src[p * n:(p + 1) * n]
        if key.endswith(".gamma") and big.shape[0] != t.shape[0]:
            big *= math.sqrt(1 / r)
        out[key] = big
    return out


# ---------------------------------------------------------------------------------------------- VAE training


def cmd_vae(a):
    torch.manual_seed(a.seed)
    state = torch.load(a.out, weights_only=False) if os.path.exists(a.out) else None
    if state is not None:
        vae, step = vae_from_state(state["model"]), state["step"]
        ema = vae_from_state(state["ema"])
        log(f"resumed {a.out} at step {step}")
    elif a.init:  # a new stage from an earlier run's weights (its EMA): fresh optimiser and schedule
        init = torch.load(a.init, weights_only=False)
        vae, ema, step = vae_from_state(init["ema"]), vae_from_state(init["ema"]), 0
        log(f"weights from {a.init} (step {init['step']}, {init['args']['frames']} frames)")
    else:
        vae, step = new_vae(a.dim), 0
        ema = vae_from_state(vae.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    post = Posterior(vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))
    if state is not None:
        opt.load_state_dict(state["opt"])
    n_params = sum(p.numel() for p in vae.parameters())
    log(f"Wan VAE dim {a.dim}: {n_params / 1e6:.3f} M parameters; {a.steps} steps of {a.batch} clips "
        f"{a.frames}×{a.size}², lr {a.lr}, KL weight {a.kl}")
    ds = MotionMix(a.size, a.frames, seed=a.seed, split="train")
    val = clips("val", 16, a.size, a.frames)
    t0, seen = time.time(), 0
    losses = []
    while step < a.steps:
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.5 * (1 + math.cos(math.pi * step / a.steps)) * 0.95 + 0.05)
        for gr in opt.param_groups:
            gr["lr"] = lr
        x = torch.stack([ds[step * a.batch + i] for i in range(a.batch)])
        if a.flip:  # the generators are symmetric: flips double what each clip shows
            g = torch.Generator().manual_seed(step)
            if torch.rand(1, generator=g) < 0.5:
                x = x.flip(-1)
            if torch.rand(1, generator=g) < 0.5:
                x = x.flip(-2)
        vae.encode(x)
        mu, logvar = post.mean_logvar()
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        y = vae.decode(z)
        mse = (y - x).pow(2).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = mse + a.kl * kl
        step += 1
        seen += 1
        train_step(loss, opt, vae.parameters(), vae, ema, step, a.ema)
        losses.append((mse.item(), kl.item()))
        if step % a.log_every == 0:
            m = torch.tensor(losses).mean(0)
            losses.clear()
            rate = (time.time() - t0) / seen
            log(f"step {step}: mse {m[0]:.5f} (train PSNR ≈ {10 * math.log10(4 / m[0]):.2f}) kl {m[1]:.3f} "
                f"lr {lr:.2e} | {rate:.2f} s/step, {(time.time() - t0) / 60:.1f} min")
        if step % a.save_every == 0 or step == a.steps:
            v = psnr(reconstruct(ema, val), val).mean().item()
            log(f"step {step}: val PSNR (EMA) {v:.2f} dB")
            tmp = a.out + ".tmp"
            torch.save({"model": vae.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                        "args": vars(a)}, tmp)
            os.replace(tmp, a.out)
    log(f"done: {step} steps, {(time.time() - t0) / 60:.1f} min this run")


def load_vae(path: str, which: str = "ema"):
    """A VAE from a training checkpoint (``which``: ema | model) or a safetensors state dict."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return vae_from_state(load_file(path))
    state = torch.load(path, weights_only=False)
    return vae_from_state(state[which] if which in state else state)


def wan21_format():
    import comfy.latent_formats

    return comfy.latent_formats.Wan21()


@torch.no_grad()
def cmd_calibrate(a):
    """Per channel c, the encoder's mean μ_c has mean m_c and std s_c on training clips; Wan21's format
    normalises raw latents by (z − M_c)/S_c (its constants, measured on the real Wan VAE). With
    z = a_c·μ + b_c, a_c = S_c/s_c, b_c = M_c − a_c·m_c, the normalised latents have mean 0 and std 1. The map
    is folded into ``conv1`` (its mean rows; the log-variance rows shift by 2·log a_c) and undone in
    ``conv2``'s inputs, so decode(encode(x)) is unchanged."""
    vae = load_vae(a.ckpt)
    x = clips("train", a.clips, a.size, a.frames, start=10_000_000)
    mu = torch.cat([vae.encode(x[i:i + 8]) for i in range(0, len(x), 8)])
    m = mu.mean(dim=(0, 2, 3, 4))
    s = mu.std(dim=(0, 2, 3, 4))
    fmt = wan21_format()
    M, S = fmt.latents_mean.flatten(), fmt.latents_std.flatten()
    ga, gb = S / s, M - S / s * m
    log(f"encoder mean per channel: std {[round(v, 3) for v in s.tolist()]}")
    before = psnr(reconstruct(vae, x[:32]), x[:32]).mean()
    w1, b1 = vae.conv1.weight, vae.conv1.bias  # [32, 32, 1, 1, 1]: rows 0–15 mean, 16–31 log-variance
    w1[:16] *= ga[:, None, None, None, None]
    b1[:16] = ga * b1[:16] + gb
    b1[16:] += 2 * ga.log()
    w2, b2 = vae.conv2.weight, vae.conv2.bias  # [16, 16, 1, 1, 1] on z
    b2 -= (w2[:, :, 0, 0, 0] * (gb / ga)[None]).sum(1)
    w2 /= ga[None, :, None, None, None]
    z = torch.cat([vae.encode(x[i:i + 8]) for i in range(0, min(64, len(x)), 8)])
    zn = fmt.process_in(z)
    log(f"normalised latents: mean {zn.mean():.3f}, std per channel {[round(v, 2) for v in zn.std(dim=(0, 2, 3, 4)).tolist()]}")
    p = psnr(reconstruct(vae, x[:32]), x[:32]).mean()
    log(f"reconstruction PSNR on 32 training clips: {before:.2f} dB before calibration, {p:.2f} dB after")
    save_st({k: v.contiguous() for k, v in vae.state_dict().items()}, a.out)


@torch.no_grad()
def cmd_latents(a):
    """Latents of ``--clips`` training clips (and their mirror images): the encoder's mean normalised as the
    Wan21 format does (``latents``, ``[N, 16, T, h, w]``), its raw log-variance (``logvar``), and which clip
    each is (``items``: MotionMix item, mirrored) so the clips can be made again (``decoder``)."""
    vae = load_vae(a.vae)
    post = Posterior(vae)
    fmt = wan21_format()
    out, lv, items = [], [], []
    t0 = time.time()
    ds = MotionMix(a.size, a.frames, seed=a.seed, split="train")
    for i in range(0, a.clips, a.batch):
        idx = list(range(i, min(i + a.batch, a.clips)))
        x = torch.stack([ds[j] for j in idx])
        items += [(j, 0) for j in idx]
        if a.flip:
            x = torch.cat([x, x.flip(-1)])
            items += [(j, 1) for j in idx]
        vae.encode(x)
        mu, logvar = post.mean_logvar()
        out.append(fmt.process_in(mu))
        lv.append(logvar.half())
        if (i // a.batch) % 50 == 0:
            log(f"{i + len(idx)} clips, {(time.time() - t0) / 60:.1f} min")
    z = torch.cat(out)
    log(f"latents {tuple(z.shape)}: mean {z.mean():.3f} std {z.std():.3f}; {(time.time() - t0) / 60:.1f} min")
    torch.save({"latents": z, "logvar": torch.cat(lv), "items": torch.tensor(items), "args": vars(a)}, a.out)


def cmd_decoder(a):
    """Fine-tune the decoder alone (``conv2`` and ``decoder``) of a calibrated VAE on the clips of a latents
    file: the encoder, so the latent space the denoiser learns, stays as it is."""
    torch.manual_seed(a.seed)
    data = torch.load(a.latents, weights_only=False)
    args = data["args"]
    ds = MotionMix(args["size"], args["frames"], seed=args["seed"], split="train")
    fmt = wan21_format()
    state = torch.load(a.out, weights_only=False) if os.path.exists(a.out) else None
    vae = vae_from_state(state["model"]) if state else load_vae(a.vae)
    ema = vae_from_state(state["ema"]) if state else load_vae(a.vae)
    step = state["step"] if state else 0
    params = list(vae.conv2.parameters()) + list(vae.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))
    if state:
        opt.load_state_dict(state["opt"])
    for p in ema.parameters():
        p.requires_grad_(False)
    for p in vae.encoder.parameters():
        p.requires_grad_(False)
    n = len(data["latents"])
    log(f"decoder fine-tuning on {n} latents of {args['frames']}×{args['size']}², {a.steps} steps of {a.batch}")
    g = torch.Generator().manual_seed(a.seed + step)
    t0, seen, losses = time.time(), 0, []
    mean, std = fmt.latents_mean, fmt.latents_std
    val_idx = torch.arange(16)
    while step < a.steps:
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.5 * (1 + math.cos(math.pi * step / a.steps)) * 0.95 + 0.05)
        for gr in opt.param_groups:
            gr["lr"] = lr
        idx = torch.randint(16, n, (a.batch,), generator=g)
        x = torch.stack([ds[int(j)].flip(-1) if f else ds[int(j)] for j, f in data["items"][idx].tolist()])
        mu = data["latents"][idx] * std + mean
        z = mu + torch.randn(mu.shape, generator=g) * (0.5 * data["logvar"][idx].float()).exp()
        mse = (vae.decode(z) - x).pow(2).mean()
        step += 1
        seen += 1
        train_step(mse, opt, params, vae, ema, step, a.ema)
        losses.append(mse.item())
        if step % a.log_every == 0:
            m = sum(losses) / len(losses)
            losses.clear()
            log(f"step {step}: mse {m:.5f} (train PSNR ≈ {10 * math.log10(4 / m):.2f}) lr {lr:.2e} | "
                f"{(time.time() - t0) / seen:.2f} s/step, {(time.time() - t0) / 60:.1f} min")
        if step % a.save_every == 0 or step == a.steps:
            with torch.no_grad():
                x = torch.stack([ds[int(j)].flip(-1) if f else ds[int(j)] for j, f in data["items"][val_idx].tolist()])
                v = psnr(ema.decode(data["latents"][val_idx] * std + mean), x).mean().item()
            log(f"step {step}: PSNR (EMA) on 16 held-back training latents {v:.2f} dB")
            torch.save({"model": vae.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                        "args": vars(a)}, a.out + ".tmp")
            os.replace(a.out + ".tmp", a.out)
    log(f"done: {step} steps, {(time.time() - t0) / 60:.1f} min this run")


def save_st(sd: dict, path: str, metadata: dict | None = None):
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, path + ".tmp", metadata=metadata)
    os.replace(path + ".tmp", path)
    log(f"wrote {path}: {sum(v.numel() for v in sd.values()) / 1e6:.3f} M parameters, "
        f"{os.path.getsize(path) / 2 ** 20:.2f} MiB")


# ---------------------------------------------------------------------------------------------- denoiser


def new_dit(cfg: dict = DIT_CONFIG):
    import comfy.ldm.wan.model
    import comfy.ops

    dm = comfy.ldm.wan.model.WanModel(**cfg, device="cpu", dtype=torch.float32,
                                      operations=comfy.ops.disable_weight_init)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in dm.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "modulation" in name:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(cfg["dim"]))
            elif "norm" in name and leaf == "weight":
                p.fill_(1.0)
            elif leaf == "bias":
                p.zero_()
            elif name.startswith("head.head."):
                p.zero_()  # the velocity starts at zero
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
    return dm


def sigmas_of(t: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    """ComfyUI's flow schedule (comfy/model_sampling.py ``time_snr_shift``): σ = shift·t / (1 + (shift − 1)·t)."""
    return shift * t / (1 + (shift - 1) * t)


def cmd_dit(a):
    import comfy.model_management as mm

    mm.in_training = True  # 0.33: plain-torch RoPE (its fused kernels have no backward), as ComfyUI's trainer
    torch.manual_seed(a.seed)
    data = torch.load(a.latents, weights_only=False)["latents"].float()
    n_val = min(256, len(data) // 8)  # a few hundred latents: keep 7/8 of them for training
    val, train = data[:n_val], data[n_val:]
    cfg = dict(DIT_CONFIG, num_layers=a.layers, ffn_dim=a.ffn)
    state = torch.load(a.out, weights_only=False) if os.path.exists(a.out) else None
    dm = new_dit(cfg)
    ema = new_dit(cfg)
    step = 0
    if state is not None:
        dm.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        step = state["step"]
        log(f"resumed {a.out} at step {step}")
    else:
        ema.load_state_dict(dm.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(dm.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.99))
    if state is not None:
        opt.load_state_dict(state["opt"])
    log(f"WanModel {cfg['num_layers']} blocks, dim {cfg['dim']}, ffn {cfg['ffn_dim']}: "
        f"{sum(p.numel() for p in dm.parameters()) / 1e6:.3f} M parameters; {len(train)} training latents "
        f"{tuple(train.shape[1:])}, {a.steps} steps of {a.batch}, lr {a.lr}, shift {SHIFT}")
    ctx = torch.zeros(1, 1, cfg["text_dim"])
    g = torch.Generator().manual_seed(a.seed + step)
    t0, seen, losses = time.time(), 0, []

    def loss_of(model, x0, t, eps):
        sigma = sigmas_of(t)
        s = sigma[:, None, None, None, None]
        xt = (1 - s) * x0 + s * eps
        v = model(xt, sigma * 1000, ctx.expand(len(x0), -1, -1))
        return (v.float() - (eps - x0)).pow(2).flatten(1).mean(1)

    while step < a.steps:
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.5 * (1 + math.cos(math.pi * step / a.steps)) * 0.9 + 0.1)
        for gr in opt.param_groups:
            gr["lr"] = lr
        idx = torch.randint(0, len(train), (a.batch,), generator=g)
        x0 = train[idx]
        t = (torch.rand(1, generator=g) + torch.arange(a.batch) / a.batch) % 1.0  # stratified
        eps = torch.randn(x0.shape, generator=g)
        loss = loss_of(dm, x0, t, eps).mean()
        step += 1
        seen += 1
        train_step(loss, opt, dm.parameters(), dm, ema, step, a.ema)
        losses.append(loss.item())
        if step % a.log_every == 0:
            log(f"step {step}: loss {sum(losses) / len(losses):.4f} lr {lr:.2e} | "
                f"{(time.time() - t0) / seen * 1000:.0f} ms/step, {(time.time() - t0) / 60:.1f} min")
            losses.clear()
        if step % a.save_every == 0 or step == a.steps:
            with torch.no_grad():
                gv = torch.Generator().manual_seed(1)
                tv = (torch.arange(len(val)) + 0.5) / len(val)
                lv = loss_of(ema, val, tv, torch.randn(val.shape, generator=gv))
                q = [lv[i * len(val) // 4:(i + 1) * len(val) // 4].mean().item() for i in range(4)]
            log(f"step {step}: val loss (EMA) {lv.mean():.4f}, by t quarter {[round(v, 4) for v in q]}")
            torch.save({"model": dm.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                        "config": cfg, "args": vars(a)}, a.out + ".tmp")
            os.replace(a.out + ".tmp", a.out)
    log(f"done: {step} steps, {(time.time() - t0) / 60:.1f} min this run")


def cmd_recon(a):
    vae = load_vae(a.ckpt, a.which)
    out = {}
    for name, x in held_out_sets(a.clips, a.size, a.frames).items():
        p = psnr(reconstruct(vae, x), x)
        out[name] = dict(mean=p.mean().item(), min=p.min().item())
        log(f"{name}: {a.clips} clips {a.frames}×{a.size}²: PSNR mean {p.mean():.2f} dB (min {p.min():.2f})")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


def cmd_export(a):
    """The committed files: the VAE in fp32 (its width, ComfyUI's key names) and the denoiser in fp16."""
    vae = load_vae(a.vae, "ema")
    vae_sd = {k: v.float().contiguous() for k, v in vae.state_dict().items()}
    if a.dit.endswith(".safetensors"):  # an exported denoiser (its config and steps in the metadata)
        from safetensors import safe_open

        with safe_open(a.dit, "pt") as f:
            meta_in = f.metadata()
            dit = {"ema": {k: f.get_tensor(k) for k in f.keys()}, "step": int(meta_in["steps"]),
                   "config": json.loads(meta_in["tiny_wan_config"])}
    else:
        dit = torch.load(a.dit, weights_only=False)
    dit_sd = {k: v.to(torch.float16).contiguous() for k, v in dit["ema"].items()}
    meta = {"made_by": "tests/harness/tiny_wan.py", "note": a.note or ""}
    save_st(vae_sd, str(Path(a.dir) / "wan21_tiny_vae.safetensors"), meta)
    save_st(dit_sd, str(Path(a.dir) / "wan21_tiny_t2v.safetensors"),
            dict(meta, tiny_wan_config=json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in dit["config"].items()}),
                 steps=str(dit["step"])))


def training_options(parser, *, batch: int, steps: int, lr: float, warmup: int, log_every: int,
                     save_every: int) -> None:
    """The options every training loop (vae, decoder, dit) takes, with its defaults; EMA decay 0.999, seed 0."""
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=log_every)
    parser.add_argument("--save-every", type=int, default=save_every)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vae")
    v.add_argument("out")
    v.add_argument("--dim", type=int, default=8)
    v.add_argument("--size", type=int, default=32)
    v.add_argument("--frames", type=int, default=17)
    training_options(v, batch=4, steps=6000, lr=1e-3, warmup=200, log_every=25, save_every=250)
    v.add_argument("--kl", type=float, default=1e-5)
    v.add_argument("--flip", action="store_true")
    v.add_argument("--init", help="start from this checkpoint's EMA weights (a new stage)")
    r = sub.add_parser("recon")
    r.add_argument("ckpt")
    r.add_argument("--which", default="ema")
    r.add_argument("--clips", type=int, default=16)
    r.add_argument("--size", type=int, default=32)
    r.add_argument("--frames", type=int, default=17)
    r.add_argument("--json")
    c = sub.add_parser("calibrate")
    c.add_argument("ckpt")
    c.add_argument("out", help="calibrated VAE (.safetensors)")
    c.add_argument("--clips", type=int, default=256)
    c.add_argument("--size", type=int, default=32)
    c.add_argument("--frames", type=int, default=17)
    lt = sub.add_parser("latents")
    lt.add_argument("vae", help="calibrated VAE (.safetensors)")
    lt.add_argument("out")
    lt.add_argument("--clips", type=int, default=16000)
    lt.add_argument("--batch", type=int, default=16)
    lt.add_argument("--flip", action="store_true")
    lt.add_argument("--size", type=int, default=32)
    lt.add_argument("--frames", type=int, default=17)
    lt.add_argument("--seed", type=int, default=1)
    dc = sub.add_parser("decoder")
    dc.add_argument("vae", help="calibrated VAE (.safetensors)")
    dc.add_argument("latents")
    dc.add_argument("out")
    training_options(dc, batch=16, steps=1000, lr=3e-4, warmup=50, log_every=25, save_every=100)
    e = sub.add_parser("export")
    e.add_argument("vae", help="calibrated VAE: .safetensors or a decoder checkpoint (its EMA)")
    e.add_argument("dit", help="denoiser checkpoint (its EMA), or an exported wan21_tiny_t2v.safetensors")
    e.add_argument("dir")
    e.add_argument("--note")
    d = sub.add_parser("dit")
    d.add_argument("latents")
    d.add_argument("out")
    d.add_argument("--layers", type=int, default=DIT_CONFIG["num_layers"])
    d.add_argument("--ffn", type=int, default=DIT_CONFIG["ffn_dim"])
    training_options(d, batch=64, steps=20000, lr=5e-4, warmup=500, log_every=200, save_every=1000)
    a = ap.parse_args()
    {"vae": cmd_vae, "recon": cmd_recon, "calibrate": cmd_calibrate, "latents": cmd_latents, "decoder": cmd_decoder,
     "dit": cmd_dit, "export": cmd_export}[a.cmd](a)


if __name__ == "__main__":
    main()
