"""Speed and memory of guided sampling through Use ComfyUI Model, in the real ComfyUI: time per step and peak
resident memory for unguided / latent-guided / pixel-guided steps, with and without per-block
checkpointing, on random-weight models of the real architectures. Each configuration runs in a fresh
process (peak memory is then that configuration's alone).

Models:
* ``wan1.3b``: Wan 2.1 T2V 1.3B's real configuration (dim 1536, ffn 8960, 30 blocks, 12 heads; 1.42 B
  parameters) with random weights, built in memory and loaded by ComfyUI's own
  ``comfy.sd.load_diffusion_model_state_dict`` (detected as WAN21, flow shift 8), plus a random Wan 2.1
  VAE of the real width (dim 96) for pixel observations. No file needed.
* ``wan-tiny``: the tiny Wan 2.1 of make_models.py (dim 128, 2 blocks) with the smallest VAE the release
  builds (dim 8 on 0.33, dim 96 on 0.3.64), from MODELS_DIR.

``step_s`` is the median time of the steps after the first (the first, with its warm-up, is ``first_step_s``;
with one step, that step). Modes: ``none`` (w_r 0: no gradient), ``latent`` (the first latent frame observed: no decoder),
``pixel`` (every other frame observed through the VAE decoder). The guided steps use reconstruction
guidance at w_r 1.

usage (one configuration, or --modes on one loaded model, each with and without checkpointing):
  $COMFY_HOME/venv/bin/python tests/harness/bench_comfy.py one --model wan1.3b --frames 9 --size 64 \\
      --mode pixel [--checkpointing] [--modes none latent pixel] [--steps 2] [--models MODELS_DIR] \\
      [--device cuda --dtype bf16]
usage (a table of them, each in its own process):
  $COMFY_HOME/venv/bin/python tests/harness/bench_comfy.py table --model wan1.3b --frames 9 --size 64 \\
      [--modes none latent pixel] [--steps 2] [--json OUT]

On a GPU (not available where this was written) the same script measures the real size, e.g.
``one --model wan1.3b --frames 33 --width 832 --height 480 --mode latent --device cuda --dtype bf16``;
it then also reports ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def run_one(a):
    """Load the model once, then yield one result dict per configuration as it is measured."""
    if a.device == "cuda":
        os.environ["COMFY_GPU"] = "1"  # comfyenv leaves --cpu out: ComfyUI takes the GPU
    import comfyenv
    import torch

    import comfy.ldm.wan.model
    import comfy.sd
    import nodes as comfy_nodes
    import make_models

    node = comfyenv.load_pack()["VDM_FromComfyModel"]
    root = next(k for k in sys.modules if k.endswith(".nodes.comfy_model")).rsplit(".nodes.", 1)[0]
    sampling, guidance = sys.modules[f"{root}.vdm_core.sampling"], sys.modules[f"{root}.vdm_core.guidance"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype] if a.dtype else None
    t0 = time.time()
    with torch.inference_mode():
        if a.model == "wan1.3b":
            meta = comfy.ldm.wan.model.WanModel(**make_models.WAN_1_3B, device="meta", dtype=torch.float32,
                                                operations=make_models.OPS)
            sd = {k: torch.zeros(v.shape) for k, v in meta.state_dict().items()}  # zero pages: no memory until written
            mp = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype} if dtype else {})
            del sd, meta
            make_models.randomize(mp.model.diffusion_model, 0, in_place=True)  # inside inference mode, as loaded
            pixel = "pixel" in (a.modes or [a.mode])
            vae = comfy.sd.VAE(sd=make_models.state_dict(make_models.wan_vae(96))) if pixel else None
        else:
            comfyenv.use_models(a.models)
            (mp,) = comfy_nodes.UNETLoader().load_unet("vdm_test_wan21_tiny.safetensors", "default")
            (vae,) = comfy_nodes.VAELoader().load_vae("vdm_test_wan21_vae.safetensors")
        models = {ck: node.execute(model=mp, vae=vae, cfg=1.0, checkpointing=ck).args[0] for ck in (False, True)}
    load_s = time.time() - t0
    runs = [(m, ck) for m in a.modes for ck in ((False,) if m == "none" else (False, True))] if a.modes else \
        [(a.mode, a.checkpointing)]
    for mode, ck in runs:  # each result as soon as it is measured; a failure (out of memory) is a result too
        try:
            yield measure(a, models[ck].network, mode, ck, mp, load_s, sampling, guidance, comfyenv, torch)
        except Exception as e:
            traceback.print_exc()  # where it failed, in the log; the result says what
            yield dict(comfyui=comfyenv.version(), model=a.model, frames=a.frames, mode=mode, checkpointing=ck,
                       device=a.device, error=f"{type(e).__name__}: {str(e)[:400]}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def measure(a, sm, mode, checkpointing, mp, load_s, sampling, guidance, comfyenv, torch) -> dict:
    """One configuration on an already loaded model; freed memory is handed back to the OS first
    (malloc_trim), so the peak is this configuration's."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    space = sm.space
    time_c, scale = (space.time, space.scale) if space is not None else (4, 8)
    width, height = a.width or a.size, a.height or a.size
    t = 1 + (a.frames - 1) // time_c
    shape = (1, 16, t, height // scale, width // scale)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    angles = sm.angles(a.steps)
    if mode == "latent":
        obs = guidance.select_frames(torch.zeros(1, 16, 1, *shape[3:]), (0,), t)
    elif mode == "pixel":
        frames = list(range(0, a.frames, 2))
        y = torch.zeros(1, 3, len(frames), height, width)
        obs = guidance.Observation(y=y, operator=lambda x: space.decode(x)[:, :, frames], num_frames=t)
    else:
        obs = None
    marks = []

    def fn():
        marks.append(time.perf_counter())
        settings = sampling.SamplerSettings(method=a.method, guidance_weight=0.0 if mode == "none" else 1.0)
        return sampling.sample(sm, noise.to(sm.device), angles, settings, observation=obs, clip=False,
                               callback=lambda i, n, x: marks.append(time.perf_counter()))

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    base = comfyenv.rss_mb()
    with comfyenv.PeakRSS() as mem, torch.inference_mode():
        x = sm.run(fn, shape, angles)
    steps = [b - c for c, b in zip(marks, marks[1:])]
    out = dict(comfyui=comfyenv.version(), model=a.model, frames=a.frames, width=width, height=height,
               latent=list(shape), mode=mode, method=a.method if mode != "none" else None,
               checkpointing=checkpointing, steps=a.steps, device=str(sm.device),
               dtype=str(mp.model.get_dtype()), params_m=sum(p.numel() for p in mp.model.diffusion_model.parameters()) / 1e6,
               load_s=load_s, step_s=statistics.median(steps[1:] or steps), first_step_s=steps[0], rss_before_mb=base,
               rss_peak_added_mb=mem.peak - base, finite=bool(torch.isfinite(x).all()))
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def row(r: dict) -> str:
    if "error" in r:
        return f"| {r['model']} | {r['comfyui']} | {r['frames']} frames | {r['mode']} | {r['checkpointing']} | {r['error']} |"
    mode = r['mode'] + (f" ({r['method']})" if r.get('method') else "")
    return (f"| {r['model']} | {r['comfyui']} | {r['frames']}×{r['width']}×{r['height']} → {r['latent']} | {mode} | "
            f"{'yes' if r['checkpointing'] else 'no'} | {r['step_s']:.3f} s | +{r['rss_peak_added_mb']:.0f} MB |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("one", "table"))
    ap.add_argument("--model", default="wan-tiny", choices=("wan1.3b", "wan-tiny"))
    ap.add_argument("--models", default="/work/comfy/wt10_base033/models")
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--mode", default="latent", choices=("none", "latent", "pixel"))
    ap.add_argument("--modes", nargs="+", help="one: several modes (each with and without checkpointing) on one "
                    "loaded model; table: the modes to run, each in its own process (default all)")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--method", default="reconstruction",
                    choices=("reconstruction", "both", "posterior", "consistency"),
                    help="how the guided modes are conditioned (w_r 1 where the method has a weight)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.what == "one":
        for r in run_one(a):
            print(json.dumps(r), flush=True)
            print(row(r), file=sys.stderr, flush=True)
        return
    rows = []
    for mode in a.modes or ["none", "latent", "pixel"]:
        for ckpt in ([False] if mode == "none" else [False, True]):
            cmd = [sys.executable, os.path.abspath(__file__), "one", "--model", a.model, "--models", a.models,
                   "--frames", str(a.frames), "--size", str(a.size), "--mode", mode, "--steps", str(a.steps),
                   "--device", a.device] + (["--checkpointing"] if ckpt else []) + \
                  (["--width", str(a.width)] if a.width else []) + (["--height", str(a.height)] if a.height else []) + \
                  (["--dtype", a.dtype] if a.dtype else []) + ["--method", a.method]
            res = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("{")), None)
            if line is None:
                print(f"{mode} ckpt={ckpt}: FAILED\n{res.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(line)
            rows.append(r)
            print(row(r), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
