"""The Use ComfyUI Model node in the real ComfyUI, driven by a direct loop (no job nodes): ComfyUI's own
loaders → VDM_FromComfyModel → ``sigma_model.run(lambda: vdm_core.sampling.sample(...), shape, angles)``
under ``torch.inference_mode()`` as a node runs, with

* a latent observation (the first 1 + 4·m frames encoded once by the causal Wan VAE, ``space.encode``), and
* a pixel observation (every other frame, through ``space.decode`` inside the session),

at several guidance weights w_r (reconstruction guidance only, so the observation error shows its effect),
measuring time per step (w_r 0 = unguided) and peak RSS; then per-block checkpointing (same result, less
memory), cancel (ComfyUI's interrupt at the next model call; the session is restored and the next run
works), what is left afterwards, and LTX-Video (functionalized forward) from an all-in-one checkpoint.

usage: COMFY_HOME=/work/comfy/h033 $COMFY_HOME/venv/bin/python tests/harness/direct_loop.py MODELS_DIR
           [--frames 9 17] [--sizes 32 64] [--steps 6] [--weights 0 1 4 16] [--no-ltxv] [--json OUT]
(MODELS_DIR as written by make_models.py.)
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import comfyenv
import torch

import comfy.model_management as mm
import nodes as comfy_nodes


def pack_modules(node_classes):
    """The pack's vdm_core modules as the node imported them (same classes the session uses)."""
    root = next(k for k in sys.modules if k.endswith(".nodes.comfy_model")).rsplit(".nodes.", 1)[0]
    return (sys.modules[f"{root}.vdm_core.sampling"], sys.modules[f"{root}.vdm_core.guidance"],
            sys.modules[f"{root}.vdm_core.data"])


def sample(sm, noise, angles, obs, w, sampling):
    """One window through the session, as a node runs it; returns (x, per-step seconds, peak RSS added MB)."""
    marks = []

    def fn():
        marks.append(time.perf_counter())
        settings = sampling.SamplerSettings(method="reconstruction", guidance_weight=w)
        return sampling.sample(sm, noise, angles, settings, observation=obs, clip=False,
                               callback=lambda i, n, x: marks.append(time.perf_counter()))

    with comfyenv.PeakRSS() as mem, torch.inference_mode():
        x = sm.run(fn, noise.shape, angles)
    steps = [b - a for a, b in zip(marks, marks[1:])]
    return x, steps, mem.added


def leftovers(vdm) -> dict:
    """What of ours is still attached after a run (all should be empty / False)."""
    sm, dm = vdm.network, vdm.handle.model.diffusion_model
    wrapped = ["diffusion_model"] if "forward" in dm.__dict__ else []
    session = sys.modules[type(sm._session).__module__]
    wrapped += [f"block {i}" for i, b in enumerate(session.block_modules(dm)) if "forward" in b.__dict__]
    return {"wrapped": wrapped, "denoise_set": sm.denoise is not None, "session_active": sm._session.active,
            "grad_params": sum(p.requires_grad for p in vdm.handle.model.parameters()),
            "in_training": getattr(mm, "in_training", None),
            "loaded": [type(m.model.model).__name__ for m in mm.current_loaded_models]}


def wan_checks(args, node, mods, report):
    sampling, guidance, data = mods
    with torch.inference_mode():
        (mp,) = comfy_nodes.UNETLoader().load_unet("vdm_test_wan21_tiny.safetensors", "default")
        (vae,) = comfy_nodes.VAELoader().load_vae("vdm_test_wan21_vae.safetensors")
        vdm = node.execute(model=mp, vae=vae, cfg=1.0, checkpointing=False).args[0]
        vdm_ckpt = node.execute(model=mp, vae=vae, cfg=1.0, checkpointing=True).args[0]
    sm, space = vdm.network, vdm.network.space
    report["wan"] = {"space": dict(channels=space.channels, time=space.time, scale=space.scale, causal=space.causal),
                     "frames": sm.config.frames, "device": str(sm.device), "runs": []}
    print(f"Wan 2.1 tiny: latent space {report['wan']['space']}, native window {sm.config.frames} latents")
    angles = sm.angles(args.steps)
    print("  angle grid (simple, shift 8):", [round(p, 4) for p in angles])
    for frames in args.frames:
        for size in args.sizes:
            clip = data.sprite_clip(frames, size=size, frames=frames)[None]  # [1, 3, F, H, W] in [-1, 1]
            t = space.latent_frames(frames)
            shape = (1, space.channels, t, size // space.scale, size // space.scale)
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(frames + size))
            m = (frames - 1) // space.time // 2  # latent mode: the first 1 + 4·m frames known
            y_lat = space.encode(clip[:, :, :1 + space.time * m])
            obs_lat = guidance.select_frames(y_lat, tuple(range(m + 1)), t)
            idx = list(range(0, frames, 2))  # pixel mode: every other frame known
            y_px = clip[:, :, idx]
            obs_px = guidance.Observation(y=y_px, operator=lambda x, idx=idx: space.decode(x)[:, :, idx],
                                          num_frames=t)
            for mode, obs in (("latent", obs_lat), ("pixel", obs_px)):
                for w in args.weights:
                    x, steps, added = sample(sm, noise, angles, obs, w, sampling)
                    out = space.decode_final(x)
                    if mode == "latent":
                        err = float((x[:, :, :m + 1] - y_lat).abs().mean())
                        px = float((out[:, :, :1 + space.time * m] - clip[:, :, :1 + space.time * m]).abs().mean())
                    else:
                        err = px = float((out[:, :, idx] - y_px).abs().mean())
                    run = dict(frames=frames, size=size, mode=mode, w=w, latent=list(shape), out=list(out.shape),
                               step_ms=1000 * statistics.median(steps), rss_added_mb=added, obs_err=err,
                               known_px_err=px)
                    report["wan"]["runs"].append(run)
                    print(f"  {frames:2d}×{size}² {mode:6s} w_r {w:5.1f}: {run['step_ms']:8.1f} ms/step, "
                          f"+{added:6.1f} MB peak, obs err {err:.4f} (known pixels {px:.4f}), out {tuple(out.shape)}",
                          flush=True)
    # checkpointing: same guided result, less memory (pixel mode, the largest size)
    frames, size = max(args.frames), max(args.sizes)
    clip = data.sprite_clip(1, size=size, frames=frames)[None]
    t = space.latent_frames(frames)
    shape = (1, space.channels, t, size // space.scale, size // space.scale)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    idx = list(range(0, frames, 2))
    obs = guidance.Observation(y=clip[:, :, idx], operator=lambda x: space.decode(x)[:, :, idx], num_frames=t)
    a, sa, ma = sample(sm, noise, angles, obs, 4.0, sampling)
    b, sb, mb = sample(vdm_ckpt.network, noise, angles, obs, 4.0, sampling)
    report["wan"]["checkpointing"] = dict(max_diff=float((a - b).abs().max()), step_ms=[1000 * statistics.median(sa),
                                          1000 * statistics.median(sb)], rss_added_mb=[ma, mb])
    print(f"  checkpointing ({frames}×{size}², pixel, w_r 4, {args.steps} steps): max |diff| {report['wan']['checkpointing']['max_diff']:.2e};"
          f" {1000 * statistics.median(sa):.0f} → {1000 * statistics.median(sb):.0f} ms/step; peak +{ma:.0f} → +{mb:.0f} MB")
    # cancel: ComfyUI's interrupt flag, checked before every model call (as the pack's job nodes do)
    calls = []

    def cancelling(z, phi):
        calls.append(1)
        if len(calls) == 3:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()
        return sm(z, phi)

    cancelling.config, cancelling.device = sm.config, sm.device
    try:
        with torch.inference_mode():
            sm.run(lambda: sampling.sample(cancelling, noise, angles, sampling.SamplerSettings(method="both", guidance_weight=4.0),
                                           observation=obs, clip=False), noise.shape, angles)
        cancelled = "not raised"
    except BaseException as e:  # noqa: BLE001 — 0.33's InterruptProcessingException is a BaseException
        cancelled = type(e).__name__
        if not isinstance(e, mm.InterruptProcessingException):
            raise
    after_cancel = leftovers(vdm)
    x, steps, _ = sample(sm, noise, angles, obs, 4.0, sampling)
    report["wan"]["cancel"] = dict(raised=cancelled, model_calls=len(calls), after=after_cancel,
                                   next_run_ok=bool(torch.isfinite(x).all()), bases=[c.__name__ for c in
                                                                                    mm.InterruptProcessingException.__mro__[1:]])
    print(f"  cancel: {cancelled} after {len(calls)} model calls (bases {report['wan']['cancel']['bases']}); "
          f"restored {after_cancel}; next run finite: {report['wan']['cancel']['next_run_ok']}")
    report["wan"]["after"] = leftovers(vdm)
    report["wan"]["session_stats"] = dict(sm._session.stats)
    print(f"  after all runs: {report['wan']['after']}; session {sm._session.stats}")


def ltxv_checks(args, node, mods, report):
    sampling, guidance, data = mods
    with torch.inference_mode():
        mp, _clip, vae = comfy_nodes.CheckpointLoaderSimple().load_checkpoint("vdm_test_ltxv_tiny_aio.safetensors")[:3]
        vdm = node.execute(model=mp, vae=vae, cfg=1.0, checkpointing=False).args[0]
        vdm_ckpt = node.execute(model=mp, vae=vae, cfg=1.0, checkpointing=True).args[0]
    sm, space = vdm.network, vdm.network.space
    report["ltxv"] = {"space": dict(channels=space.channels, time=space.time, scale=space.scale, causal=space.causal),
                      "frames": sm.config.frames, "runs": []}
    print(f"LTX-Video tiny: latent space {report['ltxv']['space']}, native window {sm.config.frames} latents, "
          f"functionalized: {sm._session.functionalize}")
    angles = sm.angles(4)
    frames, size = 17, 64
    clip = data.sprite_clip(3, size=size, frames=frames)[None]
    t = space.latent_frames(frames)
    shape = (1, space.channels, t, size // space.scale, size // space.scale)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    y_lat = space.encode(clip[:, :, :1 + space.time])
    obs_lat = guidance.select_frames(y_lat, (0, 1), t)
    idx = list(range(0, frames, 4))
    obs_px = guidance.Observation(y=clip[:, :, idx], operator=lambda x: space.decode(x)[:, :, idx], num_frames=t)
    for mode, obs in (("latent", obs_lat), ("pixel", obs_px)):
        for w in (0.0, 4.0):
            for label, model in (("", sm), (" checkpointed", vdm_ckpt.network)):
                if label and w == 0:
                    continue
                x, steps, added = sample(model, noise, angles, obs, w, sampling)
                err = float((x[:, :, :2] - y_lat).abs().mean()) if mode == "latent" else \
                    float((space.decode_final(x)[:, :, idx] - clip[:, :, idx]).abs().mean())
                run = dict(mode=mode + label, w=w, step_ms=1000 * statistics.median(steps), rss_added_mb=added,
                           obs_err=err, finite=bool(torch.isfinite(x).all()))
                report["ltxv"]["runs"].append(run)
                print(f"  {frames}×{size}² {mode + label:19s} w_r {w:4.1f}: {run['step_ms']:7.1f} ms/step, "
                      f"+{added:5.1f} MB, obs err {err:.4f}", flush=True)
    report["ltxv"]["after"] = leftovers(vdm)
    print(f"  after: {report['ltxv']['after']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models_dir")
    ap.add_argument("--frames", type=int, nargs="+", default=[9, 17])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 4.0, 16.0])
    ap.add_argument("--no-ltxv", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    comfyenv.use_models(args.models_dir)
    node = comfyenv.load_pack()["VDM_FromComfyModel"]
    mods = pack_modules(node)
    report = {"comfyui": comfyenv.version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"ComfyUI {report['comfyui']}, torch {report['torch']}, {report['threads']} thread")
    t = time.time()
    wan_checks(args, node, mods, report)
    if not args.no_ltxv:
        ltxv_checks(args, node, mods, report)
    report["seconds"], report["peak_rss_mb"] = time.time() - t, comfyenv.peak_rss_mb()
    print(f"done in {report['seconds']:.0f} s, process peak RSS {report['peak_rss_mb']:.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
