"""Speed of the U-Net on CPU: forward and forward+backward time, FLOPs, achieved GFLOP/s next to the
machine's fp32 matmul GFLOP/s, and (when the optional package ``video-diffusion-pytorch`` is importable)
the same for its ``Unet3D`` at equal widths, with the ratio.

    python benchmarks/speed.py                       # batch 4, 16 frames, 32x32, base width 32, mults 1 2 4
    python benchmarks/speed.py --threads 1 --runs 7

Each job runs once to warm up, then ``--runs`` times, the networks interleaved run by run; the table gives
the median and minimum wall-clock seconds and the median process CPU seconds (with ``--threads 1`` the
CPU time is the work done even where other processes share the cores; GFLOP/s use the minimum wall time).
Forward runs under ``torch.no_grad()`` (as in sampling); forward+backward is a training step's
``loss.backward()`` without the optimizer. On a machine busy with something else, times are upper bounds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import types
from contextlib import nullcontext

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from vdm_core.unet3d import UNet3D, UNet3DConfig


def timed(fn) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def matmul_gflops(n: int = 2048, runs: int = 5) -> tuple[float, float]:
    """fp32 ``n×n @ n×n`` GFLOP/s by the best wall-clock and the best CPU time of ``runs`` products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = [timed(lambda: a @ b) for _ in range(runs)]
    return tuple(2 * n**3 / min(t[i] for t in times) / 1e9 for i in (0, 1))


def _cpu_attention_formulas() -> dict:
    """FLOP formulas for the CPU flash-attention kernels, which FlopCounterMode does not know (it would count
    0 for every unmasked ``scaled_dot_product_attention`` on CPU)."""
    aten = torch.ops.aten
    if not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}
    return {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, out_shape=None, **kw: flop_counter.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *args, out_shape=None, **kw: flop_counter.sdpa_backward_flop_count(g, q, k, v),
    }


def count_flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        fn()
    return counter.get_total_flops()


def jobs(model: torch.nn.Module, call, autocast=nullcontext) -> dict:
    """The two timed jobs of a network, each under ``autocast()``: ``forward`` (no grad, as in sampling) and
    ``forward+backward`` (backward of a mean square, a training step without the optimizer)."""
    model.train()  # dropout is 0 in both networks; train mode as in a training step

    def forward():
        with torch.no_grad(), autocast():
            call(model)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast():
            out = call(model)
        out.float().square().mean().backward()

    return {"fwd": forward, "fwdbwd": forward_backward}


def measure(models: dict, runs: int) -> dict:
    """Time every job of every network ``runs`` times after a warm-up, interleaving the networks run by
    run so that a load change on a shared machine hits them alike. Returns per network and job the FLOPs
    and the median and minimum wall and CPU seconds."""
    results = {name: {"params": sum(p.numel() for p in m.parameters())} for name, (m, _) in models.items()}
    table = {name: jobs(m, call) for name, (m, call) in models.items()}
    for name, js in table.items():
        for job, fn in js.items():
            results[name][job] = {"flops": count_flops(fn), "wall": [], "cpu": []}
            fn()  # warm-up
    for _ in range(runs):
        for job in ("fwd", "fwdbwd"):
            for name, js in table.items():
                wall, cpu = timed(js[job])
                results[name][job]["wall"].append(wall)
                results[name][job]["cpu"].append(cpu)
    return results


def import_theirs():
    """``video_diffusion_pytorch.Unet3D`` or None. Its module imports torchvision only for its GIF dataset;
    where torchvision is missing or broken, a stand-in module lets the network itself import."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        tv = types.ModuleType("torchvision")
        tv.transforms, tv.utils = types.ModuleType("torchvision.transforms"), types.ModuleType("torchvision.utils")
        tv.transforms.ToTensor = object  # used as a default argument value at import time
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms,
                            "torchvision.utils": tv.utils})
    try:
        from video_diffusion_pytorch import Unet3D
    except Exception as e:  # not installed (optional, not in CI) or broken
        print(f"video-diffusion-pytorch: not available ({type(e).__name__}: {e})")
        return None
    return Unet3D


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--base-width", type=int, default=32)
    p.add_argument("--width-mults", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--runs", type=int, default=5, help="timed runs of each job after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--no-theirs", action="store_true", help="skip video-diffusion-pytorch even if installed")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peak, peak_cpu = matmul_gflops()
    print(f"fp32 matmul 2048x2048: {peak:.1f} GFLOP/s by wall clock, {peak_cpu:.1f} by CPU time")
    shape = (args.batch, 3, args.frames, args.size, args.size)
    print(f"input {list(shape)}, widths {[args.base_width * m for m in args.width_mults]}, "
          f"{args.runs} runs after a warm-up")
    z = torch.randn(shape)

    ours = UNet3D(UNet3DConfig(base_width=args.base_width, width_mults=tuple(args.width_mults)))
    with torch.no_grad():  # the output conv starts at zero; give it weights so backward reaches everything
        ours.conv_out.weight.normal_(0, 0.01)
    phi = torch.rand(args.batch) * 1.5
    models = {"vdm_core UNet3D": (ours, lambda m: m(z, phi))}

    Theirs = None if args.no_theirs else import_theirs()
    if Theirs is not None:
        from importlib.metadata import version

        theirs = Theirs(dim=args.base_width, dim_mults=tuple(args.width_mults), channels=3)
        t = torch.randint(0, 1000, (args.batch,))
        models[f"video-diffusion-pytorch {version('video-diffusion-pytorch')} Unet3D"] = (theirs, lambda m: m(z, t))

    results = measure(models, args.runs)
    print("GFLOP/s and % of matmul: by minimum wall time / by minimum CPU time")
    print(f"{'model':42s} {'params':>7s} {'job':>6s} {'GFLOP':>7s} {'wall med':>9s} {'wall min':>9s} "
          f"{'cpu med':>8s} {'cpu min':>8s} {'GFLOP/s':>13s} {'% matmul':>11s}")
    for name, r in results.items():
        for job in ("fwd", "fwdbwd"):
            j = r[job]
            rate, rate_cpu = (j["flops"] / min(j[kind]) / 1e9 for kind in ("wall", "cpu"))
            print(f"{name:42s} {r['params'] / 1e6:6.2f}M {job:>6s} {j['flops'] / 1e9:7.2f} "
                  f"{statistics.median(j['wall']):9.3f} {min(j['wall']):9.3f} {statistics.median(j['cpu']):8.3f} "
                  f"{min(j['cpu']):8.3f} {rate:6.1f}/{rate_cpu:6.1f} "
                  f"{100 * rate / peak:4.0f}%/{100 * rate_cpu / peak_cpu:4.0f}%")
    if len(results) == 2:
        (_, ours_r), (_, theirs_r) = results.items()
        for job in ("fwd", "fwdbwd"):
            ratios = [f"{stat} {how(theirs_r[job][kind]) / how(ours_r[job][kind]):.2f}x"
                      for kind in ("wall", "cpu") for stat, how in ((f"{kind} median", statistics.median),
                                                                     (f"{kind} min", min))]
            print(f"speed-up ours vs theirs, {job}: " + ", ".join(ratios))
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
