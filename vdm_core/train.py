"""v-loss training: ``L = E_{x, ε, t} ‖v̂_θ(z_φ(t), φ(t)) − v‖²`` with ``v = cos φ·ε − sin φ·x``.

AdamW, linear warm-up then cosine decay to 10 % of the peak rate, gradient clipping, an EMA of the
weights (the EMA is what inference uses), periodic atomic checkpoints that resume exactly, progress
(``vdm_core.train_log``), a held-out v-loss and sample clips every so many steps.

One process, or many under torchrun (``vdm_core.distributed``: DistributedDataParallel, NCCL or Gloo).
Step ``s`` trains on the global batch of items at positions ``p … p + B − 1`` of the data (``p`` = items
consumed so far); item ``n``'s clip, noise and (stratified) time depend on the seed, ``s`` and ``n`` only,
each rank takes its contiguous share, and each rank's loss is scaled so that DDP's gradient average is the
gradient of the global batch mean. So 1 or N processes, with or without accumulation, take the same steps
up to float rounding, and a run resumed from a checkpoint (step, position, seed, weights, EMA, AdamW
moments) continues as if it had not stopped, in any number of processes.

Joint video–image training (VDM §3): with ``images``, a share of the items are stacks of independent
stills (``vdm_core.footage``) and the U-Net gets ``independent_frames`` for them (temporal attention masked).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, distributed, precision
from .data import SPRITES_VERSION, SpriteClips, item_rng, item_seed
from .footage import ClipFolder, ImageFolder, WithImages
from .motion import MotionMix
from .schedule import phi_of_t, q_sample, v_target
from .train_log import TrainLog
from .train_config import TrainConfig, check_config
from .unet3d import UNet3D, UNet3DConfig


def v_losses(model, x: Tensor, t: Tensor, noise: Tensor, independent: Tensor | None = None) -> Tensor:
    """Per-clip mean squared error on v, ``[B]``, of clips ``x`` ``[B, C, F, H, W]`` at times ``t`` ``[B]``
    with ``noise`` (``x``'s shape); ``independent`` ``[B]`` bool marks stacks of stills (VDM §3)."""
    phi = phi_of_t(t)
    kw = {} if independent is None else {"independent_frames": independent}
    v_hat = model(q_sample(x, phi, noise), phi, **kw)
    return (v_hat.float() - v_target(x, noise, phi)).pow(2).flatten(1).mean(1)


def v_loss(model, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mean squared error on v at stratified uniform times ``t`` (one per clip) and fresh noise."""
    b = x.shape[0]
    u = torch.rand((), generator=generator)
    t = ((u + torch.arange(b)) / b).to(x.device)  # low-discrepancy t in [0, 1)
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    return v_losses(model, x, t, noise).mean()


def item_noise(positions, shape, seed: int, generator: torch.Generator, kind: str = "noise") -> Tensor:
    """``[len(positions), *shape]`` standard normal noise on ``generator``'s device; item ``n``'s is drawn
    from ``(kind, seed, n)`` alone, so it is the same whichever process draws it."""
    out = []
    for n in positions:
        generator.manual_seed(item_seed(kind, seed, n))
        out.append(torch.randn(shape, generator=generator, device=generator.device))
    return torch.stack(out)


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


def make_dataset(cfg: TrainConfig, seed: int, split: str = "all"):
    """The endless clips of ``cfg.data`` (item ``n`` depends on ``seed`` and ``n`` only): ``"sprites"``,
    ``"motion"``, or a folder of clips. ``split``: ``"all"``, or ``"train"`` / ``"val"`` (a folder's
    held-out clips, the procedural data's val split)."""
    if cfg.data == "sprites":
        return SpriteClips(cfg.size, cfg.frames, seed=seed, split="val" if split == "val" else "train")
    if cfg.data == "motion":
        return MotionMix(cfg.size, cfg.frames, seed=seed, split="val" if split == "val" else "train")
    if not Path(cfg.data).exists():
        raise FileNotFoundError(f"--data {cfg.data!r} is neither 'sprites', 'motion' nor an existing folder of clips")
    return ClipFolder(cfg.data, cfg.size, cfg.frames, stride=cfg.stride, seed=seed, crop=cfg.crop, split=split,
                      val_fraction=cfg.val_fraction)


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--precision`` (``precision.resolve``; None: fp32, no autocast)."""
    dtype = precision.resolve(name, device, training=True)
    return None if dtype == torch.float32 else dtype


def _workers(cfg: TrainConfig, group: distributed.Group) -> int:
    if cfg.workers is not None:
        return cfg.workers
    if group.device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, max(1, cores // group.local_world))


def train(cfg: TrainConfig, log=None) -> Path:
    """Train (or, with ``cfg.resume``, continue) a VDM and write ``cfg.out``; returns its path.

    Runs alone or as one process of a torchrun job; the main process (rank 0) writes checkpoints and
    samples and reports progress, to ``log`` (a callable taking one line) where given, else to stderr.
    A NaN or infinite loss or gradient stops the run with FloatingPointError naming the step and the
    last good checkpoint.
    """
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    group = distributed.setup(cfg.device)
    try:
        return _train(cfg, group, log)
    finally:
        group.close()


def _train(cfg: TrainConfig, group: distributed.Group, log) -> Path:
    device, world = group.device, group.world
    distributed.check_split(cfg.batch, world, cfg.accumulate)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolutions
    net = checkpoint.network_config(cfg.resume) if cfg.resume else cfg.model
    net = dataclasses.replace(net, resolution=cfg.size, frames=cfg.frames)
    torch.manual_seed(cfg.seed)
    model = UNet3D(net).to(device)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    amp_dtype = _autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    run = _Resumed(seed=cfg.seed) if not cfg.resume else _resume(cfg, net, model, ema, opt, scaler)
    start, elapsed, seed, position, opt_steps = run.step, run.elapsed, run.seed, run.position, run.optimizer_step
    report = TrainLog(cfg.steps, start, cfg.batch, cfg.log_every, group.main, log, cfg.tensorboard)
    for note in run.notes:
        report.info(note)
    if cfg.steps <= cfg.warmup:
        report.info(f"note: --steps {cfg.steps} ends inside the {cfg.warmup}-step learning-rate warm-up: the learning "
                    f"rate never reaches --lr and the model will barely learn; give --steps well above --warmup "
                    f"(or lower --warmup)")
    data = _training_data(cfg, seed, report)
    workers = _workers(cfg, group)
    described = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast, loss scaling"}
    report.info(f"training on {world} process(es) ({device} each): global batch {cfg.batch} = {world} × "
                f"{cfg.accumulate} micro-batch(es) × {cfg.batch // (world * cfg.accumulate)} clips, "
                f"{described[amp_dtype]}, {workers} data worker(s) per process")

    ddp = DistributedDataParallel(model, device_ids=None if device.type == "cpu" else [device.index]) \
        if world > 1 else model
    forward = torch.compile(ddp) if cfg.compile else ddp
    facts = {
        "data": {"sprites": f"moving sprites v{SPRITES_VERSION}", "motion": MotionMix.description}.get(cfg.data,
                                                                                                    cfg.data),
        "resolution": cfg.size, "frames": cfg.frames, "seed": seed, "batch": cfg.batch,
        "lr": cfg.lr, "target": "v", "schedule": "cosine, log-SNR [-20, 20]",
    }
    if cfg.images:
        facts["images"] = f"{cfg.images} ({cfg.image_ratio:.0%} of the items)"
    last_good = (cfg.resume, start) if cfg.resume else None
    t0, step = time.time(), start

    def save() -> None:
        nonlocal last_good
        if not group.main:
            return
        facts.update(steps=step, elapsed_s=round(elapsed + time.time() - t0, 1), final_loss=report.last,
                     device=str(device), processes=world)
        state = {"step": step, "elapsed_s": elapsed + time.time() - t0, "seed": seed, "position": position,
                 "optimizer_step": opt_steps, "processes": world,
                 "config": {k: v for k, v in asdict(cfg).items() if k != "model"}}
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        checkpoint.save(cfg.out, model, facts, ema=ema, optimizer=opt, train_state=state)
        last_good = (cfg.out, step)

    loader = None
    if step < cfg.steps:
        sampler = distributed.BatchPositions(position, cfg.batch, group.rank, world, cfg.accumulate)
        loader = iter(torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=workers,
                                                  pin_memory=device.type == "cuda"))
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    noise_gen = torch.Generator(device=device)
    val = None
    model.train()
    while step < cfg.steps:
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        torch.manual_seed(item_seed("dropout", seed, step * world + group.rank))
        u = item_rng("t", seed, step).random()  # stratified times over the global batch
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        parts = distributed.micro_batches(position, cfg.batch, group.rank, world, cfg.accumulate)
        for m, positions in enumerate(parts):
            x, independent = _to_device(next(loader), device)
            noise = item_noise(positions, x.shape[1:], seed, noise_gen)
            t = torch.tensor([(u + n - position) / cfg.batch for n in positions], device=device)
            sync = world == 1 or m == len(parts) - 1
            with nullcontext() if sync else ddp.no_sync():
                with amp:
                    losses = v_losses(forward, x, t, noise, independent)
                part = losses.sum() * (world / cfg.batch)  # DDP averages over ranks: the global batch mean
                (part if scaler is None else scaler.scale(part)).backward()
            total += losses.detach().sum()
        if scaler is not None:
            scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        loss_sum, norm_sum = group.sum(torch.stack([total.float(), norm.float()])).tolist()
        loss = loss_sum / cfg.batch
        if not math.isfinite(loss) or (scaler is None and not math.isfinite(norm_sum)):
            what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", norm_sum / world)
            where = (f"the last good checkpoint is {last_good[0]} (step {last_good[1]}): resume from it with a "
                     f"lower --lr" if last_good else "no checkpoint was written yet: start again with a lower --lr")
            raise FloatingPointError(f"{what} became {value} at step {step + 1}; training stopped without "
                                     f"writing. {where}")
        if scaler is None:
            opt.step()
            opt_steps += 1
        else:
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            opt_steps += scaler.get_scale() >= scale  # a step skipped for inf/NaN gradients lowers the scale
        step += 1
        position += cfg.batch
        ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        report.step(step, loss, lr)
        if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
            if val is None:
                val = _val_set(cfg, group)
            report.val(step, _val_loss(ema, val, group, amp, noise_gen, cfg), cfg.val_clips)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save()
        if cfg.sample_every and step % cfg.sample_every == 0 and group.main:
            write_sample(ema, Path(cfg.out).with_suffix(f".step{step}.gif"), cfg)
    del loader  # stops the DataLoader's workers
    save()
    report.info(f"wrote {cfg.out} after {step} steps")
    report.close()
    return Path(cfg.out)


@dataclass
class _Resumed:
    """Where a run starts: step, seconds trained, data seed and position, AdamW steps, what to tell."""

    seed: int
    step: int = 0
    elapsed: float = 0.0
    position: int = 0
    optimizer_step: int = 0
    notes: list[str] = field(default_factory=list)


def _resume(cfg: TrainConfig, net: UNet3DConfig, model, ema, opt, scaler) -> _Resumed:
    """Load ``cfg.resume``'s weights, EMA, moments (and loss scale) into place; where its run stood."""
    state = checkpoint.load_train_state(cfg.resume, model, ema, opt)
    step = int(state.get("step", 0))
    run = _Resumed(seed=cfg.seed + step, step=step, elapsed=float(state.get("elapsed_s", 0.0)),
                   optimizer_step=int(state.get("optimizer_step", step)),
                   notes=[f"resumed {cfg.resume} at step {step}"])
    if "position" in state:
        run.seed, run.position = int(state["seed"]), int(state["position"])
    else:  # written before data positions were saved: a stream of clips and noise never seen
        run.notes.append(f"{cfg.resume} holds no data position (an older checkpoint): clips and noise are drawn "
                         f"fresh, from seed {run.seed}")
    if scaler is not None and "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    given = dataclasses.replace(cfg.model, resolution=cfg.size, frames=cfg.frames)
    differ = [f"{f.name} {getattr(net, f.name)}" for f in dataclasses.fields(net)
              if getattr(net, f.name) != getattr(given, f.name)]
    if differ:
        run.notes.append(f"the network is the checkpoint's ({', '.join(differ)}); the network settings given "
                         f"are not used")
    if step >= cfg.steps:
        run.notes.append(f"{cfg.resume} is at step {step} already, --steps is {cfg.steps}: nothing to train "
                         f"(raise --steps to train on)")
    return run


def _training_data(cfg: TrainConfig, seed: int, report: TrainLog):
    """The training items: ``cfg.data`` (less its held-out clips when validating), mixed with stills."""
    data = make_dataset(cfg, seed, "train" if cfg.val_every else "all")
    if hasattr(data, "summary"):
        report.info(f"data: {data.summary()}")
    if cfg.images:
        images = ImageFolder(cfg.images, cfg.size, cfg.frames, seed=seed, crop=cfg.crop)
        report.info(f"stills: {images.summary()}, {cfg.image_ratio:.0%} of the items")
        data = WithImages(data, images, cfg.image_ratio, seed)
    return data


def _to_device(batch, device) -> tuple[Tensor, Tensor | None]:
    """A DataLoader batch (clips, or clips and their is-a-stack-of-stills flags) on ``device``."""
    x, independent = batch if isinstance(batch, (list, tuple)) else (batch, None)
    x = x.to(device, non_blocking=True)
    return x, None if independent is None else independent.to(device, non_blocking=True)


def _val_set(cfg: TrainConfig, group: distributed.Group) -> tuple[range, Tensor]:
    """This rank's share of the held-out items (positions, clips ``[k, 3, F, H, W]``), read once and kept."""
    data = make_dataset(cfg, 0, "val")  # seed 0: the same held-out windows in every run on these data
    share = -(-cfg.val_clips // group.world)
    positions = range(group.rank * share, min(cfg.val_clips, (group.rank + 1) * share))
    return positions, torch.stack([data[n] for n in positions]) if len(positions) else None


@torch.no_grad()
def _val_loss(ema: UNet3D, val, group, amp, generator, cfg: TrainConfig) -> float:
    """The EMA model's mean v-loss over all held-out clips, at fixed times ``(n + ½) / N`` and fixed noise."""
    positions, clips = val
    total = torch.zeros((), device=group.device)
    chunk = max(1, cfg.batch // (group.world * cfg.accumulate))
    for i in range(0, len(positions), chunk):
        ps = positions[i:i + chunk]
        x = clips[i:i + chunk].to(group.device)
        t = torch.tensor([(n + 0.5) / cfg.val_clips for n in ps], device=group.device)
        noise = item_noise(ps, x.shape[1:], 0, generator, kind="val-noise")
        with amp:
            total += v_losses(ema, x, t, noise).sum()
    return group.sum(total).item() / cfg.val_clips


def write_sample(model: UNet3D, path: Path, cfg: TrainConfig) -> None:
    """One unconditional sample of the EMA model, written as a GIF."""
    from .sampling import sample
    from .schedule import sampling_angles
    from .video_write import write_video

    model.eval()
    noise = torch.randn((1, model.config.channels, cfg.frames, cfg.size, cfg.size),
                        generator=torch.Generator().manual_seed(0))
    clip = sample(model, noise.to(model.device), sampling_angles(cfg.sample_steps))
    write_video(path, clip[0].cpu(), fps=10)  # GIF delays are whole 1/100 s: 10 fps is exact
