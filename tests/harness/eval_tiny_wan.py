"""Quality of the latent path: every job through the pack's nodes with the trained tiny Wan 2.1
(tests/harness/models/, written into a models folder by ``make_models.py --trained``), loaded by ComfyUI's
UNETLoader / VAELoader, against each job's baseline, on the pack's test sets, for each sampling method.

In one process, as ComfyUI runs nodes (``torch.inference_mode()``): Use ComfyUI Model (``positive``
unconnected: zero conditioning) → Extend Clip / Interpolate Frames / Upscale Video → Sample DDIM-v.
Test sets and baselines are benchmarks/quality.py's (``SETS``: v1 test split and
benchmarks/independent_scenes.py; repeat last frame, linear cross-fade, bicubic), clips of 17 frames at
32² (5 latent frames of 4²). Jobs: ``extend`` (the first 8 frames known: 5 as latents, 3 in pixels, 9
new), ``extend9`` (9 known, all as latents, 8 new), ``interp2`` / ``interp4`` (every 2nd / 4th frame known),
``upscale2`` (the 16² area average known). Scores on the frames the job makes: PSNR, SSIM, object position
error and ghosting (vdm_core/metrics.py); and the observation error, RMS in /255: for upscaling of
(area average − input), for extension and interpolation of (clip − the known frames) on the known frames —
of the sample as decoded, before the job restores what it knows (``LatentSpace.decode_final`` is wrapped
to keep it), and of the output (known frames copied in, block means projected onto the input's).

``--long W`` also extends the first 9 frames of each clip by W windows and reports the colour drift and
contrast of each window (``long_extension``; ``--jobs`` with no job runs only that). ``--generate N`` also samples N unconditional clips with ComfyUI's own KSampler (euler, simple, cfg 1, zero
conditioning) and with Sample DDIM-v without a job, and compares frame statistics with training clips;
``--png DIR`` writes frame strips of them.

usage: COMFY_HOME=/work/comfy/h033 $COMFY_HOME/venv/bin/python tests/harness/eval_tiny_wan.py MODELS_DIR
           [--clips 8] [--sets v1 independent] [--jobs extend extend9 interp2 interp4 upscale2]
           [--methods both reconstruction replacement] [--steps 32] [--weight -1] [--generate 8] [--long 8]
           [--png DIR]
           [--out table.md] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import comfyenv
import torch
import torch.nn.functional as F

import nodes as comfy_nodes

sys.path.insert(0, str(comfyenv.PACK))
sys.path.insert(0, str(comfyenv.PACK / "benchmarks"))
import quality  # noqa: E402  (benchmarks/quality.py: test sets, baselines)
from vdm_core import guidance  # noqa: E402
from vdm_core.metrics import psnr, ssim, window_drift  # noqa: E402
from vdm_core.motion import MotionMix  # noqa: E402

UNET, VAE = "vdm_test_wan21_trained.safetensors", "vdm_test_wan21_trained_vae.safetensors"
SIZE, FRAMES = 32, 17
JOBS = ("extend", "extend9", "interp2", "interp4", "upscale2")


def job_spec(name: str, x: torch.Tensor):
    """(node id, node widgets, input clip, scored frames, known frames, baseline, baseline name) of job
    ``name`` on true clips ``x`` ``[N, 3, F, H, W]``."""
    f = x.shape[2]
    if name in ("extend", "extend9"):
        known = f // 2 if name == "extend" else 9
        base = x[:, :, known - 1:known].expand(-1, -1, f, -1, -1).clone()
        base[:, :, :known] = x[:, :, :known]
        return ("VDM_ExtendClip", dict(new_frames=f - known, context=0, window=0, tile=0), x[:, :, :known],
                list(range(known, f)), list(range(known)), base, "repeat last frame")
    if name.startswith("interp"):
        k = int(name[len("interp"):])
        keys = list(range(0, f, k))
        base = torch.empty_like(x)
        for i in range(f):
            k0 = (i // k) * k
            k1 = min(k0 + k, keys[-1])
            w = 0.0 if k1 == k0 else (i - k0) / (k1 - k0)
            base[:, :, i] = (1 - w) * x[:, :, k0] + w * x[:, :, k1]
        return ("VDM_InterpolateFrames", dict(multiplier=k, window=0, overlap=0, tile=0), x[:, :, keys],
                [i for i in range(f) if i not in keys], keys, base, "linear cross-fade")
    if name.startswith("upscale"):
        _, _, base, base_name = quality.make_job(name, x)
        s = int(name[len("upscale"):])
        return ("VDM_UpscaleVideo", dict(factor=s, window=0, overlap=0, tile=0), guidance.area_downsample(x, s),
                list(range(f)), [], base, base_name)
    raise ValueError(name)


def obs_error(name: str, clip: torch.Tensor, x_in: torch.Tensor, known: list[int]) -> float:
    """RMS observation error of ``clip`` in /255 (see the module docstring)."""
    if name.startswith("upscale"):
        s = clip.shape[-1] // x_in.shape[-1]
        d = guidance.area_downsample(clip[None], s)[0] - x_in
    else:
        d = clip[:, known] - x_in
    return float((d / 2).pow(2).mean().sqrt() * 255)


def image(clip: torch.Tensor) -> torch.Tensor:
    return ((clip.float() + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0).contiguous()


def clip_of(images: torch.Tensor) -> torch.Tensor:
    return images.float().permute(3, 0, 1, 2) * 2 - 1


def load(pack, models_dir, unet, vae_name):
    comfyenv.use_models(models_dir)
    with torch.inference_mode():
        (mp,) = comfy_nodes.UNETLoader().load_unet(unet, "default")
        (vae,) = comfy_nodes.VAELoader().load_vae(vae_name)
        vdm = pack["VDM_FromComfyModel"].execute(model=mp, vae=vae, cfg=1.0, checkpointing=False).args[0]
    return mp, vae, vdm


def keep_decoded(vdm) -> dict:
    """Wrap the network's ``space.decode_final`` so the last decoded clip (before a job copies its known
    frames in) is kept in the returned dict under "x"."""
    kept, space = {}, vdm.network.space
    final = space.decode_final

    def decode_final(x):
        out = final(x)
        kept["x"] = out[0].detach().float().cpu()
        return out

    vdm.network.space = dataclasses.replace(space, decode_final=decode_final)
    return kept


def run_jobs(a, pack, vdm, kept, report):
    sets = [quality.SETS[name](a.clips, SIZE, FRAMES) for name in a.sets]
    lines = []
    summary = ["### summary: each method against the job's baseline (PSNR mean on the new frames)", "",
               "| job | set | method | PSNR − baseline | obs RMS /255, sample | obs RMS /255, output |",
               "| --- | --- | --- | --- | --- | --- |"]
    for job in a.jobs:
        rows = [f"### {job}", "", "| method | set | PSNR | SSIM | pos err px | ghosting | obs RMS /255, sample | "
                "obs RMS /255, output | s/clip |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for ts in sets:
            node_id, widgets, x_in, frames, known, base, base_name = job_spec(job, ts.x)
            errs = [ts.errors(base[i], i, frames) for i in range(len(base))]
            bo = [obs_error(job, base[i], x_in[i], known) for i in range(len(base))]
            b = dict(psnr=psnr(base[:, :, frames], ts.x[:, :, frames]).mean().item(),
                     ssim=ssim(base[:, :, frames], ts.x[:, :, frames]).mean().item(),
                     pos=nanmean([e[0] for e in errs]), ghost=nanmean([e[1] for e in errs]), obs=sum(bo) / len(bo),
                     obs_out=sum(bo) / len(bo))
            rows.append(row(base_name, ts.name, b, None))
            report["rows"].append(dict(job=job, set=ts.name, method=base_name, **b))
            print(rows[-1], flush=True)
            for method in a.methods:
                if method == "replacement" and job.startswith("upscale"):
                    continue  # replacement needs a frame selection
                outs, obs, obs_out, secs = [], [], [], []
                for i in range(len(ts.x)):
                    t0 = time.time()
                    try:
                        with torch.inference_mode():
                            (jb,) = pack[node_id].execute(frames=image(x_in[i]), fps=8.0, **widgets).args[:1]
                            images = pack["VDM_SampleDDIMv"].execute(
                                model=vdm, job=jb, length=0, width=0, height=0, steps=a.steps, eta=0.0,
                                guidance_weight=a.weight, method=method, seed=i).args[0]
                    except ValueError as e:  # e.g. replacement of frames observed in pixels
                        print(f"| {method} | {ts.name} | n/a: {e} |", flush=True)
                        rows.append(f"| {method} | {ts.name} | n/a (the node refuses: known frames observed in "
                                    "pixels, not a frame selection) | | | | | | |")
                        break
                    secs.append(time.time() - t0)
                    out = clip_of(images)
                    outs.append(out)
                    obs.append(obs_error(job, kept["x"], x_in[i], known))
                    obs_out.append(obs_error(job, out, x_in[i], known))
                if not outs:
                    continue
                out = torch.stack(outs)
                errs = [ts.errors(out[i], i, frames) for i in range(len(out))]
                m = dict(psnr=psnr(out[:, :, frames], ts.x[:, :, frames]).mean().item(),
                         ssim=ssim(out[:, :, frames], ts.x[:, :, frames]).mean().item(),
                         pos=nanmean([e[0] for e in errs]), ghost=nanmean([e[1] for e in errs]),
                         obs=sum(obs) / len(obs), obs_max=max(obs), obs_out=sum(obs_out) / len(obs_out),
                         obs_out_max=max(obs_out), seconds=sum(secs) / len(secs))
                rows.append(row(method, ts.name, m, m["seconds"]))
                report["rows"].append(dict(job=job, set=ts.name, method=method, **m))
                summary.append(f"| {job} | {ts.name} | {method} | {m['psnr'] - b['psnr']:+.2f} | {m['obs']:.2f} | "
                               f"{m['obs_out']:.2f} |")
                print(rows[-1], flush=True)
                if a.png:
                    strip(Path(a.png) / f"{job}_{ts.name}_{method}.png", [ts.x[0], out[0]])
        lines += rows + [""]
    return lines + summary


def long_extension(a, pack, vdm, report):
    """Colour over a long extension (benchmarks/long_extension.py's measure, ``metrics.window_drift``): the
    first 9 frames of each test clip (1 + 4·2: 3 latents, known exactly) extended by ``a.long`` windows of 17
    frames (5 latents) with 9 frames of context, so each window adds 8 frames (2 latents)."""
    known, per_window, window = 9, 8, 17
    lines = [f"### long extension: {a.long} windows", "",
             f"{known} known frames, {a.long} windows of {window} frames ({known} of context, {per_window} new "
             f"each), {a.steps} steps, auto weight; mean over {a.clips} clips per set.", "",
             f"| method | set | measure | {' | '.join(f'w{w + 1}' for w in range(a.long))} | s/clip |",
             f"| --- | --- | --- | {' | '.join(['---'] * a.long)} | --- |"]
    print("\n".join(lines), flush=True)
    for method in a.methods:
        for name in a.sets:
            ts = quality.SETS[name](a.clips, SIZE, FRAMES)
            outs, t0 = [], time.time()
            for i in range(len(ts.x)):
                with torch.inference_mode():
                    (jb,) = pack["VDM_ExtendClip"].execute(frames=image(ts.x[i, :, :known]), fps=8.0,
                                                          new_frames=per_window * a.long, context=known,
                                                          window=window, tile=0).args[:1]
                    images = pack["VDM_SampleDDIMv"].execute(
                        model=vdm, job=jb, length=0, width=0, height=0, steps=a.steps, eta=0.0,
                        guidance_weight=a.weight, method=method, seed=i).args[0]
                outs.append(clip_of(images))
            secs = (time.time() - t0) / len(ts.x)
            colour, contrast = window_drift(torch.stack(outs), known, per_window)
            drift, contrast = colour.norm(dim=2).mean(0).tolist(), contrast.mean(0).tolist()
            report.setdefault("long", []).append(dict(method=method, set=name, drift=drift, contrast=contrast,
                                                      seconds=secs))
            for measure, values in (("colour drift /255", drift), ("contrast", contrast)):
                lines.append(f"| {method} | {name} | {measure} | " + " | ".join(f"{v:.2f}" for v in values) +
                             f" | {secs:.1f} |")
                print(lines[-1], flush=True)
    return lines + [""]


def nanmean(v) -> float:
    v = [x for x in v if not math.isnan(x)]
    return sum(v) / len(v) if v else float("nan")


def row(method, set_name, m, secs) -> str:
    return (f"| {method} | {set_name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['pos']:.2f} | {m['ghost']:.3f} | "
            f"{m['obs']:.2f} | {m['obs_out']:.2f} | {'–' if secs is None else f'{secs:.1f}'} |")


def strip(path: Path, clips: list[torch.Tensor]) -> None:
    """A PNG: one row of frames per clip ``[3, F, H, W]`` in [-1, 1]."""
    from PIL import Image

    rows = [torch.cat(list(c.unbind(1)), dim=-1) for c in clips]  # [3, H, F·W]
    img = ((torch.cat(rows, dim=-2).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(path)


def clip_stats(x: torch.Tensor) -> dict:
    """Frame statistics of clips ``[N, 3, F, H, W]`` in [-1, 1], on [0, 1]: mean, spatial std per frame,
    mean |frame-to-frame difference|, and lag-1 correlation of the frame-to-frame changes."""
    x = (x.float() + 1) / 2
    d = x[:, :, 1:] - x[:, :, :-1]
    a, b = d[:, :, 1:].flatten(), d[:, :, :-1].flatten()
    return dict(mean=x.mean().item(), spatial_std=x.std(dim=(-1, -2)).mean().item(),
                frame_diff=d.abs().mean().item(),
                change_corr=float(torch.corrcoef(torch.stack([a, b]))[0, 1]))


def generate(a, pack, mp, vae, vdm, report):
    """Unconditional clips: ComfyUI's KSampler (+ VAEDecode) and the pack's Sample DDIM-v without a job."""
    zero = [[torch.zeros(1, 1, 4096), {}]]
    ks, ours = [], []
    for i in range(a.generate):
        with torch.inference_mode():
            latent = {"samples": torch.zeros(1, 16, (FRAMES - 1) // 4 + 1, SIZE // 8, SIZE // 8)}
            (lat,) = comfy_nodes.KSampler().sample(mp, i, a.steps, 1.0, "euler", "simple", zero, zero, latent)
            (img,) = comfy_nodes.VAEDecode().decode(vae, lat)
            ks.append(clip_of(img.reshape(-1, *img.shape[-3:])))
            images = pack["VDM_SampleDDIMv"].execute(model=vdm, length=FRAMES, width=SIZE, height=SIZE,
                                                     steps=a.steps, eta=0.0, guidance_weight=-1.0, method="both",
                                                     seed=i).args[0]
            ours.append(clip_of(images))
    ds = MotionMix(SIZE, FRAMES, seed=7, split="val")
    truth = torch.stack([ds[i] for i in range(max(64, a.generate))])
    stats = {"training data (motion mix, val split)": clip_stats(truth), "KSampler": clip_stats(torch.stack(ks)),
             "Sample DDIM-v": clip_stats(torch.stack(ours))}
    report["generate"] = stats
    lines = ["### unconditional clips", "", f"{a.generate} clips of {FRAMES}×{SIZE}², {a.steps} steps "
             "(KSampler: euler, simple, cfg 1, zero conditioning; Sample DDIM-v: η 0). Statistics on [0, 1].", "",
             "| source | mean | spatial std | mean abs frame diff | lag-1 corr of changes |",
             "| --- | --- | --- | --- | --- |"]
    for k, s in stats.items():
        lines.append(f"| {k} | {s['mean']:.3f} | {s['spatial_std']:.3f} | {s['frame_diff']:.4f} | "
                     f"{s['change_corr']:.3f} |")
    print("\n".join(lines), flush=True)
    if a.png:
        strip(Path(a.png) / "generate_ksampler.png", ks[:8])
        strip(Path(a.png) / "generate_ddimv.png", ours[:8])
        strip(Path(a.png) / "training_clips.png", list(truth[:8]))
    return lines + [""]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models_dir")
    ap.add_argument("--unet", default=UNET)
    ap.add_argument("--vae", default=VAE)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--sets", nargs="+", default=["v1", "independent"], choices=list(quality.SETS))
    ap.add_argument("--jobs", nargs="*", default=list(JOBS), choices=JOBS)
    ap.add_argument("--methods", nargs="+", default=["both", "reconstruction", "replacement"],
                    help="sampling methods (any the pack's Sample DDIM-v offers)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--weight", type=float, default=-1.0, help="guidance_weight (−1: auto)")
    ap.add_argument("--generate", type=int, default=0, help="also sample this many unconditional clips")
    ap.add_argument("--long", type=int, default=0, help="also extend the first 9 frames by this many windows")
    ap.add_argument("--png", help="write frame strips here")
    ap.add_argument("--out", help="write the tables to this Markdown file")
    ap.add_argument("--json")
    a = ap.parse_args()
    pack = comfyenv.load_pack()
    mp, vae, vdm = load(pack, a.models_dir, a.unet, a.vae)
    kept = keep_decoded(vdm)
    cmd = "tests/harness/eval_tiny_wan.py " + " ".join(sys.argv[1:])
    head = [f"Command: `COMFY_HOME={comfyenv.HOME} $COMFY_HOME/venv/bin/python {cmd}`", "",
            f"ComfyUI {comfyenv.version()}, torch {torch.__version__}, {platform.machine()}, "
            f"{torch.get_num_threads()} thread. Model: {a.unet} + {a.vae}; {a.clips} clips per set, "
            f"{FRAMES}×{SIZE}², {a.steps} steps, guidance_weight {a.weight:g} (−1 = auto), seed = clip index.", ""]
    print("\n".join(head), flush=True)
    report = {"comfyui": comfyenv.version(), "args": vars(a), "rows": []}
    t = time.time()
    lines = head + (generate(a, pack, mp, vae, vdm, report) if a.generate else [])
    if a.jobs:
        lines += run_jobs(a, pack, vdm, kept, report)
    if a.long:
        lines += long_extension(a, pack, vdm, report)
    report["seconds"] = time.time() - t
    print("\n".join(lines[len(head):]) if not a.out else "", flush=True)
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    print(f"done in {report['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
