"""Number formats by name: Load VDM's ``dtype`` and ``vdm train --precision`` (torch is imported only when a
name is resolved, so front ends list the names without it)."""
from __future__ import annotations

NAMES = ("auto", "fp32", "fp16", "bf16")


def resolve(name: str, device, *, training: bool = False):
    """The ``torch.dtype`` of ``name`` on ``device``. ``auto`` for inference: bfloat16 on a CUDA GPU that supports
    it, float32 everywhere else (float16 only when asked for: a model trained in float32 can overflow in it);
    for training (autocast): float32 on the CPU, else bfloat16, float16 (with loss scaling) on a CUDA GPU
    without bfloat16."""
    import torch

    if name not in NAMES:
        raise ValueError(f"the number format must be one of {', '.join(NAMES)}, got {name!r}")
    if name != "auto":
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
    device = torch.device(device or "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if training:
        if device.type == "cpu":
            return torch.float32
        return torch.float16 if device.type == "cuda" and not bf16 else torch.bfloat16
    return torch.bfloat16 if bf16 else torch.float32
