"""Golden outputs of every job on the bundled model at fixed seeds and small, explicit settings.

The cases call the library's job API (``vdm_core.tasks``), whose signatures scripts rely on, so a
refactoring of the sampler, the guidance or the windows cannot change what a job makes unnoticed.
The extension cases name w_r 16, the auto weight of extension when the file was made (auto is 8 now), and
the jobs and the two-window new clip name method ``both``, the default when it was made (auto is ``posterior``
now wherever a window knows frames), so the file still guards the sampler of ``both`` unchanged.
``python tests/golden_jobs.py`` rewrites ``tests/golden/jobs.safetensors`` (only do that for a deliberate change
of behaviour, and say why in the commit); ``tests/test_golden.py`` compares.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from vdm_core import checkpoint, data, guidance, tasks

FILE = Path(__file__).parent / "golden" / "jobs.safetensors"


def _clip(index: int, size: int = 16, frames: int = 8) -> torch.Tensor:
    return data.sprite_clip(data.split_seed("test", index), size, frames)


def _small(clip: torch.Tensor, factor: int) -> torch.Tensor:
    return guidance.area_downsample(clip[None], factor)[0]


def cases() -> dict:
    """name -> job(model) returning a [C, F, H, W] clip."""
    return {
        "generate": lambda m: tasks.generate(m, 16, 16, 16, steps=6, seed=1),
        "generate_two_windows": lambda m: tasks.generate(m, 24, 16, 16, steps=4, seed=2, guidance_weight=16.0,
                                                                 method="both"),
        "extend": lambda m: tasks.extend(m, _clip(3), 8, steps=6, seed=1, guidance_weight=16.0, method="both"),
        "extend_two_windows_eta": lambda m: tasks.extend(m, _clip(4), 12, steps=4, eta=0.5, seed=3,
                                                        guidance_weight=16.0, method="both"),
        "extend_reconstruction": lambda m: tasks.extend(m, _clip(5), 8, steps=4, method="reconstruction",
                                                        guidance_weight=4.0, seed=4),
        "extend_replacement": lambda m: tasks.extend(m, _clip(6), 8, steps=4, method="replacement", seed=5),
        "interpolate4_two_windows": lambda m: tasks.interpolate(m, _clip(7, frames=5), 4, steps=4, seed=6,
                                                                method="both"),
        "upscale2": lambda m: tasks.upscale(m, _small(_clip(8, frames=16), 2), 2, steps=6, seed=7,
                                            method="both"),
        "upscale2_reconstruction": lambda m: tasks.upscale(m, _small(_clip(9, frames=16), 2), 2, steps=4,
                                                           method="reconstruction", seed=8),
        "upscale2_two_windows": lambda m: tasks.upscale(m, _small(_clip(10, frames=24), 2), 2, steps=4,
                                                        seed=9, method="both"),
        "upscale4_tiles": lambda m: tasks.upscale(m, _small(_clip(11, size=32, frames=8), 4), 4, steps=3,
                                                  window=8, seed=10, method="both"),
        "interpolate2_upscale2": lambda m: tasks.run(
            m, tasks.Job(_small(_clip(12, frames=5), 2), multiplier=2, factor=2),
            tasks.SamplerSettings(steps=4, seed=11, method="both")),
    }


def run_all() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    model = checkpoint.load()
    return {name: job(model).contiguous() for name, job in cases().items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    FILE.parent.mkdir(exist_ok=True)
    outs = run_all()
    save_file(outs, str(FILE), metadata={"made_by": "python tests/golden_jobs.py"})
    for k, v in outs.items():
        print(k, tuple(v.shape), f"{v.mean():.4f}", file=sys.stderr)
