"""vdm_core — Video Diffusion Models in pure torch (no ComfyUI imports, nothing of the host side).

Tensors are ``[B, C, F, H, W]`` floats in ``[-1, 1]``. The model contract is ``model(z, phi) -> v̂``.
Modules: ``schedule``, ``unet3d``, ``sampling``, ``guidance``, ``tasks`` (the job API), ``checkpoint``,
``video_io``, ``files``, ``data``, ``train``, ``progress``, ``metrics``. The front ends (ComfyUI nodes,
``vdm run``, the ``vdm`` command) live in the ``vdm_app`` package.
"""

__version__ = "0.1.0"
