"""U-Net speed on a GPU (a stage of benchmarks/gpu_run.py): forward and forward+backward time
of vdm_core's UNet3D and of video-diffusion-pytorch's Unet3D at equal widths, in fp32 and under bf16 autocast,
eager and ``torch.compile``d, with TFLOP/s and their share of the bf16 and fp32 matmul rates measured first in
the same process.

    python benchmarks/speed_gpu.py            # cuda, batch 8, 16 frames of 64x64, base width 128, mults 1 2 2

What is measured: FLOPs are counted once per network and job (``FlopCounterMode``, benchmarks/speed.py's
counter) on the eager fp32 call; each job is called once (for a compiled network: the compilation, reported
as ``first_s``), twice more to warm up, then ``--runs`` times between CUDA events (``perf_counter`` on the
CPU); the median and minimum are reported, and ``torch.cuda.max_memory_allocated`` over the timed calls.
Forward runs under ``torch.no_grad()`` (sampling); forward+backward is a training step's ``backward()`` of a
mean square, without the optimizer. "fp32" is PyTorch's default: cuDNN convolutions may use TF32
(``allow_tf32`` flags are reported), matrix products do not. The matmul rates: ``n×n @ n×n`` on random data.

Each measurement is printed as ``RESULT {json}`` the moment it is made, most wanted first (matmul; eager
fp32 and bf16 of both networks; compiled bf16 of ours then theirs; compiled fp32), because gpu_run.py stops
the stage at its time budget; a failure (e.g. the peer network that does not compile) is a result too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import count_flops, import_theirs, jobs  # noqa: E402  (benchmarks/ is not a package)

from vdm_core.unet3d import UNet3D, UNet3DConfig  # noqa: E402


def emit(**record) -> None:
    print("RESULT " + json.dumps(record), flush=True)


class Clock:
    """Seconds of one call: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if not self.cuda:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000


def matmul_rate(n: int, dtype: torch.dtype, device: torch.device, clock: Clock, runs: int = 10) -> float:
    """TFLOP/s of ``n×n @ n×n`` in ``dtype`` on random data: median of ``runs`` after three warm-ups."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    return 2 * n ** 3 / statistics.median(clock(lambda: a @ b) for _ in range(runs)) / 1e12


def autocast_of(precision: str, device: torch.device):
    """The context ``speed.jobs`` runs a job in: bf16 autocast for ``"bf16"``, nothing for ``"fp32"``."""
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext


def measure(fn, clock: Clock, runs: int, device: torch.device) -> dict:
    """First call, two warm-ups, then ``runs`` timed calls: first/median/min seconds and peak memory."""
    first = clock(fn)
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [clock(fn) for _ in range(runs)]
    out = {"first_s": first, "median_s": statistics.median(times), "min_s": min(times), "runs": runs}
    if device.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def networks(args, device: torch.device) -> dict:
    """``{name: (module, call)}``: ours, and theirs where video-diffusion-pytorch imports."""
    torch.manual_seed(0)
    shape = (args.batch, 3, args.frames, args.size, args.size)
    z = torch.randn(shape, device=device)
    phi = torch.rand(args.batch, device=device) * 1.5
    ours = UNet3D(UNet3DConfig(base_width=args.base_width, width_mults=tuple(args.width_mults)))
    with torch.no_grad():  # the output conv starts at zero; give it weights so backward reaches everything
        ours.conv_out.weight.normal_(0, 0.01)
    nets = {"vdm_core UNet3D": (ours.to(device).train(), lambda m: m(z, phi))}
    Theirs = import_theirs()
    if Theirs is None:  # its wheel was not carried or does not import: said in the results, ours goes on
        print("peer Unet3D skipped: video-diffusion-pytorch does not import here (carry its wheels: "
              "benchmarks/gpu_prepare.sh)", flush=True)
        emit(kind="skip", what="video-diffusion-pytorch Unet3D", reason="does not import (wheel not carried?)")
    else:
        theirs = Theirs(dim=args.base_width, dim_mults=tuple(args.width_mults), channels=3).to(device).train()
        t = torch.randint(0, 1000, (args.batch,), device=device)
        nets[f"video-diffusion-pytorch {version('video-diffusion-pytorch')} Unet3D"] = (theirs, lambda m: m(z, t))
    return nets


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--base-width", type=int, default=128)
    p.add_argument("--width-mults", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--runs", type=int, default=10, help="timed calls of each job (default: 10)")
    p.add_argument("--matmul", type=int, default=8192, help="n of the n×n matmul rates (default: 8192)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    # the peer's attention and block modules share their forward's code at several widths: at dynamo's default
    # limit of 8 recompilations per code object the rest of its calls would run eagerly, uncompiled; and with
    # automatic dynamic shapes (after the first recompilation) inductor failed on its backward (dry run, torch
    # 2.14), hence dynamic=False below
    torch._dynamo.config.recompile_limit = 64
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes, as in training
    clock = Clock(device)
    rates = {dt: matmul_rate(args.matmul, getattr(torch, name), device, clock)
             for dt, name in (("bf16", "bfloat16"), ("fp32", "float32"))}
    emit(kind="matmul", n=args.matmul, bf16_tflops=rates["bf16"], fp32_tflops=rates["fp32"],
         device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", torch=torch.__version__,
         cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    nets = networks(args, device)
    shape = [args.batch, 3, args.frames, args.size, args.size]
    flops = {name: {job: count_flops(fn) for job, fn in jobs(m, call).items()}
             for name, (m, call) in nets.items()}
    compiled = {}
    plan = [(name, prec, False) for prec in ("fp32", "bf16") for name in nets] + \
           [(name, prec, True) for prec in ("bf16", "fp32") for name in nets]
    for name, precision, comp in plan:
        model, call = nets[name]
        if comp and name not in compiled:
            compiled[name] = torch.compile(model, dynamic=False)  # one static graph per shape, as in training
        for job, fn in jobs(compiled[name] if comp else model, call, autocast_of(precision, device)).items():
            base = dict(kind="unet", net=name, params_m=sum(x.numel() for x in model.parameters()) / 1e6,
                        input=shape, widths=[args.base_width * m for m in args.width_mults], precision=precision,
                        compiled=comp, job=job, gflop=flops[name][job] / 1e9)
            try:
                r = measure(fn, clock, args.runs, device)
            except Exception as e:  # a network that does not compile or does not fit: recorded, the rest goes on
                emit(**base, error=f"{type(e).__name__}: {str(e)[:400]}")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            tflops = flops[name][job] / r["median_s"] / 1e12
            emit(**base, **r, tflops=tflops, share_bf16_matmul=tflops / rates["bf16"],
                 share_fp32_matmul=tflops / rates["fp32"])


if __name__ == "__main__":
    main()
