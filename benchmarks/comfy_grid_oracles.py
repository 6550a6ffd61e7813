"""The Gaussian oracles through Use ComfyUI Model on each prediction type's own step grid, at several step counts.

The prior and jobs of ``benchmarks/posterior_oracles.py`` (AR(1) clips, 16 frames; ``--jobs``: ``extend``, frames
0–7 known, frame 7+k has mean ρᵏ·x₇; ``interpolate``, keyframes 0, 4, 8, 12; ``upscale2``, 2×2 block means),
wrapped in each prediction type's coordinates as the node reads them (stand-ins of ComfyUI's model_sampling
formulas, tests/comfy_model_sampling.py, loaded with the pack as tests/test_comfy_model.py does) and sampled on
the model's own σ grid (``SigmaModel.angles``: Wan's shift 8, LTX-Video's shift, the discrete schedules' σ_max
14.6 …; for method posterior that grid filled at low noise within the same steps, ``schedule.filled_within``, as
jobs sample it). Per job, prediction type, step count and method: the worst frame's |slope − 1| of the unknown
frames on the exact conditional mean, and the range of their variance ratio against the exact conditional
variance (1 for an exact sampler run to σ = 0), beside the ratio an exact sampler reaches on that grid (frame
jobs): its last step returns x̂ at the grid's last nonzero σ, E[x | z_φ, y], whose covariance is
C − (C⁻¹ + α²/σ²·I)⁻¹ for the conditional covariance C (tests/test_comfy_model.py compares with that).

``--drift`` also extends a clip of the prior by 8 windows (``tasks.extend``, 16-frame windows, 8 known, the nodes'
default steps) through each kind and method and prints the contrast of each window's new frames (their std / the
prior's; 1 for an exact sampler), as ``posterior_oracles.py --jobs drift`` does on the pack's own grid.
``--length ℓ``: the prior is ``oracle.SeparableGaussian`` (each frame a smooth field of length ℓ pixels, 24² clips,
so the denoiser's Jacobian is far from isotropic), extension and interpolation only.

    python benchmarks/comfy_grid_oracles.py                                  # every kind, 32 and 100 steps
    python benchmarks/comfy_grid_oracles.py --jobs extend interpolate upscale2 --steps 32
    python benchmarks/comfy_grid_oracles.py --kinds flow_shift8 --steps 32 64 100 200
    python benchmarks/comfy_grid_oracles.py --rho 0.97 --kinds flow_shift8 eps --steps --drift
    python benchmarks/comfy_grid_oracles.py --length 2 --jobs extend interpolate --steps 32 --drift
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
import comfy_model_sampling as cms  # noqa: E402  (tests/ is not a package)
import comfy_stubs  # noqa: E402
import oracle  # noqa: E402
from comfy_pack import stubbed_pack  # noqa: E402

from vdm_core import sampling, tasks  # noqa: E402
from vdm_core.contract import capabilities  # noqa: E402
from vdm_core.settings import DEFAULT_ITERATIONS, DEFAULT_STEPS, SamplerSettings  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=sorted(cms.KINDS), choices=sorted(cms.KINDS))
    ap.add_argument("--jobs", nargs="+", default=["extend"], choices=["extend", "interpolate", "upscale2"])
    ap.add_argument("--steps", type=int, nargs="*", default=[32, 100])
    ap.add_argument("--methods", nargs="+", default=["posterior", "both"])
    ap.add_argument("--rho", type=float, default=0.9)
    ap.add_argument("--std", type=float, default=0.25)
    ap.add_argument("--clips", type=int, default=16, help="clips per job (more: a tighter slope estimate)")
    ap.add_argument("--length", type=float, default=0.0,
                    help="spatial correlation length in pixels (oracle.SeparableGaussian, 24² clips); 0: independent "
                         "pixels")
    ap.add_argument("--drift", action="store_true", help="also the contrast over 8 extension windows")
    ap.add_argument("--drift-clips", type=int, default=1,
                    help="clips extended for --drift (their variances averaged); one clip of a spatially smooth prior "
                         "moves its contrast by about ±0.1")
    ap.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="of method posterior")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prior = (oracle.SeparableGaussian(16, args.rho, args.std, 24, args.length) if args.length else
             oracle.CorrelatedGaussian(16, args.rho, args.std))
    x = prior.draw(args.clips, 24, 24, seed=22)
    print(f"Command: `python benchmarks/comfy_grid_oracles.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
          f"\n\nρ {args.rho}, std {args.std}, spatial length {args.length:g}, {args.clips} clips × 24² series of 16 "
          f"frames, auto weight.\n")
    print("| job | kind | steps | last σ's angle | method | worst slope error | variance ratio | exact on this grid |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    stubs = comfy_stubs.modules(tempfile.mkdtemp(prefix="vdm_grid_"))
    name = "custom_nodes_comfyui-vdm_grid_oracles"
    with stubbed_pack(stubs, name=name):
        comfy_model = sys.modules[name + ".nodes.comfy_model"]
        for job_name in (j for j in args.jobs if not (args.length and j == "upscale2")):
            obs, unknown, mean, var = oracle.job(job_name, prior, x)
            known = [i for i in range(x.shape[2]) if i not in unknown]  # none for upscaling: pixels are unknown
            cond = oracle.conditional(prior.cov, known)[1] if known else None
            for_job = dict(factor=2) if job_name == "upscale2" else dict(extend=job_name == "extend")
            for kind in args.kinds:
                model = oracle.hosted(prior, *comfy_model.sampling_functions(cms.KINDS[kind]()))
                for steps in args.steps:
                    for method in args.methods:
                        angles = capabilities(model).angles(steps, method)  # the grid jobs sample this method on
                        reach = "–"
                        if cond is not None:
                            r = oracle.variance_at(cond, angles[-2]) / var  # x̂ of the last step: at angles[-2]
                            reach = f"{r.min():.2f}–{r.max():.2f}"
                        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(20))
                        settings = SamplerSettings(method=method, iterations=args.iterations).for_job(**for_job)
                        out = sampling.sample(model, noise, angles, settings, observation=obs, clip=False,
                                              generator=torch.Generator().manual_seed(21))  # the replacement noise
                        slopes, ratios = oracle.frame_fit(out[:, :, unknown], mean, var)
                        print(f"| {job_name} | {kind} | {steps} | {angles[-2]:.3f} | {method} | "
                              f"{max(abs(s - 1) for s in slopes):.3f} | {min(ratios):.2f}–{max(ratios):.2f} | {reach} |",
                              flush=True)
        if args.drift:
            print(f"\n| kind | method | contrast per window ({DEFAULT_STEPS} steps, 8 windows) |\n| --- | --- | --- |")
            side = 24 if args.length else 16  # a SeparableGaussian's clips are its own size
            clips = [prior.draw(1, side, side, seed=5 + i)[0, :, :8].clamp(-1, 1)  # a clip lies in [-1, 1]; 4 std
                     for i in range(args.drift_clips)]
            for kind in args.kinds:
                model = oracle.hosted(prior, *comfy_model.sampling_functions(cms.KINDS[kind]()))
                for method in args.methods:
                    var = torch.zeros(8)
                    for i, clip in enumerate(clips):
                        out = tasks.extend(model, clip, 64, window=16, seed=3 + i, method=method,
                                           iterations=args.iterations)
                        var += torch.stack([out[:, 8 + 8 * w:16 + 8 * w].var() for w in range(8)]) / len(clips)
                    contrast = (var.sqrt() / args.std).tolist()
                    print(f"| {kind} | {method} | {', '.join(f'{c:.2f}' for c in contrast)} |", flush=True)


if __name__ == "__main__":
    main()
