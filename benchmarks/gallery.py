"""The pictures in README.md and the model card, remade from a checkpoint (default: the bundled model).

* ``vdm_core/weights/samples.gif``: 8 unconditional samples (noise seeds from one generator seeded 0,
  DDIM η = 0, 50 steps), a 4 × 2 grid, each clip shown 4× larger, 10 fps.
* ``docs/img/{extend,interpolate,upscale}.gif``: the outputs of ``workflows/api/NAME.json`` run by
  ``vdm run`` with ``--set steps=16``, shown 6× larger (nearest neighbour) at the workflow's frame rate;
* ``docs/img/demo.gif``: what ``vdm demo`` writes (the extend example at its own 32 steps), 6× larger.

    python benchmarks/gallery.py [--model FILE] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from vdm_core import checkpoint
from vdm_app.batch import run_workflow
from vdm_core.sampling import sample
from vdm_core.schedule import sampling_angles
from vdm_core.video_io import read_video
from vdm_core.video_write import write_video

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ("extend", "interpolate", "upscale")


def enlarge(clip: torch.Tensor, k: int) -> torch.Tensor:
    """``[C, F, H, W]`` → ``[C, F, k·H, k·W]``, every pixel a k × k block."""
    return clip.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)


def samples_gif(model, path: Path, steps: int = 50) -> None:
    c, f, r = model.config.channels, model.config.frames, model.config.resolution
    noise = torch.randn((8, c, f, r, r), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x = sample(model, noise, sampling_angles(steps))
    rows = [torch.cat([enlarge(x[i], 4) for i in range(j, j + 4)], dim=3) for j in (0, 4)]
    write_video(path, torch.cat(rows, dim=2), fps=10)  # GIF delays are whole 1/100 s: 10 fps is exact


def workflow_gif(name: str, path: Path, model_file: str | None, steps: int | None = 16) -> None:
    sets = ([f"steps={steps}"] if steps else []) + ([f"VDM_LoadModel.model_name={model_file}"] if model_file else [])
    with tempfile.TemporaryDirectory() as tmp:
        (out,), _ = run_workflow(ROOT / "workflows" / "api" / f"{name}.json", sets, output_dir=tmp,
                                 log=lambda msg: None)
        clip = read_video(out, audio=False)
        write_video(path, enlarge(clip.frames, 6), fps=clip.fps)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    samples_gif(checkpoint.load(args.model).eval(), ROOT / "vdm_core" / "weights" / "samples.gif")
    for name in WORKFLOWS:
        workflow_gif(name, ROOT / "docs" / "img" / f"{name}.gif", args.model)
        print(f"wrote docs/img/{name}.gif", flush=True)
    workflow_gif("extend", ROOT / "docs" / "img" / "demo.gif", args.model, steps=None)  # as `vdm demo` runs it
    print("wrote docs/img/demo.gif", flush=True)


if __name__ == "__main__":
    main()
