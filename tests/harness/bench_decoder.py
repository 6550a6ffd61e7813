"""Memory and time of a pixel observation's gradient through Wan 2.1's VAE decoder (its real width, dim 96,
random weights, built by ComfyUI's own classes): ``decode`` then the backward pass of ``‖decode(x)‖²``, plain and
with each chunk call checkpointed (``checkpointed_chunks`` of nodes/comfy_space.py, what the pack's pixel
observations use), one configuration per fresh process (the peak is its own).

  $COMFY_HOME/venv/bin/python tests/harness/bench_decoder.py table --sizes 5x64x64 9x64x64 17x64x64 [--json OUT] \
      [--project 33x480x832]
  $COMFY_HOME/venv/bin/python tests/harness/bench_decoder.py one --size 9x64x64 [--chunks] [--compare]

Sizes are frames x height x width in pixels. Prints one JSON line per configuration: peak resident memory added
(MB), seconds, and with ``--compare`` the largest difference from the plain decode and gradient. Each
configuration runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc): every tensor larger than 64 KiB is mapped on
allocation and unmapped when freed, so the resident peak is the peak of live tensors, not of the allocator's
fragmented heap (without it the plain 17x64x64 decode read +2,026 MB instead of +1,541 MB).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_one(size: str, chunks: bool, compare: bool) -> dict:
    import contextlib

    import comfyenv
    import torch

    import comfy.sd
    import make_models

    comfyenv.load_pack()
    space = sys.modules[next(k for k in sys.modules if k.endswith(".nodes.comfy_space"))]
    frames, height, width = (int(v) for v in size.split("x"))
    vae = comfy.sd.VAE(sd=make_models.state_dict(make_models.wan_vae(96)))  # outside inference mode: normal weights
    fsm = vae.first_stage_model
    x0 = torch.randn(1, 16, 1 + (frames - 1) // 4, height // 8, width // 8, generator=torch.Generator().manual_seed(0))

    def grad_of(checkpointed: bool):
        x = x0.clone().requires_grad_(True)
        with space.checkpointed_chunks(fsm) if checkpointed else contextlib.nullcontext():
            img = fsm.decode(x)
            img = torch.cat(img, 2) if isinstance(img, list) else img
        (g,) = torch.autograd.grad(img.pow(2).sum(), x)  # after the context, as the pack's decode is used
        return img.detach(), g

    base = comfyenv.rss_mb()
    t0 = time.perf_counter()
    with comfyenv.PeakRSS() as mem:
        img, g = grad_of(chunks)
    out = dict(comfyui=comfyenv.version(), frames=frames, height=height, width=width, latent=list(x0.shape),
               chunks=chunks, seconds=time.perf_counter() - t0, rss_before_mb=base, rss_peak_added_mb=mem.peak - base)
    if compare:
        ref_img, ref_g = grad_of(not chunks)
        out.update(max_image_diff=float((img - ref_img).abs().max()), grad_rel_diff=float((g - ref_g).norm() / ref_g.norm()))
    return out


def fit(rows: list[dict], target: str) -> dict:
    """Least-squares fit of ``peak MB = h·w·(a + b·frames)`` (per pixel of a frame: a fixed part, one chunk's
    recompute, and a part growing with the frames, the caches and saved inputs of every chunk) to the rows of one
    kind, and its value at ``target`` (frames x height x width) in fp32 and in bf16 (half the bytes)."""
    import numpy as np

    frames, height, width = (int(v) for v in target.split("x"))
    area = np.array([r["height"] * r["width"] for r in rows], dtype=float)
    design = np.stack([area, area * np.array([r["frames"] for r in rows], dtype=float)], 1)
    peak = np.array([r["rss_peak_added_mb"] for r in rows])
    (a, b), *_ = np.linalg.lstsq(design, peak, rcond=None)
    worst = float(np.max(np.abs(design @ np.array([a, b]) - peak) / peak))
    fp32 = height * width * (a + b * frames)
    return dict(kb_per_pixel=float(1024 * a), kb_per_pixel_frame=float(1024 * b), worst_fit_error=worst,
                target=target, projected_fp32_gb=float(fp32 / 1024), projected_bf16_gb=float(fp32 / 2048))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("one")
    one.add_argument("--size", required=True)
    one.add_argument("--chunks", action="store_true", help="each chunk call checkpointed")
    one.add_argument("--compare", action="store_true", help="also the other way, for the difference")
    table = sub.add_parser("table")
    table.add_argument("--sizes", nargs="+", required=True)
    table.add_argument("--json")
    table.add_argument("--project", help="fit the peaks and project them to this size (frames x height x width)")
    a = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":  # the allocator reads it at start: run again with it
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    if a.cmd == "one":
        print(json.dumps(run_one(a.size, a.chunks, a.compare)))
        return
    rows = []
    for size in a.sizes:
        for chunks in (False, True):
            cmd = [sys.executable, os.path.join(HERE, "bench_decoder.py"), "one", "--size", size] + \
                (["--chunks"] if chunks else [])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                rows.append(dict(size=size, chunks=chunks, error=res.stderr.strip().splitlines()[-1:]))
            else:
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if a.project:
        for chunks in (False, True):
            good = [r for r in rows if "error" not in r and r["chunks"] == chunks]
            if len(good) >= 2:
                rows.append(dict(fit="chunks and blocks checkpointed" if chunks else "plain", **fit(good, a.project)))
                print(json.dumps(rows[-1]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
