"""Markdown tables of the records benchmarks/gpu_run.py collects (``results.jsonl``), one table per kind of
measurement; a record with ``error`` is listed with it. Also a command, to remake the summary here from a
returned file:

    python benchmarks/gpu_summary.py results.jsonl > summary.md
"""
from __future__ import annotations

import json
import sys


def _f(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _cell(text: str) -> str:
    """One table cell: an error's first line (the whole message is in results.jsonl), no pipes."""
    text = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return text.replace("|", "/")[:200]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + [
        "| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]


def summary(records: list[dict]) -> str:
    by = lambda kind: [r for r in records if r.get("kind") == kind]  # noqa: E731
    out = ["# GPU run (benchmarks/gpu_run.py)", ""]
    start = by("start")
    if start:
        out += [f"Dry run: {start[0]['dry_run']}; CPU cores {start[0]['cpu_cores']}; "
                f"{start[0]['seconds_left']:.0f} s for the stages.", ""]
    out += ["## Stages", ""] + _table(["stage", "status", "budget s", "wall s"], [
        [r["stage"], r["status"], _f(r.get("budget_s"), ".0f"), _f(r.get("wall_s"), ".1f")] for r in by("stage")])
    for r in by("matmul"):
        out += ["", f"Matmul {r['n']}³ on {r['device']} (torch {r['torch']}): bf16 {r['bf16_tflops']:.1f} TFLOP/s, "
                f"fp32 {r['fp32_tflops']:.1f} TFLOP/s (cuDNN TF32 {r['cudnn_allow_tf32']}, matmul TF32 "
                f"{r['matmul_allow_tf32']})."]
    for r in by("skip"):
        out += ["", f"Skipped: {r['what']}: {r['reason']}."]
    unet = by("unet")
    if unet:
        out += ["", "## U-Net speed (item 1)", ""] + _table(
            ["network", "params M", "input", "precision", "compiled", "job", "GFLOP", "median ms", "min ms",
             "first s", "TFLOP/s", "% bf16 matmul", "peak MiB"],
            [[r["net"], f"{r['params_m']:.1f}", "×".join(map(str, r["input"])), r["precision"], str(r["compiled"]),
              r["job"], f"{r['gflop']:.3g}"] + ([r["error"]] + [""] * 5 if "error" in r else [
              f"{1e3 * r['median_s']:.1f}", f"{1e3 * r['min_s']:.1f}", f"{r['first_s']:.1f}", f"{r['tflops']:.3g}",
              f"{100 * r['share_bf16_matmul']:.0f}%", _f(r.get("peak_mb"), ".0f")]) for r in unet])
    train = by("train")
    if train:
        out += ["", "## `vdm train` speed (item 2)", ""] + _table(
            ["network", "clips", "batch", "precision", "step s (median)", "min", "clips/s", "peak MiB"],
            [[f"base {r['base_width']} × {r['width_mults']} ({r['params_m']:.1f} M)",
              f"{r['frames']}×{r['size']}² {r['data']}", str(r["batch"]), r["precision"],
              f"{r['step_s_median']:.4f}", f"{r['step_s_min']:.4f}", f"{r['clips_per_s']:.1f}",
              _f(r["peak_mb"], ".0f")] for r in train])
    wan = [r for r in records if r.get("stage") == "wan" and "mode" in r]
    if wan:
        out += ["", "## Guided steps of Wan 2.1 1.3B's configuration through Use ComfyUI Model (item 3)", ""] + _table(
            ["ComfyUI", "clip → latent", "mode", "checkpointing", "step s", "first step s", "max allocated MiB",
             "load s"],
            [[r["comfyui"], f"{r['frames']}×{r.get('width', '?')}×{r.get('height', '?')} → {r.get('latent', '')}",
              r["mode"], str(r["checkpointing"])] + ([r["error"], "", "", ""] if "error" in r else [
              f"{r['step_s']:.3f}", f"{r['first_step_s']:.3f}", _f(r.get("cuda_max_allocated_mb"), ".0f"),
              f"{r['load_s']:.1f}"]) for r in wan])
    for r in by("retrain-calibration"):
        out += ["", "## Retraining the bundled model (item 4)", "",
                f"Calibration: {r['step_s']:.4f} s/step at batch {r['batch']} ({r['clips_per_s']:.0f} clips/s, "
                f"{r['workers']} data workers, {r['overhead_s']:.1f} s outside the steps, peak "
                f"{_f(r['peak_mb'], '.0f')} MiB): {r['steps_planned']} steps planned, a checkpoint every "
                f"{r['checkpoint_every']}."]
    for r in by("retrain"):
        if "error" in r:
            out += ["", f"Not trained: {r['error']}"]
            continue
        curve = r["loss_curve"]
        out += ["", f"`{r['command']}`: {r['steps_done']} of {r['steps_planned']} steps ({r['clips_seen']:,} clips) "
                f"in {r['wall_s']:.0f} s, exit {r['returncode']}"
                f"{', stopped at the budget' if r['stopped_at_budget'] else ''}; loss "
                + ", ".join(f"{loss:.4f} (step {s})" for s, loss in curve[:: max(1, len(curve) // 8)] + curve[-1:])]
    for r in by("retrain-export"):
        out += ["", f"Exported `{r['file']}`: {r['bytes']:,} bytes, {r['dtype']}, {r['params_m']:.2f} M parameters, "
                f"sha256 {r['sha256']}."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(summary([json.loads(line) for line in f if line.strip()]), end="")
