"""Colour and contrast over a long extension: the first frames of each test clip extended window after window.

Each clip of the test sets (``quality.SETS``) gives its first half (the model's frames // 2, what every
later window knows too); ``tasks.extend`` adds ``--windows`` windows of new frames at the nodes' defaults (the model's native
window, context = half of it, auto guidance weight), once per method. For every window the table reports,
averaged over the clips, the mean colour drift (``metrics.window_drift``: the window's mean RGB minus the known
frames', its length over the three channels, in 1/255) and the contrast (standard deviation of the window
against the known frames'). A drift that grows window after window is what artists see as a long extension
turning brighter, darker or more saturated.

    python benchmarks/long_extension.py --clips 4 --windows 8 --steps 32 --methods both posterior --threads 1
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from vdm_core import checkpoint, tasks
from vdm_core.metrics import window_drift
from vdm_core.settings import DEFAULT_ITERATIONS, DEFAULT_STEPS, METHODS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import SETS  # noqa: E402  (benchmarks/ is not a package)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: bundled)")
    ap.add_argument("--clips", type=int, default=4, help="clips of each test set")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--methods", nargs="+", default=["both"], choices=METHODS)
    ap.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                    help="conjugate-gradient iterations of methods posterior and consistency")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = checkpoint.load(args.model)
    frames = model.config.frames
    known = frames // 2
    per_window = frames - known  # what every window adds at the default context (half the window)
    new = per_window * args.windows
    cmd = "python benchmarks/long_extension.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Command: `{cmd}`\n\nModel: {args.model or 'bundled'} ({frames} frames × {model.config.resolution}²). "
          f"{known} known frames, {new} new in {args.windows} windows, {args.steps} steps, η = 0, auto weight, "
          f"{args.iterations} iterations. "
          f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads.\n")
    cols = " | ".join(f"w{w + 1}" for w in range(args.windows))
    print(f"| method | set | measure | {cols} | time s |\n| --- | --- | --- | {' | '.join(['---'] * args.windows)} | --- |",
          flush=True)
    for method in args.methods:
        for name in args.sets:
            ts = SETS[name](args.clips, model.config.resolution, frames)
            t0 = time.perf_counter()
            outs = [tasks.extend(model, clip[:, :known], new, steps=args.steps, method=method, seed=i,
                                 iterations=args.iterations)
                    for i, clip in enumerate(ts.x)]
            dt = time.perf_counter() - t0
            colour, contrast = window_drift(torch.stack(outs), known, per_window)
            drift = colour.norm(dim=2).mean(0)
            for measure, values in (("colour drift /255", drift), ("contrast", contrast.mean(0))):
                print(f"| {method} | {name} | {measure} | " + " | ".join(f"{v:.2f}" for v in values.tolist()) +
                      f" | {dt:.0f} |", flush=True)


if __name__ == "__main__":
    main()
