"""Conditioning on exact Gaussian oracles: each method's samples against the closed-form conditional.

The prior (``tests/oracle.py``, ``CorrelatedGaussian``): every pixel an AR(1) series over 16 frames, ρ 0.9 and
std 0.25 by default; with ``--length ℓ``, ``SeparableGaussian``: the same series, each frame a smooth field in
space (a periodic Gaussian kernel of length ℓ pixels), which makes the denoiser's Jacobian far from isotropic. Jobs,
each with its conditional in closed form:

* ``extend``: frames 0–7 known; frame 7+k has mean ρᵏ·x₇ and variance std²(1 − ρ²ᵏ);
* ``interpolate``: keyframes 0, 4, 8, 12 known (Gaussian conditioning on them);
* ``upscale2``: every frame's 2×2 block means known; E[x | y] = y upsampled, variance ¾·std² (independent pixels
  only: not run with ``--length``).

Per job and method: the worst frame's |regression slope − 1| of the sampled unknown frames on the exact
conditional mean, and the range over frames of the variance ratio E[(x − E[x|y])²]/Var[x|y] (both 1 when the
sampler draws the conditional exactly); then ``drift``: the prior extended by 8 windows (16 frames, 8 known)
through ``tasks.extend`` (``both`` at each ``--weights`` w_r and at auto, posterior at each ``--iterations``,
consistency), each window's
contrast (std of its new frames / the prior's).

    python benchmarks/posterior_oracles.py                       # the defaults below
    python benchmarks/posterior_oracles.py --rho 0.8 --iterations 1 2 3 4 8

Methods (``--methods``, all by default): ``both`` at each ``--weights`` w_r, ``posterior`` at each ``--iterations``,
``consistency`` and ``replacement`` (extension and interpolation only).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vdm_core import sampling, tasks
from vdm_core.settings import DEFAULT_ITERATIONS, SamplerSettings
from vdm_core.contract import capabilities

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from oracle import CorrelatedGaussian, SeparableGaussian, frame_fit, job  # noqa: E402  (tests/ is not a package)


METHODS = ("both", "posterior", "consistency", "replacement")
"""What ``--methods`` can pick (all by default)."""


def run(model, x, obs, method, steps, seed, **kw):
    phis = capabilities(model).angles(steps, method)  # the grid tasks sample this method on
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return sampling.sample(model, noise, phis, SamplerSettings(method=method, **kw), observation=obs, clip=False,
                           generator=torch.Generator().manual_seed(seed + 1))  # the replacement noise


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rho", type=float, default=0.9)
    ap.add_argument("--std", type=float, default=0.25)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--size", type=int, default=32, help="H = W: clips × size² series")
    ap.add_argument("--length", type=float, default=0.0,
                    help="spatial correlation length in pixels (SeparableGaussian); 0: independent pixels")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--weights", type=float, nargs="+", default=[4.0, 16.0], help="w_r of method both")
    ap.add_argument("--jobs", nargs="+", default=["extend", "interpolate", "upscale2", "drift"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = (SeparableGaussian(16, args.rho, args.std, args.size, args.length) if args.length
             else CorrelatedGaussian(16, args.rho, args.std))
    print(f"Command: `python benchmarks/posterior_oracles.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
          f"\n\nρ {args.rho}, std {args.std}, {args.clips} clips × {args.size}² series, spatial length {args.length:g}, "
          f"{args.steps} steps, seeds {args.seeds}; default iterations {DEFAULT_ITERATIONS}.\n")
    methods = [("both", dict(guidance_weight=w), f"both w_r {w:g}") for w in args.weights]
    methods += [("posterior", dict(iterations=k), f"posterior {k} it.") for k in args.iterations]
    methods += [("consistency", {}, "consistency"), ("replacement", {}, "replacement")]
    methods = [m for m in methods if m[0] in args.methods]
    for name in (j for j in args.jobs if j != "drift" and not (args.length and j == "upscale2")):
        print(f"| {name} | worst slope error (per seed) | variance ratio range | s |\n| --- | --- | --- | --- |")
        for method, kw, label in methods:
            if method == "replacement" and name == "upscale2":
                continue  # replacement needs a frame selection
            errs, ratios, t0 = [], [], time.time()
            for seed in args.seeds:
                x = model.draw(args.clips, args.size, args.size, seed=100 + seed)
                obs, unknown, mean, var = job(name, model, x)
                out = run(model, x, obs, method, args.steps, 200 + 2 * seed, **kw)
                slopes, r = frame_fit(out[:, :, unknown], mean, var)
                errs.append(max(abs(s - 1) for s in slopes))
                ratios += r
            print(f"| {label} | {' / '.join(f'{e:.3f}' for e in errs)} | {min(ratios):.2f}–{max(ratios):.2f} | "
                  f"{time.time() - t0:.1f} |", flush=True)
        print()
    if "drift" in args.jobs:
        print("| drift (tasks.extend, 8 windows) | contrast per window | lag-1 correlation |\n| --- | --- | --- |")
        clip = model.draw(1, args.size, args.size, seed=5)[0, :, :8].clamp(-1, 1)
        runs = [(f"both, w_r {w:g}", dict(method="both", guidance_weight=w)) for w in args.weights]
        runs += [("both (auto)", dict(method="both"))]
        runs += [(f"posterior, {k} it.", dict(method="posterior", iterations=k)) for k in args.iterations]
        runs += [("consistency", dict(method="consistency"))]
        runs = [r for r in runs if r[1]["method"] in args.methods]
        for label, kw in runs:
            out = tasks.extend(model, clip, 64, window=16, seed=3, **kw)
            contrast = [out[:, 8 + 8 * w:16 + 8 * w].std().item() / args.std for w in range(8)]
            f = out[0, 8:].reshape(64, -1)
            lag1 = torch.corrcoef(torch.stack([f[:-1].flatten(), f[1:].flatten()]))[0, 1].item()
            print(f"| {label} | {', '.join(f'{c:.2f}' for c in contrast)} | {lag1:.3f} (prior {args.rho}) |",
                  flush=True)


if __name__ == "__main__":
    main()
