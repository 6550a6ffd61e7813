"""The one prepared GPU run (docs/benchmarks.md "GPU run" says how to start it; benchmarks/gpu_run.sh
installs what it needs and starts this). Each stage runs in a fresh process that is stopped at the stage's
time budget; every measurement a stage prints (``RESULT {json}``, or a JSON line for the Wan harness) is
appended to ``OUT/results.jsonl`` at once, with the stage's name, and ``OUT/summary.md`` is rewritten after
every stage, so a run cut short still returns what it measured. Stages, most wanted first:

  retrain  benchmarks/gpu_retrain.py: a new bundled model from scratch on the motion mix, in the time it is
           given; its inference weights come back as OUT/vdm-gpu-16.safetensors (item 4)
  unet     benchmarks/speed_gpu.py: the U-Net at base width 128, 64x64, 16 frames, batch 8, fp32 and bf16,
           eager and compiled, against video-diffusion-pytorch's Unet3D (item 1)
  train    benchmarks/train_speed.py: `vdm train` at that size, one GPU: step time, clips/s, peak memory (item 2)
  wan      tests/harness/bench_comfy.py: Wan 2.1 1.3B's configuration, random weights, 33x480x832 bf16, through
           Use ComfyUI Model: unguided / latent- / pixel-guided steps with and without checkpointing (item 3)

``--dry-run``: the same stages and code at tiny sizes on the CPU (with their own budgets), to find here what
would fail there. What each stage was given (budget, command) and how it ended is a ``stage`` record.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_summary import summary  # noqa: E402  (benchmarks/ is not a package)

PY = sys.executable
BUDGET = "{budget}"


def wait_or_stop(proc: subprocess.Popen, budget: float) -> tuple[int, bool]:
    """``(returncode, stopped)``: wait up to ``budget`` seconds for ``proc`` (started with
    ``start_new_session=True``); past it, SIGTERM its process group, and SIGKILL after 10 s more."""
    try:
        return proc.wait(timeout=budget), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=10), True
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(), True


def stages(out: Path, work: Path, dry: bool) -> list[tuple[str, float, list[str], dict]]:
    """``(name, budget s, argv, extra environment)`` of each stage, in order; tiny sizes when ``dry``.
    ``BUDGET`` in an argv stands for the seconds the stage is given, less 10 for its own ending."""
    if dry:
        retrain = ["--device", "cpu", "--size", "8", "--frames", "4", "--base-width", "8", "--width-mults", "1",
                   "2", "--batch", "4", "--workers", "1", "--warmup", "5", "--log-every", "5",
                   "--calibrate-steps", "5"]
        unet = ["--device", "cpu", "--batch", "1", "--frames", "4", "--size", "16", "--base-width", "16",
                "--width-mults", "1", "2", "--runs", "2", "--matmul", "256"]
        train = ["--device", "cpu", "--size", "8", "--frames", "4", "--base-width", "8", "--width-mults", "1", "2",
                 "--batch", "2", "--steps", "6", "--skip", "2"]
        wan = ["--frames", "5", "--width", "32", "--height", "32", "--device", "cpu"]
        budgets = {"retrain": 150, "unet": 300, "train": 150, "wan": 420}
    else:
        retrain, unet = [], []
        train = ["--device", "cuda", "--precision", "bf16", "--size", "64", "--frames", "16", "--base-width",
                 "128", "--width-mults", "1", "2", "2", "--batch", "8", "--steps", "25", "--skip", "5"]
        wan = ["--frames", "33", "--width", "832", "--height", "480", "--device", "cuda"]
        budgets = {"retrain": 300, "unet": 120, "train": 40, "wan": 95}
    bench = ROOT / "benchmarks"
    comfy = {"COMFY_HOME": str(work / "comfyhome")}
    return [
        ("retrain", budgets["retrain"], [PY, str(bench / "gpu_retrain.py"), "--out-dir", str(out), "--work",
                                         str(work / "retrain"), "--budget", BUDGET, *retrain], {}),
        ("unet", budgets["unet"], [PY, str(bench / "speed_gpu.py"), *unet], {}),
        ("train", budgets["train"], [PY, str(bench / "train_speed.py"), "--procs", "1", "--loader-workers",
                                     "--json", *train], {}),
        ("wan", budgets["wan"], [PY, str(ROOT / "tests" / "harness" / "bench_comfy.py"), "one", "--model", "wan1.3b",
                                 "--modes", "none", "latent", "pixel", "--steps", "2", "--dtype", "bf16", *wan], comfy),
    ]


class Results:
    """``results.jsonl`` (appended, flushed and synced record by record) and ``summary.md``."""

    def __init__(self, out: Path):
        self.path, self.summary = out / "results.jsonl", out / "summary.md"
        self.records: list[dict] = []

    def add(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self) -> None:
        tmp = self.summary.with_name(".summary.md.tmp")
        tmp.write_text(summary(self.records))
        os.replace(tmp, self.summary)


def run_stage(name: str, budget: float, argv: list[str], env: dict, results: Results) -> None:
    """Run one stage in its own process group, relaying its output and recording its results, and stop it
    (SIGTERM, then SIGKILL) at ``budget`` seconds."""
    t0 = time.monotonic()
    argv = [str(round(budget - 10)) if x == BUDGET else x for x in argv]
    print(f"=== stage {name}: budget {budget:.0f} s: {' '.join(argv)}", flush=True)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

    def relay():
        for line in proc.stdout:
            print(f"{name}| {line.rstrip()}", flush=True)
            text = line.strip()
            if text.startswith("RESULT "):
                text = text[7:]
            if text.startswith("{"):
                try:
                    results.add({"stage": name, **json.loads(text)})
                except ValueError:
                    pass  # a line that only looks like JSON

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    rc, stopped = wait_or_stop(proc, budget)
    status = "stopped at its budget" if stopped else "ok"
    reader.join(timeout=10)
    if status == "ok" and rc:
        status = f"failed (exit {rc})"
    results.add({"stage": name, "kind": "stage", "status": status, "returncode": rc, "budget_s": budget,
                 "wall_s": time.monotonic() - t0, "argv": argv})
    results.write_summary()
    print(f"=== stage {name}: {status} after {time.monotonic() - t0:.1f} s", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where results go (the run tool's $OUT)")
    p.add_argument("--work", type=Path, required=True, help="scratch folder (ComfyUI unpacked there, checkpoints)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--stages", nargs="+", choices=("retrain", "unet", "train", "wan"),
                   help="run only these (default: all, in order)")
    p.add_argument("--deadline", type=float, required=True,
                   help="Unix time by which every stage must have ended (gpu_run.sh: its start + its budget)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out)
    results.add({"stage": "run", "kind": "start", "dry_run": args.dry_run, "time": time.time(),
                 "seconds_left": args.deadline - time.time(), "cpu_cores": os.cpu_count()})
    for name, budget, cmd, env in stages(args.out, args.work, args.dry_run):
        if args.stages and name not in args.stages:
            continue
        left = args.deadline - time.time()
        if left < 15:
            results.add({"stage": name, "kind": "stage", "status": f"skipped: {left:.0f} s left"})
            continue
        run_stage(name, min(budget, left), cmd, env, results)
    results.write_summary()
    print((args.out / "summary.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
