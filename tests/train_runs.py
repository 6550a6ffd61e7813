"""Helpers of the training tests: a tiny configuration, the numbers a run reports, how far two runs' weights
are apart, and the one place that starts `vdm train` in fresh processes (alone or under torchrun)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import torch

from vdm_core import checkpoint
from vdm_core.train import TrainConfig
from vdm_core.unet3d import UNet3D, UNet3DConfig

# The module torchrun starts: the `vdm` command's. It moves to the host package with the CLI (vdm_app).
ENTRY = "vdm_app"


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "model.safetensors"), size=8, frames=4, batch=4, steps=30, lr=3e-3, warmup=5,
                checkpoint_every=0, device="cpu", model=UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2))
    return TrainConfig(**{**base, **kw})


def losses(lines) -> dict[int, float]:
    """``{step: loss}`` of the progress lines ``step S/N loss L ...``."""
    return {int(m[1]): float(m[2]) for m in (re.match(r"step (\d+)/\d+ loss ([\d.]+)", x) for x in lines) if m}


def raw_weights(path) -> dict[str, torch.Tensor]:
    """The trained (not EMA) weights saved for resuming."""
    _, tensors = checkpoint.read(path)
    return {k.removeprefix("train.model."): v for k, v in tensors.items() if k.startswith("train.model.")}


def initial_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.seed)
    return UNet3D(cfg.model).state_dict()


def drift(a: dict, b: dict, start: dict) -> float:
    """``‖a − b‖ / ‖a − start‖``: how far two runs ended apart, relative to how far training moved.

    Float rounding alone (another summation order) leaves ~0.01 after tens of AdamW steps, because Adam
    amplifies the sign of near-zero gradients; training on other clips or noise leaves ~1."""
    def norm(d):
        return sum(v.double().pow(2).sum() for v in d.values()).sqrt().item()

    return norm({k: a[k] - b[k] for k in a}) / norm({k: a[k] - start[k] for k in a})


def vdm_train(args: list[str], procs: int | None = None, **popen) -> subprocess.Popen:
    """`vdm train ARGS` in a fresh process, or with ``procs`` under torchrun (``procs`` processes, one machine)."""
    launcher = [sys.executable] if procs is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(launcher + ["-m", ENTRY, "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)
