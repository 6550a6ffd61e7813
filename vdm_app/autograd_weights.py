"""Weights that autograd can use, whatever inference mode made them.

Hosts run nodes under ``torch.inference_mode()`` (ComfyUI: execution.py), and tensors made or moved there are
inference tensors, which reconstruction guidance cannot differentiate through (``sampling.guided``). The
pack's own networks (``vdm_app.node_functions``) and ComfyUI's models and VAEs (``nodes/comfy_session.py``,
``nodes/comfy_space.py``) are readied here, one tensor at a time (peak memory: the largest tensor).
"""
from __future__ import annotations

import torch


def unusable_for_autograd(t: torch.Tensor) -> bool:
    """An inference tensor, or a "zombie": a tensor made in inference mode whose ``.data`` was set outside
    it (``p.data = …``, ``module.to()``): ``is_inference()`` is False but it has no version counter, and
    backward fails with "Inference tensors do not track version counter"."""
    if t.is_inference():
        return True
    try:
        t._version
    except RuntimeError:
        return True
    return False


@torch.inference_mode(False)
def autograd_safe(module: torch.nn.Module | None) -> int:
    """Replace every parameter and buffer of ``module`` that autograd cannot use (:func:`unusable_for_autograd`)
    by a normal clone in its module's ``_parameters`` / ``_buffers``, one at a time; returns how many."""
    if module is None:
        return 0
    n = 0
    for m in module.modules():
        for key, p in list(m._parameters.items()):
            if p is not None and unusable_for_autograd(p):
                m._parameters[key] = torch.nn.Parameter(p.clone(), requires_grad=False)
                n += 1
        for key, b in list(m._buffers.items()):
            if b is not None and unusable_for_autograd(b):
                m._buffers[key] = b.clone()
                n += 1
    return n
