"""Quality benchmark: extend, interpolate and upscale on two held-out test sets, side by side.

Test sets (``SETS``; clips at the model's resolution and frame count):

* ``v1``: the moving-sprites v1 test split (``vdm_core.data``, seeds never used in training) — the
  training generator's own held-out clips;
* ``independent``: ``benchmarks/independent_scenes.py``, a renderer that shares no code with any training
  generator (other shapes, textured and plain backgrounds of any colour, pans, occluders).

Prints (and with --out writes) a Markdown table per job with both sets' rows next to each other:
PSNR / SSIM against ground truth on the generated part, object position error (px) and ghosting
(``vdm_core.metrics.object_errors`` on each set's ground truth; object-frames less than half visible are
not scored), and the observation error RMS(A(x) − y), for the baseline and each guidance method and
weight; then a summary of every method against its baseline. Diffusion outputs are samples: "mean"
averages over all samples, "best-of-S" takes the best sample per clip (max PSNR / min error).
Sampling is batched straight through ``sampling.sample`` (``run_method``) with the same observations
and methods the jobs in ``vdm_core.tasks`` use (one window per clip, so no windowing is involved). Without
``--weights`` each job uses ``settings.auto_guidance_weight`` (8 for extension, 16 for interpolation, ``4·s²``
for upscaling by ``s``).

    python benchmarks/quality.py --clips 64 --samples 4 --steps 16 --methods both --out docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vdm_core import checkpoint, guidance
from vdm_core.contract import capabilities
from vdm_core.data import sprite_batch, split_seed
from vdm_core.metrics import object_errors, psnr, sprite_errors, ssim
from vdm_core.sampling import sample
from vdm_core.settings import DEFAULT_ITERATIONS, METHODS, SamplerSettings, auto_guidance_weight

sys.path.insert(0, str(Path(__file__).resolve().parent))
from independent_scenes import independent_set  # noqa: E402  (benchmarks/ is not a package)

JOBS = ("extend", "interpolate", "upscale2", "upscale4")


@dataclass
class TestSet:
    """``x``: true clips ``[N, 3, F, H, W]``; ``errors(clip, i, frames)``: (position error, ghosting) of a
    clip that should show clip ``i``."""

    name: str
    x: torch.Tensor
    errors: Callable[[torch.Tensor, int, list[int]], tuple[float, float]]
    description: str


def sprites_v1_set(n: int, size: int, frames: int) -> TestSet:
    seeds = [split_seed("test", i) for i in range(n)]
    return TestSet("v1", sprite_batch("test", range(n), size=size, frames=frames),
                   lambda clip, i, fr: sprite_errors(clip, seeds[i], fr),
                   f"moving sprites v1, test split indices 0–{n - 1}")


def independent_test_set(n: int, size: int, frames: int) -> TestSet:
    scenes = independent_set(range(n), size, frames)

    def errors(clip, i, fr):
        s = scenes[i]
        return object_errors(clip, s.centres, s.colours, s.radii, s.background, fr, visible=s.visible)

    return TestSet("independent", torch.stack([s.clip for s in scenes]), errors,
                   f"benchmarks/independent_scenes.py, clips 0–{n - 1}")


SETS = {"v1": sprites_v1_set, "independent": independent_test_set}


def make_job(name: str, x: torch.Tensor):
    """Observation, frames to score and baseline prediction for job ``name`` on true clips ``x``."""
    f = x.shape[2]
    if name == "extend":
        known = f // 2
        obs = guidance.select_frames(x[:, :, :known], list(range(known)), f)
        base = x[:, :, known - 1:known].expand(-1, -1, f, -1, -1).clone()
        base[:, :, :known] = x[:, :, :known]
        return obs, list(range(known, f)), base, "repeat last frame"
    if name == "interpolate":
        keys = list(range(0, f, 4))
        obs = guidance.select_frames(x[:, :, keys], keys, f)
        base = torch.empty_like(x)
        for i in range(f):
            k0 = (i // 4) * 4
            k1 = min(k0 + 4, keys[-1])
            w = 0.0 if k1 == k0 else (i - k0) / (k1 - k0)
            base[:, :, i] = (1 - w) * x[:, :, k0] + w * x[:, :, k1]
        return obs, [i for i in range(f) if i not in keys], base, "linear cross-fade"
    if name.startswith("upscale"):
        s = int(name[len("upscale"):])
        y = guidance.area_downsample(x, s)
        obs = guidance.downsample(y, s)
        b, c, ff, h, w = y.shape
        up = F.interpolate(y.permute(0, 2, 1, 3, 4).reshape(b * ff, c, h, w), scale_factor=s, mode="bicubic",
                           align_corners=False).clamp(-1, 1)
        base = up.reshape(b, ff, c, h * s, w * s).permute(0, 2, 1, 3, 4)
        return obs, list(range(f)), base, "bicubic"
    raise ValueError(name)


def job_factor(name: str) -> int:
    """The spatial factor of job ``name`` (1 for extension and interpolation)."""
    return int(name[len("upscale"):]) if name.startswith("upscale") else 1


def score(pred, ts: TestSet, obs, frames):
    """Per-clip metrics of ``pred`` (``[N, C, F, H, W]``) on the scored frames of test set ``ts``."""
    p, t = pred[:, :, frames], ts.x[:, :, frames]
    pe, gh = zip(*(ts.errors(pred[i], i, frames) for i in range(len(pred))))
    err = (obs.operator(pred) - obs.y).pow(2).flatten(1).mean(1).sqrt()
    return {"psnr": psnr(p, t), "ssim": ssim(p, t), "pos": torch.tensor(pe, dtype=torch.float64),
            "ghost": torch.tensor(gh, dtype=torch.float64), "obs": err}


def run_method(model, x, job, method, weight, samples, steps, chunk, iterations=DEFAULT_ITERATIONS):
    """``samples`` samples per clip of job ``job`` on true clips ``x``, returns ``[S, N, C, F, H, W]``
    (``iterations``: of methods posterior and consistency)."""
    n = x.shape[0]
    angles = capabilities(model).angles(steps, method)  # the grid jobs sample this method on
    out = []
    for s in range(samples):
        gen = torch.Generator().manual_seed(1000 + s)
        noise = torch.randn(x.shape, generator=gen)
        parts = []
        for i in range(0, n, chunk):
            obs = make_job(job, x[i:i + chunk])[0]
            settings = SamplerSettings(method=method, guidance_weight=weight, iterations=iterations)
            parts.append(sample(model, noise[i:i + chunk].to(model.device), angles, settings,
                                observation=obs, generator=gen).cpu().clamp(-1, 1))  # as jobs return
        out.append(torch.cat(parts))
    return torch.stack(out)


def summarize(metrics_per_sample):
    """Mean over samples and best-of-S per clip, averaged over clips (clips with nothing scored, NaN, left out)."""
    stacked = {k: np.stack([m[k].double().numpy() for m in metrics_per_sample]) for k in metrics_per_sample[0]}
    mean = {k: float(np.nanmean(v)) for k, v in stacked.items()}
    best = {k: float(np.nanmean((np.fmax if k in ("psnr", "ssim") else np.fmin).reduce(v, axis=0)))
            for k, v in stacked.items()}
    return mean, best


def row(method, w, ts_name, mean, best=None, dt=None) -> str:
    b = best or {}
    f = (lambda k, fmt: format(b[k], fmt) if k in b else "–")
    return (f"| {method} | {w} | {ts_name} | {mean['psnr']:.2f} | {f('psnr', '.2f')} | {mean['ssim']:.3f} | "
            f"{mean['pos']:.2f} | {f('pos', '.2f')} | {mean['ghost']:.3f} | {mean['obs']:.4f} | "
            f"{'–' if dt is None else f'{dt:.0f}'} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: bundled)")
    ap.add_argument("--clips", type=int, default=64, help="clips of each test set")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    ap.add_argument("--methods", nargs="+", default=["reconstruction", "replacement", "both", "posterior"],
                    choices=METHODS)
    ap.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                    help="solver iterations of methods posterior and consistency")
    ap.add_argument("--weights", type=float, nargs="+", default=None,
                    help="w_r grid (default: settings.auto_guidance_weight of each job)")
    ap.add_argument("--chunk", type=int, default=32, help="clips per sampling batch")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = checkpoint.load(args.model)
    cfg = model.config
    sets = [SETS[name](args.clips, cfg.resolution, cfg.frames) for name in args.sets]
    cmd = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Command: `{cmd}`", "",
             f"Model: {args.model or 'bundled'} ({cfg.frames} frames × {cfg.resolution}², "
             f"{model.training_info.get('steps')} training steps, data: {model.training_info.get('data')}). "
             f"Test sets: " + "; ".join(f"{ts.name}: {ts.description}" for ts in sets) + ". "
             f"Samples per clip: {args.samples}, DDIM η = 0 (posterior: DPM-Solver++(2M)), {args.steps} steps; "
             f"methods posterior and consistency: "
             f"{args.iterations} solver iterations. "
             f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads.", ""]
    print("\n".join(lines), flush=True)
    summary = ["### summary: each method against the job's baseline", "",
               "| job | set | method | w_r | PSNR mean − baseline | pos err px (baseline → method) | "
               "ghosting (baseline → method) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for job in args.jobs:
        rows = [f"### {job}", "",
                "| method | w_r | set | PSNR mean | PSNR best-of-S | SSIM mean | pos err px mean | pos err best | "
                "ghosting mean | obs RMS | time s |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        jobs = {ts.name: make_job(job, ts.x) for ts in sets}  # obs, frames, baseline, baseline name
        base = {}
        for ts in sets:
            obs, frames, pred, base_name = jobs[ts.name]
            base[ts.name] = summarize([score(pred, ts, obs, frames)])[0]
            rows.append(row(base_name, "–", ts.name, base[ts.name]))
        print("\n".join(rows), flush=True)
        weights = args.weights or [auto_guidance_weight(job_factor(job), job == "extend")]
        for method in args.methods:
            if method == "replacement" and job_factor(job) > 1:
                continue  # replacement needs a frame selection
            for w in (weights if method in ("reconstruction", "both") else [0.0]):  # the others use no w_r
                for ts in sets:
                    obs, frames, _, _ = jobs[ts.name]
                    t0 = time.time()
                    xs = run_method(model, ts.x, job, method, w, args.samples, args.steps, args.chunk,
                                    args.iterations)
                    dt = time.time() - t0
                    mean, best = summarize([score(xs[s], ts, obs, frames) for s in range(args.samples)])
                    rows.append(row(method, f"{w:g}", ts.name, mean, best, dt))
                    print(rows[-1], flush=True)
                    b = base[ts.name]
                    summary.append(f"| {job} | {ts.name} | {method} | {w:g} | {mean['psnr'] - b['psnr']:+.2f} | "
                                   f"{b['pos']:.2f} → {mean['pos']:.2f} | {b['ghost']:.3f} → {mean['ghost']:.3f} |")
        lines += rows + [""]
        if args.out:
            with open(args.out, "w") as fh:
                fh.write("\n".join(lines + summary) + "\n")
    print("\n".join([""] + summary), flush=True)


if __name__ == "__main__":
    main()
