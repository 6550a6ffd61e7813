"""Quality benchmark: extend, interpolate and upscale on held-out moving-sprites clips.

Prints (and with --out writes) a Markdown table per job: PSNR / SSIM against ground truth on the
generated part, sprite position error (px) and ghosting (vdm_core.metrics), and the observation error
RMS(A(x) − y), for the baseline and for each guidance method and weight. Diffusion outputs are samples:
"mean" averages over all samples, "best-of-S" takes the best sample per clip (max PSNR / min error).

Clips come from the test split (seeds never used in training), at the model's resolution and frame
count. Sampling is batched straight through `sampling.sample` with the same observations and methods the
jobs in `vdm_core.tasks` use (one window per clip, so no windowing is involved).

    python benchmarks/quality.py --clips 64 --samples 4 --steps 32 --out docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import torch
import torch.nn.functional as F

from vdm_core import checkpoint, guidance
from vdm_core.data import sprite_batch, split_seed
from vdm_core.metrics import psnr, sprite_errors, ssim
from vdm_core.sampling import sample
from vdm_core.schedule import sampling_angles


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


def score(pred, x, obs, frames, seeds):
    """Per-clip metrics on the scored frames."""
    p, t = pred[:, :, frames], x[:, :, frames]
    pe, gh = zip(*(sprite_errors(pred[i], seeds[i], frames) for i in range(len(seeds))))
    err = (obs.operator(pred) - obs.y).pow(2).flatten(1).mean(1).sqrt()
    return {"psnr": psnr(p, t), "ssim": ssim(p, t), "pos": torch.tensor(pe), "ghost": torch.tensor(gh), "obs": err}


def run_method(model, x, job, method, weight, samples, steps, chunk):
    """``samples`` samples per clip of job ``job`` on true clips ``x``, returns ``[S, N, C, F, H, W]``."""
    n = x.shape[0]
    out = []
    for s in range(samples):
        gen = torch.Generator().manual_seed(1000 + s)
        noise = torch.randn(x.shape, generator=gen)
        parts = []
        for i in range(0, n, chunk):
            obs = make_job(job, x[i:i + chunk])[0]
            parts.append(sample(model, noise[i:i + chunk].to(model.device), sampling_angles(steps), observation=obs,
                                method=method, guidance_weight=weight, generator=gen).cpu().clamp(-1, 1))  # as jobs return
        out.append(torch.cat(parts))
    return torch.stack(out)


def summarize(metrics_per_sample):
    """Mean over samples and best-of-S per clip, averaged over clips."""
    keys = metrics_per_sample[0].keys()
    stacked = {k: torch.stack([m[k] for m in metrics_per_sample]) for k in keys}  # [S, N]
    mean = {k: float(v.mean()) for k, v in stacked.items()}
    best = {k: float((v.max(0).values if k in ("psnr", "ssim") else v.min(0).values).mean())
            for k, v in stacked.items()}
    return mean, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: bundled)")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--jobs", nargs="+", default=["extend", "interpolate", "upscale2", "upscale4"])
    ap.add_argument("--methods", nargs="+", default=["reconstruction", "replacement", "both"])
    ap.add_argument("--weights", type=float, nargs="+", default=[guidance.DEFAULT_GUIDANCE_WEIGHT])
    ap.add_argument("--chunk", type=int, default=32, help="clips per sampling batch")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = checkpoint.load(args.model)
    cfg = model.config
    x = sprite_batch("test", range(args.clips), size=cfg.resolution, frames=cfg.frames)
    seeds = [split_seed("test", i) for i in range(args.clips)]
    cmd = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Command: `{cmd}`", "",
             f"Model: {args.model or 'bundled'} ({cfg.frames} frames × {cfg.resolution}², "
             f"{model.training_info.get('steps')} training steps). Test clips: {args.clips} (test split, indices "
             f"0–{args.clips - 1}), {args.samples} samples each, DDIM η = 0, {args.steps} steps. "
             f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads.", ""]
    print("\n".join(lines), flush=True)
    for job in args.jobs:
        obs, frames, base, base_name = make_job(job, x)
        rows = [f"### {job}", "",
                "| method | w_r | PSNR mean | PSNR best-of-S | SSIM mean | pos err px mean | pos err best | "
                "ghosting mean | obs RMS | time s |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        b = score(base, x, obs, frames, seeds)
        rows.append(f"| {base_name} | – | {b['psnr'].mean():.2f} | – | {b['ssim'].mean():.3f} | "
                    f"{b['pos'].mean():.2f} | – | {b['ghost'].mean():.3f} | {b['obs'].mean():.4f} | – |")
        print("\n".join(rows), flush=True)
        for method in args.methods:
            if method == "replacement" and obs.frame_indices is None:
                continue  # replacement needs a frame selection
            for w in (args.weights if method != "replacement" else [0.0]):
                t0 = time.time()
                xs = run_method(model, x, job, method, w, args.samples, args.steps, args.chunk)
                dt = time.time() - t0
                mean, best = summarize([score(xs[s], x, obs, frames, seeds) for s in range(args.samples)])
                row = (f"| {method} | {w:g} | {mean['psnr']:.2f} | {best['psnr']:.2f} | {mean['ssim']:.3f} | "
                       f"{mean['pos']:.2f} | {best['pos']:.2f} | {mean['ghost']:.3f} | {mean['obs']:.4f} | {dt:.0f} |")
                rows.append(row)
                print(row, flush=True)
        lines += rows + [""]
        if args.out:
            with open(args.out, "w") as fh:
                fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
