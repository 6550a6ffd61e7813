"""Retrain the bundled model from scratch in a fixed time on a GPU (a stage of
benchmarks/gpu_run.py) and write its inference weights where the run tool collects them.

1. calibrate: a short run of the same settings in a fresh process (benchmarks/train_speed.py's
   ``time_training``, ``vdm_core.train.train`` as ``vdm train`` runs it) gives the step time once the data
   loader's prefetched batches are used up (so a data-bound run is not taken for a fast one), and the
   seconds a run spends outside its steps (start, model, data workers, first step);
2. train: ``python -m vdm_app train ... --steps S``, S the steps that fit the budget left, a checkpoint every
   ~60 s; if it runs past the budget its process group is stopped and its last checkpoint stands;
3. export: ``vdm_core.checkpoint.save_inference`` of that checkpoint to ``OUT/vdm-gpu-16.safetensors``, fp32
   where that fits the 16 MiB a returned file may have, else fp16.

Every step prints ``RESULT {json}`` (calibration, the training run with its exact command and loss curve,
the exported file); the training run's own lines are passed through as ``train| ...``. The defaults are the
run's (what ``vdm demo`` can afford on 2 CPU cores: base width 64, 5.6 M parameters, docs/benchmarks.md "GPU run");
``--dry-run`` in gpu_run.py passes a tiny network, batch and budget and ``--device cpu``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_run import wait_or_stop  # noqa: E402  (benchmarks/ is not a package)
from train_speed import time_training  # noqa: E402

from vdm_core import checkpoint  # noqa: E402

RETURN_LIMIT = 16 * 2 ** 20  # the largest file the run tool brings back
EXPORT_RESERVE_S = 15.0  # reading the checkpoint and writing the exported file, with margin
STEP_LINE = re.compile(r"step (\d+)/\d+ loss ([\d.]+)")


def emit(**record) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def train_flags(a, steps: int, every: int, out: Path) -> list[str]:
    """The ``vdm train`` flags of the run (recorded with the model)."""
    return ["--data", a.data, "--size", str(a.size), "--frames", str(a.frames), "--steps", str(steps),
            "--batch", str(a.batch), "--lr", str(a.lr), "--warmup", str(a.warmup), "--seed", "0",
            "--base-width", str(a.base_width), "--width-mults", *map(str, a.width_mults),
            "--precision", a.precision, "--workers", str(a.workers), "--device", a.device,
            "--checkpoint-every", str(every), "--log-every", str(a.log_every), "-o", str(out)]


def calibrate(a, work: Path) -> dict:
    """Median step time after the prefetched batches, and the seconds a run spends outside its steps."""
    skip = 2 * max(a.workers, 1) + 5  # DataLoader prefetch: 2 batches per worker are ready before step 1
    steps = skip + a.calibrate_steps
    spec = SimpleNamespace(base_width=a.base_width, width_mults=a.width_mults, data=a.data, size=a.size,
                           frames=a.frames, steps=steps, batch=a.batch, accumulate=1, device=a.device,
                           precision=a.precision, compile=False, workers=a.workers, threads=0)
    t0 = time.perf_counter()
    run = time_training(spec, 1, work)
    wall = time.perf_counter() - t0
    step = statistics.median(run["step_s"][skip:])
    return {"step_s": step, "overhead_s": wall - sum(run["step_s"]), "steps": steps, "skipped": skip,
            "wall_s": wall, "peak_mb": run["peak_mb"], "clips_per_s": a.batch / step}


def train(a, steps: int, every: int, work: Path, deadline: float) -> dict:
    """Run ``vdm train``, stopping it at ``deadline`` (monotonic seconds); returns what it did."""
    ckpt = work / "retrain.safetensors"
    flags = train_flags(a, steps, every, ckpt)
    proc = subprocess.Popen([sys.executable, "-m", "vdm_app", "train", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    curve = []

    def relay():
        for line in proc.stdout:
            print("train| " + line.rstrip(), flush=True)
            m = STEP_LINE.match(line)
            if m:
                curve.append([int(m[1]), float(m[2])])

    reader = threading.Thread(target=relay, daemon=True)
    t0 = time.monotonic()
    reader.start()
    # over budget: stopped; its last checkpoint (written atomically) stands
    rc, stopped = wait_or_stop(proc, max(1.0, deadline - time.monotonic()))
    reader.join(timeout=5)
    done = json.loads(checkpoint.read(ckpt)[0]["train_state"])["step"] if ckpt.exists() else 0
    return {"command": "vdm train " + " ".join(flags[:-1] + [ckpt.name]), "returncode": rc,
            "stopped_at_budget": stopped, "steps_planned": steps, "steps_done": done,
            "clips_seen": done * a.batch, "wall_s": time.monotonic() - t0, "loss_curve": curve, "path": str(ckpt)}


def export(src: Path, out_dir: Path) -> dict:
    """The inference weights of ``src`` as ``out_dir/vdm-gpu-16.safetensors``, fp32 if it fits, else fp16."""
    meta, tensors = checkpoint.read(src)
    values = sum(v.numel() for k, v in tensors.items() if not k.startswith(checkpoint.TRAIN_PREFIX))
    dtype = torch.float32 if 4 * values + 2 ** 20 <= RETURN_LIMIT else torch.float16
    dst = out_dir / "vdm-gpu-16.safetensors"
    checkpoint.save_inference(src, dst, dtype=dtype)
    return {"file": dst.name, "bytes": dst.stat().st_size, "dtype": str(dtype).replace("torch.", ""),
            "params_m": values / 1e6, "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
            "training": json.loads(meta["training"])}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, required=True, help="where the exported model goes ($OUT)")
    p.add_argument("--work", type=Path, required=True, help="scratch folder for the full checkpoint")
    p.add_argument("--budget", type=float, required=True, help="seconds for all three steps")
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", default="motion")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--base-width", type=int, default=64)
    p.add_argument("--width-mults", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--precision", default="auto")
    p.add_argument("--workers", type=int, default=min(14, max(1, (os.cpu_count() or 2) - 2)),
                   help="data workers (default: all cores but two, at most 14: the motion scenes are drawn on "
                        "the CPU)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--calibrate-steps", type=int, default=30, help="timed steps after the prefetched ones")
    a = p.parse_args(argv)
    deadline = time.monotonic() + a.budget
    a.work.mkdir(parents=True, exist_ok=True)
    a.out_dir.mkdir(parents=True, exist_ok=True)

    cal = calibrate(a, a.work)
    left = deadline - time.monotonic() - EXPORT_RESERVE_S - cal["overhead_s"]
    steps = int(0.95 * left / cal["step_s"])
    every = max(a.log_every, int(60 / cal["step_s"]) // a.log_every * a.log_every)
    emit(kind="retrain-calibration", **cal, steps_planned=steps, checkpoint_every=every, batch=a.batch,
         workers=a.workers, cpu_cores=os.cpu_count())
    if steps < a.warmup:
        emit(kind="retrain", error=f"only {steps} steps fit the budget (warm-up alone is {a.warmup}); not trained")
        return
    run = train(a, steps, every, a.work, deadline - EXPORT_RESERVE_S)
    emit(kind="retrain", **{k: v for k, v in run.items() if k != "path"})
    if run["steps_done"]:
        emit(kind="retrain-export", **export(Path(run["path"]), a.out_dir))


if __name__ == "__main__":
    main()
