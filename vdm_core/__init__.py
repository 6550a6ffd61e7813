"""vdm_core — Video Diffusion Models in pure torch (no ComfyUI imports, nothing of the host side).

Tensors are ``[B, C, F, H, W]`` floats in ``[-1, 1]``. The model contract is ``model(z, phi) -> v̂``.
Modules — the model and the sampler: ``contract`` (what a model is; ``capabilities``), ``settings``
(``SamplerSettings``), ``schedule``, ``unet3d``, ``sampling``, ``guidance``, ``posterior``, ``external`` (other models and their
latent spaces); jobs: ``tasks`` (the job API), ``planning``, ``tiling``, ``execution``, ``latent_jobs``; files and
data: ``checkpoint``, ``video_io``, ``video_write``, ``files``, ``data``, ``motion``, ``footage``; training: ``train``,
``train_config``, ``distributed``, ``train_log``, ``precision``; ``progress``, ``metrics``. The front ends (ComfyUI nodes,
``vdm run``, the ``vdm`` command) live in the ``vdm_app`` package.
"""

__version__ = "0.1.0"
