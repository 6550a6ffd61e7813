"""Cost of one conditioned sampling step on the bundled model: unguided, each method, and methods posterior and
consistency at several iterations — median process CPU seconds (robust when other processes share the cores) and wall
seconds per step, and each against the unguided step.

    python benchmarks/guidance_cost.py --threads 1 --batch 4 --runs 5

The job is extension (first half of the frames known) of clips from the v1 test split; every method's
denoiser is called ``--runs`` times at the angle of the middle step, after one warm-up call.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from vdm_core import checkpoint, guidance, sampling
from vdm_core.data import sprite_batch
from vdm_core.settings import auto_guidance_weight


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: bundled)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 3, 4])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = checkpoint.load(args.model)
    cfg = model.config
    x = sprite_batch("test", range(args.batch), size=cfg.resolution, frames=cfg.frames)
    known = cfg.frames // 2
    obs = guidance.select_frames(x[:, :, :known], range(known), cfg.frames)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    phi = 0.8
    w = auto_guidance_weight(extend=True)
    cases = [("unguided", dict(observation=None)), ("replacement", dict(method="replacement")),
             ("reconstruction", dict(method="reconstruction", guidance_weight=w)),
             ("both", dict(method="both", guidance_weight=w))]
    cases += [(f"{m}, {k} iterations", dict(method=m, iterations=k)) for m in ("posterior", "consistency")
              for k in args.iterations]
    print(f"Command: `python benchmarks/guidance_cost.py {' '.join(argv if argv is not None else sys.argv[1:])}`  \nModel: {args.model or 'bundled'} "
          f"({cfg.frames} frames × {cfg.resolution}²), batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{platform.machine()}, torch {torch.__version__}.\n")
    print("| method | CPU s / step | wall s / step | CPU × unguided |\n| --- | --- | --- | --- |")
    base = None
    for name, kw in cases:
        kw = {"observation": obs, **kw}
        den = sampling.conditioned(model, generator=torch.Generator().manual_seed(1), final_angle=0.0, **kw)
        den(z, phi)  # warm-up
        cpu, wall = [], []
        for _ in range(args.runs):
            c0, w0 = time.process_time(), time.perf_counter()
            den(z, phi)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        c, w = statistics.median(cpu), statistics.median(wall)
        base = base or c
        print(f"| {name} | {c:.3f} | {w:.3f} | {c / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
