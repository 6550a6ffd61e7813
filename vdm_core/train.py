"""v-loss training: ``L = E_{x, ε, t} ‖v̂_θ(z_φ(t), φ(t)) − v‖²`` with ``v = cos φ·ε − sin φ·x``.

AdamW, linear warm-up then cosine decay to 10 % of the peak rate, gradient clipping, an EMA of the
weights (the EMA is what inference uses), bf16 autocast on CUDA, periodic checkpoints that can be
resumed, a progress line with loss and speed, and a sample clip written every ``sample_every`` steps.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from . import checkpoint
from .data import SPRITES_VERSION, ClipFolder, SpriteClips
from .motion import MotionMix
from .schedule import phi_of_t, q_sample, v_target
from .unet3d import UNet3D, UNet3DConfig


@dataclass
class TrainConfig:
    """Training settings; ``data`` is ``"sprites"``, ``"motion"`` or a folder of clips (``make_dataset``)."""

    out: str
    data: str = "sprites"
    size: int = 16
    frames: int = 16
    steps: int = 6000
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 0
    sample_steps: int = 32
    stride: int = 1
    model: UNet3DConfig = field(default_factory=UNet3DConfig)


def v_loss(model, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mean squared error on v at stratified uniform times ``t`` (one per clip)."""
    b = x.shape[0]
    u = torch.rand((), generator=generator)
    t = ((u + torch.arange(b)) / b).to(x.device)  # low-discrepancy t in [0, 1)
    phi = phi_of_t(t)
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    z = q_sample(x, phi, noise)
    return (model(z, phi).float() - v_target(x, noise, phi)).pow(2).mean()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``0.1·lr`` at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: UNet3D, model: UNet3D, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


def make_dataset(cfg: TrainConfig, seed: int):
    """``cfg.data``: ``"sprites"`` (moving sprites v1), ``"motion"`` (motion scenes mixed with sprites,
    ``vdm_core.motion``) or a folder of clips."""
    if cfg.data == "sprites":
        return SpriteClips(cfg.size, cfg.frames, seed=seed)
    if cfg.data == "motion":
        return MotionMix(cfg.size, cfg.frames, seed=seed)
    return ClipFolder(cfg.data, cfg.size, cfg.frames, stride=cfg.stride, seed=seed)


def train(cfg: TrainConfig, resume: str | None = None, device=None, log=None) -> Path:
    """Train (or resume) and write ``cfg.out``; returns its path."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    cfg.model.resolution, cfg.model.frames = cfg.size, cfg.frames
    model = UNet3D(cfg.model).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    start, elapsed = 0, 0.0
    if resume:
        state = checkpoint.load_train_state(resume, model, ema, opt)
        start, elapsed = int(state.get("step", 0)), float(state.get("elapsed_s", 0.0))
        log(f"resumed {resume} at step {start}")
    gen = torch.Generator().manual_seed(cfg.seed + start)
    # a resumed run draws fresh clips rather than replaying the ones already seen
    data = iter(torch.utils.data.DataLoader(make_dataset(cfg, cfg.seed + start), batch_size=cfg.batch))
    facts = {
        "data": {"sprites": f"moving sprites v{SPRITES_VERSION}",
                 "motion": MotionMix.description}.get(cfg.data, cfg.data),
        "resolution": cfg.size, "frames": cfg.frames, "seed": cfg.seed, "batch": cfg.batch,
        "lr": cfg.lr, "target": "v", "schedule": "cosine, log-SNR [-20, 20]",
    }
    smooth, t0, step = None, time.time(), start

    def save(path):
        facts.update(steps=step, elapsed_s=round(elapsed + time.time() - t0, 1), final_loss=smooth,
                     device=str(device))
        checkpoint.save(path, model, facts, ema=ema, optimizer=opt,
                        train_state={"step": step, "elapsed_s": elapsed + time.time() - t0,
                                     "config": {k: v for k, v in asdict(cfg).items() if k != "model"}})

    model.train()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    while step < cfg.steps:
        x = next(data).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        with amp:
            loss = v_loss(model, x, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if step % 10 == 0 or step == cfg.steps:
            rate = (step - start) / (time.time() - t0)
            log(f"step {step}/{cfg.steps} loss {smooth:.4f} lr {lr_at(step, cfg):.2e} "
                f"{rate:.2f} it/s eta {(cfg.steps - step) / max(rate, 1e-9) / 60:.1f} min")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save(cfg.out)
        if cfg.sample_every and step % cfg.sample_every == 0:
            write_sample(ema, Path(cfg.out).with_suffix(f".step{step}.gif"), cfg)
    save(cfg.out)
    log(f"wrote {cfg.out} after {step} steps")
    return Path(cfg.out)


def write_sample(model: UNet3D, path: Path, cfg: TrainConfig) -> None:
    """One unconditional sample of the EMA model, written as a GIF."""
    from .sampling import sample
    from .video_io import write_video

    model.eval()
    noise = torch.randn((1, cfg.model.channels, cfg.frames, cfg.size, cfg.size),
                        generator=torch.Generator().manual_seed(0))
    clip = sample(model, noise.to(model.device), steps=cfg.sample_steps)
    write_video(path, clip[0].cpu(), fps=10)  # GIF delays are whole 1/100 s: 10 fps is exact
