"""Training speed: step time and clips/s of ``vdm_core.train.train`` in 1 and N processes (torchrun; Gloo on
CPU, NCCL on CUDA), and the data loader's clips/s alone (PyAV decoding a folder of clips), to see whether
decoding or compute bounds a run.

    python benchmarks/train_speed.py                              # CPU: 1 and 2 processes, then the loader
    python benchmarks/train_speed.py --procs 1 --steps 40 --loader-workers 0 1 2
    python benchmarks/train_speed.py --device cuda --precision bf16 --size 64 --frames 16 --base-width 128 \\
        --batch 32 --procs 1 8 --loader-workers 0 4 8 --clips ~/footage     # a GPU machine

Each training run is a fresh process (``N > 1``: ``torchrun --standalone --nproc-per-node N``) that trains for
``--steps`` steps of the global ``--batch`` on ``--data`` (default: procedural sprites) and reports each step;
the table gives the median time between steps after ``--skip`` warm-up steps, clips/s = batch / that
time and, on a GPU, rank 0's ``torch.cuda.max_memory_allocated`` over the run. With ``--threads T`` each process uses T CPU threads (on a machine shared with other jobs the times are
upper bounds). The loader part writes ``--loader-clips`` clips of 48 frames at ``--loader-size`` pixels
(default 4x the training size; moving sprites, mp4) unless ``--clips`` names a folder of your footage, and
times a DataLoader of ``ClipFolder`` windows for each worker count.

Goals (checked and printed at the end; timing goals live here, not in the tests):
* N processes give at least 0.8·N times the clips/s of one (on otherwise idle cores or GPUs);
* the loader with the most workers reads at least twice the clips/s of the fastest training run, so decoding
  does not bound training.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from vdm_core.data import sprite_clip, split_seed
from vdm_core.distributed import BatchPositions
from vdm_core.footage import ClipFolder
from vdm_core.train import TrainConfig, train
from vdm_core.unet3d import UNet3D, UNet3DConfig
from vdm_core.video_write import write_video


def config(args, out: str) -> TrainConfig:
    net = UNet3DConfig(base_width=args.base_width, width_mults=tuple(args.width_mults))
    return TrainConfig(out=out, data=args.data, size=args.size, frames=args.frames, steps=args.steps, batch=args.batch,
                       accumulate=args.accumulate, lr=1e-4, checkpoint_every=0, log_every=1, device=args.device,
                       precision=args.precision, compile=args.compile, workers=args.workers, threads=args.threads,
                       model=net)


def worker(spec: str) -> None:
    """One process of a timed run (started by ``time_training``): train, then rank 0 prints the step times
    and, on a GPU, ``torch.cuda.max_memory_allocated`` of the whole run (MiB)."""
    d = json.loads(spec)
    cfg = TrainConfig(**{**d, "model": UNet3DConfig(**d["model"])})
    stamps = []
    train(cfg, log=lambda line: stamps.append(time.perf_counter()) if line.startswith("step ") else None)
    if int(os.environ.get("RANK", 0)) == 0:
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_initialized() else None
        print("RESULT " + json.dumps({"step_s": [b - a for a, b in zip(stamps, stamps[1:])], "peak_mb": peak}),
              flush=True)


def time_training(args, procs: int, tmp: Path) -> dict:
    """``{"step_s": seconds between consecutive steps, "peak_mb": rank 0's peak GPU memory or None}`` of a run
    in ``procs`` fresh processes."""
    cfg = config(args, str(tmp / f"bench{procs}.safetensors"))
    spec = json.dumps({**asdict(cfg), "model": asdict(cfg.model)})
    launcher = [sys.executable] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    run = subprocess.run(launcher + [__file__, "--worker", spec], env=env, capture_output=True, text=True)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    if run.returncode or not lines:
        sys.exit(f"the {procs}-process run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def loader_folder(args, tmp: Path) -> Path:
    """``--clips``, or a folder of 48-frame moving-sprites mp4 clips of ``--loader-size`` pixels (rendered at
    64 at most and upscaled: smooth content, which h264 decodes faster than real footage)."""
    if args.clips:
        return Path(args.clips).expanduser()
    folder, size = tmp / "clips", args.loader_size or 4 * args.size
    for i in range(args.loader_clips):
        clip = sprite_clip(split_seed("test", i), size=min(size, 64), frames=48)
        if size > 64:
            clip = torch.nn.functional.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False)
        write_video(folder / f"{i:03d}.mp4", clip, fps=24)
    return folder


def time_loader(data: ClipFolder, batch: int, workers: int, batches: int) -> float:
    """Clips per second of a DataLoader reading ``batches`` batches of windows, after two warm-up batches (the
    workers' prefetched batches make it a little optimistic for few batches)."""
    loader = iter(torch.utils.data.DataLoader(data, batch_sampler=BatchPositions(0, batch, 0, 1, 1),
                                              num_workers=workers))
    for _ in range(2):  # worker start-up and the first decodes
        next(loader)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch / (time.perf_counter() - t0)


def goals(rates: dict[int, float], loaded: dict[int, float]) -> None:
    """Print whether the goals of the module doc are met."""
    for procs in (n for n in rates if n > 1 and 1 in rates):
        gain = rates[procs] / rates[1]
        print(f"goal: {procs} processes >= {0.8 * procs:.1f}x the clips/s of one: {gain:.2f}x, "
              f"{'met' if gain >= 0.8 * procs else 'NOT met'}")
    if rates and loaded:
        most, fastest = loaded[max(loaded)], max(rates.values())
        print(f"goal: the loader ({max(loaded)} workers) >= 2x the fastest training run: {most:.1f} vs {fastest:.1f} "
              f"clips/s, {'met: compute bounds training' if most >= 2 * fastest else 'NOT met: decoding may bound it'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, nargs="*", default=[1, 2], help="process counts to time (default: 1 2; "
                   "none: the loader only)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (default: auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (the first steps compile)")
    p.add_argument("--data", default="sprites", help="'sprites' or a folder of clips to train on (default: sprites)")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--base-width", type=int, default=32)
    p.add_argument("--width-mults", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--batch", type=int, default=8, help="global batch (default: 8)")
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="steps per run (default: 20)")
    p.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the median (default: 3)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process (default: 1; 0: torch's)")
    p.add_argument("--workers", type=int, help="DataLoader workers per training process (default: train's)")
    p.add_argument("--clips", help="a folder of clips for the loader part (default: sprites written for it)")
    p.add_argument("--loader-clips", type=int, default=16, help="clips written for the loader part (default: 16)")
    p.add_argument("--loader-size", type=int, help="their size in pixels (default: 4 x --size)")
    p.add_argument("--loader-workers", type=int, nargs="*", default=[0, 1, 2], help="worker counts (default: 0 1 2; "
                   "none: no loader part)")
    p.add_argument("--loader-batches", type=int, default=20, help="batches timed per worker count (default: 20)")
    p.add_argument("--stride", type=int, default=1, help="frame stride of the loader's windows (default: 1)")
    p.add_argument("--json", action="store_true", help="also print each training run as a line RESULT {json} "
                   "(benchmarks/gpu_run.py reads them)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker)

    net = UNet3D(UNet3DConfig(base_width=args.base_width, width_mults=tuple(args.width_mults)))
    params = sum(x.numel() for x in net.parameters()) / 1e6
    print(f"train_speed: torch {torch.__version__}, {os.cpu_count()} CPU cores, device {args.device}, "
          f"precision {args.precision}{', compiled' if args.compile else ''}; network base {args.base_width} mults "
          f"{' '.join(map(str, args.width_mults))} ({params:.2f} M parameters); {args.frames} frames of "
          f"{args.size}x{args.size}, data {args.data}, global batch {args.batch}, {args.threads} thread(s) per process")
    rates, loaded = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.procs:
            print(f"\n{'processes':>9}  {'step s (median)':>15}  {'min':>6}  {'clips/s':>8}  {'peak MiB':>8}")
        for procs in args.procs:
            run = time_training(args, procs, tmp)
            times = run["step_s"][args.skip:]
            step = statistics.median(times)
            rates[procs] = args.batch / step
            peak = "–" if run["peak_mb"] is None else f"{run['peak_mb']:.0f}"
            print(f"{procs:>9}  {step:>15.3f}  {min(times):>6.3f}  {rates[procs]:>8.1f}  {peak:>8}", flush=True)
            if args.json:
                print("RESULT " + json.dumps({
                    "kind": "train", "processes": procs, "device": args.device, "precision": args.precision,
                    "compiled": args.compile, "data": args.data, "size": args.size, "frames": args.frames,
                    "base_width": args.base_width, "width_mults": args.width_mults, "params_m": params,
                    "batch": args.batch, "steps": args.steps, "skipped": args.skip, "step_s_median": step,
                    "step_s_min": min(times), "clips_per_s": rates[procs], "peak_mb": run["peak_mb"]}), flush=True)
        if args.loader_workers:
            if args.threads:
                torch.set_num_threads(args.threads)  # the loader's main process, like a training process
            folder = loader_folder(args, tmp)
            data = ClipFolder(folder, args.size, args.frames, stride=args.stride)
            print(f"\ndata loader alone: {len(data.clips)} clips in {folder} ({data.clips[0][1]}+ frames), windows "
                  f"of {args.frames} frames every {args.stride}, resized and cropped to {args.size}x{args.size}")
            print(f"{'workers':>9}  {'clips/s':>8}")
        for workers in args.loader_workers:
            loaded[workers] = time_loader(data, args.batch, workers, args.loader_batches)
            print(f"{workers:>9}  {loaded[workers]:>8.1f}", flush=True)
    print()
    goals(rates, loaded)


if __name__ == "__main__":
    main()
