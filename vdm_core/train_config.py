"""The settings of a training run (``vdm train``'s flags are its fields: ``vdm_app.cli``) and their checks."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import precision
from .footage import CROPS
from .unet3d import UNet3DConfig


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every training setting: one ``vdm train`` flag each (``--field-name``, help from the metadata)."""

    out: str = field(metadata={"help": "checkpoint to write (.safetensors): EMA weights for inference plus "
                                       "the state to resume; rewritten atomically every --checkpoint-every steps"})
    data: str = _opt("sprites", "'sprites' (procedural moving sprites), 'motion' (procedural motion scenes "
                                "mixed with the sprites, vdm_core.motion) or a folder of clips "
                                "(.mp4 .webm .gif .mov .mkv .avi, sub-folders too)")
    size: int = _opt(16, "training resolution in pixels (square): clips are resized so the short side is "
                         "this, then cropped")
    frames: int = _opt(16, "frames per training clip")
    stride: int = _opt(1, "take every N-th frame of a folder's clips (2 halves their frame rate)")
    crop: str = _opt("random", "square crop of a folder's clips and stills: 'random' or 'centre'")
    images: str | None = _opt(None, "a folder of stills (.png .jpg .jpeg .webp .bmp) trained with the clips as "
                                    "stacks of --frames independent images, temporal attention masked "
                                    "(joint image-video training, VDM §3)")
    image_ratio: float = _opt(0.25, "with --images: the share of training items that are stacks of stills")
    steps: int = _opt(6000, "optimizer steps in total; a resumed run counts on to this number")
    batch: int = _opt(8, "clips per optimizer step over all processes (the global batch; split evenly "
                         "across processes and --accumulate micro-batches)")
    accumulate: int = _opt(1, "micro-batches per step in each process (gradient accumulation: less memory, "
                              "same steps)")
    lr: float = _opt(1e-3, "peak learning rate (AdamW, betas 0.9 / 0.99)")
    warmup: int = _opt(200, "steps of linear learning-rate warm-up, then cosine decay to lr/10 at --steps")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    grad_clip: float = _opt(1.0, "clip the gradient's global norm to this")
    ema_decay: float = _opt(0.999, "decay of the exponential moving average of the weights (what inference "
                                   "uses)")
    seed: int = _opt(0, "seed of the initial weights, the data order and the noise (a resumed run keeps "
                        "its checkpoint's)")
    checkpoint_every: int = _opt(500, "write --out every N steps (0: at the end only); a stopped run resumed "
                                      "with --resume loses at most N steps")
    sample_every: int = _opt(0, "write a sample GIF of the EMA model beside --out every N steps (0: never)")
    sample_steps: int = _opt(32, "DDIM steps of those samples")
    val_every: int = _opt(0, "log the EMA model's v-loss on held-out clips every N steps (0: never)")
    val_clips: int = _opt(64, "held-out clips of that loss: from the val split of procedural data, or windows "
                              "of the held-out clips of a folder")
    val_fraction: float = _opt(0.1, "with a folder and --val-every: the share of its clips held out from "
                                    "training (chosen by file name; at least one)")
    log_every: int = _opt(10, "report loss, learning rate, clips/s and time left every N steps")
    tensorboard: str | None = _opt(None, "also write TensorBoard scalars to this folder (needs the "
                                         "tensorboard package)")
    resume: str | None = _opt(None, "continue the run saved in this checkpoint (weights, EMA, optimizer, data "
                                    "position, seed; the network is the checkpoint's), in any number of "
                                    "processes")
    device: str | None = _opt(None, "cpu, cuda, cuda:1, ... (default: the GPU if there is one; under torchrun "
                                    "'cuda' means each process's LOCAL_RANK GPU)")
    precision: str = _opt("auto", "'auto' (bf16 autocast on a GPU, fp16 with loss scaling where bf16 is "
                                  "missing, fp32 on CPU), 'fp32', 'bf16' or 'fp16'")
    compile: bool = _opt(False, "torch.compile the network (minutes to start, faster steps on a GPU)")
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass: much less "
                                               "memory, about a third more compute")
    workers: int | None = _opt(None, "DataLoader worker processes per training process that decode clips "
                                     "(default: 0 on CPU, min(8, CPU cores per process) on a GPU)")
    threads: int = _opt(0, "CPU threads of each process (0: torch's default)")
    model: UNet3DConfig = field(default_factory=lambda: UNet3DConfig(width_mults=(1, 2, 2)), metadata={
                                "help": "the network (ignored when "
                                "resuming: the checkpoint's is used); resolution and frames follow --size "
                                "and --frames"})


def check_config(cfg: TrainConfig) -> None:
    """One clear error per bad setting, named as its flag."""
    at_least = {"size": 1, "frames": 1, "stride": 1, "steps": 1, "batch": 1, "accumulate": 1, "warmup": 0,
                "checkpoint_every": 0, "sample_every": 0, "sample_steps": 1, "val_every": 0, "val_clips": 1,
                "log_every": 1, "threads": 0}
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(cfg, name)}")
    if cfg.workers is not None and cfg.workers < 0:
        raise ValueError(f"--workers must be at least 0, got {cfg.workers}")
    if not (cfg.lr > 0 and cfg.grad_clip > 0 and cfg.weight_decay >= 0):
        raise ValueError(f"need --lr > 0, --grad-clip > 0 and --weight-decay >= 0; got {cfg.lr}, {cfg.grad_clip}, "
                         f"{cfg.weight_decay}")
    if not 0 <= cfg.ema_decay < 1:
        raise ValueError(f"--ema-decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.precision not in precision.NAMES:
        raise ValueError(f"--precision must be one of {', '.join(precision.NAMES)}, got {cfg.precision!r}")
    if cfg.crop not in CROPS:
        raise ValueError(f"--crop must be one of {', '.join(CROPS)}, got {cfg.crop!r}")
    if cfg.images and not 0 < cfg.image_ratio < 1:
        raise ValueError(f"--image-ratio must be between 0 and 1 (the share of stacks of stills), got "
                         f"{cfg.image_ratio}")
