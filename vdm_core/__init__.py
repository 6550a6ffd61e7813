"""vdm_core — Video Diffusion Models in pure torch (no ComfyUI imports).

Tensors are ``[B, C, F, H, W]`` floats in ``[-1, 1]``. The model contract is ``model(z, phi) -> v̂``.
Modules: ``schedule``, ``unet3d``, ``sampling``, ``guidance``, ``tasks``, ``checkpoint``, ``video_io``,
``data``, ``train``, ``cli``.
"""

__version__ = "0.1.0"
