"""The ``vdm`` command: ``vdm <subcommand> --help`` for each job."""
from __future__ import annotations

import argparse
import sys


def _train(args) -> None:
    from .train import TrainConfig, train
    from .unet3d import UNet3DConfig

    model = UNet3DConfig(base_width=args.base_width, width_mults=tuple(args.width_mults),
                         blocks_per_level=args.blocks_per_level)
    cfg = TrainConfig(out=args.out, data=args.data, size=args.size, frames=args.frames, steps=args.steps,
                      batch=args.batch, lr=args.lr, seed=args.seed, checkpoint_every=args.checkpoint_every,
                      sample_every=args.sample_every, stride=args.stride, model=model, resume=args.resume,
                      device=args.device, threads=args.threads)
    train(cfg)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on moving sprites or a folder of clips",
                       description="Train a VDM (v-loss) and write a safetensors checkpoint. Defaults fit a "
                                   "2-core CPU (16 frames of 16x16); raise --size/--base-width on a GPU.")
    p.add_argument("--data", default="sprites", help="'sprites' (procedural) or a folder of clips")
    p.add_argument("--size", type=int, default=16, help="training resolution (square), pixels")
    p.add_argument("--frames", type=int, default=16, help="frames per training clip")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps in total (resume counts on)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-width", type=int, default=32)
    p.add_argument("--width-mults", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--blocks-per-level", type=int, default=1)
    p.add_argument("--stride", type=int, default=1, help="frame stride when reading a folder of clips")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=0, help="write a sample GIF every N steps (0: never)")
    p.add_argument("--resume", help="checkpoint to resume from (written by an earlier `vdm train`)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--out", "-o", required=True, help="checkpoint to write (.safetensors)")
    p.set_defaults(func=_train)


def _info(args) -> None:
    from .video_io import probe

    info = probe(args.file)
    audio = (f"yes ({info.audio_channels} channel{'s' * (info.audio_channels != 1)}, {info.audio_sample_rate} Hz)"
             if info.has_audio else "no")
    print(f"{args.file}\n"
          f"  frames    {info.frames}\n"
          f"  fps       {info.fps} ({float(info.fps):.3f})\n"
          f"  size      {info.width}x{info.height} (width x height)\n"
          f"  duration  {info.duration:.3f} s\n"
          f"  audio     {audio}")


def add_info(sub) -> None:
    p = sub.add_parser("info", help="print a clip's frame count, frame rate, size, duration and audio",
                       description="Print what a clip holds, read from its metadata (frames are not decoded). "
                                   "FILE is .mp4, .webm, .gif, .mov, .mkv, .avi or a folder of PNG frames "
                                   "(assumed 24 fps).")
    p.add_argument("file", metavar="FILE", help="the clip to describe")
    p.set_defaults(func=_info)


def _run(args) -> int:
    from .runner import run_workflow

    written, failed = run_workflow(args.workflow, args.set, input_dir=args.input_dir, output_dir=args.output_dir,
                                   server=args.server, device=args.device)
    for path in written:
        print(path)
    if failed:
        print(f"{len(failed)} clip(s) failed: " + ", ".join(clip.name for clip, _ in failed), file=sys.stderr)
        return 1
    return 0


def add_run(sub) -> None:
    p = sub.add_parser("run", help="run an API-format ComfyUI workflow of VDM nodes without ComfyUI (or on a server)",
                       description="Run a workflow exported from ComfyUI in API format (Workflow → Export (API); the "
                                   "pack ships them in workflows/api/). VDM nodes and the core video nodes LoadVideo, "
                                   "GetVideoComponents, CreateVideo and SaveVideo run here without ComfyUI; with "
                                   "--server the workflow is queued on a running ComfyUI instead.")
    p.add_argument("workflow", metavar="WORKFLOW.json", help="API-format workflow")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change an input value before running (repeatable). NODE is a node id, title or class "
                        "type; a bare INPUT=VALUE sets it on every node that has it (e.g. --set steps=16, "
                        "--set VDM_LoadModel.model_name=my.safetensors). Values are JSON or plain text.")
    p.add_argument("--input-dir", metavar="DIR", help="run once per clip in DIR (the LoadVideo file replaced by each "
                   "clip); outputs are named after the clips and clips whose output exists are skipped")
    p.add_argument("--output-dir", "-o", metavar="DIR", default=".", help="where outputs go (default: .)")
    p.add_argument("--server", metavar="URL", help="queue on a running ComfyUI (e.g. http://127.0.0.1:8188) and "
                   "download its outputs, instead of running here")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available; not used with --server)")
    p.set_defaults(func=_run)


def _demo(args) -> int:
    from .runner import demo

    print(demo(args.out, steps=args.steps, device=args.device))
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="extend a sample sprite clip with the bundled model and write a video",
                       description="Run the pack's extend example (workflows/api/extend.json): a 16-frame sprite "
                                   "clip continued by 16 frames with the bundled model, written to OUT.")
    p.add_argument("-o", "--out", default="vdm-demo.mp4", metavar="OUT", help="video to write: .mp4, .webm or .gif "
                   "(default: vdm-demo.mp4)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the example's; fewer is faster and rougher)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.set_defaults(func=_demo)


# ---------------------------------------------------------------------------------------------- jobs


def _sampling_args(p) -> None:
    """Options every sampling command shares: model, sampler settings, windows/tiles, output."""
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="video to write: .mp4, .webm, .gif or a "
                   "folder of PNGs (a path without extension)")
    p.add_argument("--model", metavar="CKPT", help="checkpoint (.safetensors) (default: the bundled model)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps per window (default: 50)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 ancestral (default: 0)")
    p.add_argument("--guidance", type=float, metavar="W_R", help="reconstruction guidance weight w_r "
                   "(default: 16 for extend/interpolate, 4*factor^2 for upscaling)")
    p.add_argument("--method", default="both",
                   help="how known frames condition the sample: both (default, VDM: known frames replaced, "
                   "the rest guided), reconstruction (guidance only) or replacement (no guidance; not for upscaling)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; same seed, same clip on any device")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--window", type=int, help="frames per sampling window (default: the model's native count)")
    p.add_argument("--tile", type=int, help="spatial tile size; larger frames are sampled as blended tiles "
                   "(default: the model's native resolution)")


def _input_args(p) -> None:
    """The input clip of extend / interpolate / upscale, and how much of it to read."""
    p.add_argument("input", metavar="IN", help="clip to read: .mp4, .webm, .gif, .mov, .mkv, .avi or a PNG folder")
    p.add_argument("--start", type=int, default=0, help="first frame to read (default: 0)")
    p.add_argument("--max-frames", type=int, help="read at most this many frames (default: all)")
    p.add_argument("--short-side", type=int, metavar="PX", help="resize the input so its short side has PX "
                   "pixels (area average). Frames larger than the model's tile are sampled as tiles, which "
                   "is slow for large videos: shrink them here")


def _load_model(args):
    import torch

    from .checkpoint import load
    from .runner import _default_device

    device = torch.device(args.device) if args.device else _default_device()
    return load(args.model, device=device)


def _sample_job(args, model, label: str, shape, plan) -> dict:
    """The sampling keyword arguments of every job, with a progress bar that first says what runs."""
    from .runner import ProgressBar

    c, f, h, w = shape
    bar, started = ProgressBar(label), []

    def progress(done: int, total: int, preview) -> None:
        if not started:  # printed once sampling has begun, i.e. after every setting was accepted
            started.append(True)
            print(f"vdm {label}: {f} frames of {w}x{h} on {model.device}: {len(plan.windows)} window(s) x "
                  f"{plan.tiles} tile(s) x {args.steps} steps", file=sys.stderr)
        bar(done, total, preview)

    return dict(steps=args.steps, eta=args.eta, guidance_weight=args.guidance, method=args.method,
                seed=args.seed, callback=progress)


def _read_input(args):
    from .video_io import read_video

    return read_video(args.input, start=args.start, max_frames=args.max_frames, short_side=args.short_side)


def _write(args, frames, fps, audio=None) -> None:
    from .video_io import write_video

    print(write_video(args.out, frames, fps, audio))


def _size(text: str) -> tuple[int, int]:
    """``S`` (square) or ``WxH`` -> (height, width)."""
    try:
        w, _, h = text.lower().partition("x")
        w, h = int(w), int(h or w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be S or WxH in pixels (e.g. 16 or 32x24), got {text!r}") from None
    if min(w, h) < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 pixel, got {text!r}")
    return h, w


def _sample(args) -> None:
    from . import tasks

    model = _load_model(args)
    native = model.config
    frames = args.frames or native.frames
    h, w = args.size or (native.resolution, native.resolution)
    shape = (native.channels, frames, h, w)
    p = tasks.generate_plan(model, frames, h, w, channels=native.channels, context=args.context, window=args.window,
                           tile=args.tile)
    kw = _sample_job(args, model, "sample", shape, p)
    clip = tasks.generate(model, frames, h, w, context=args.context, window=args.window, tile=args.tile, **kw)
    _write(args, clip, args.fps)


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate a clip from noise",
                       description="Sample an unconditional clip. Longer than the model's window: the first "
                                   "window is sampled from noise and the rest extend it; larger than its "
                                   "resolution: blended tiles.")
    p.add_argument("--frames", type=int, help="frames to make (default: the model's native count)")
    p.add_argument("--size", type=_size, metavar="S|WxH", help="frame size (default: the model's resolution)")
    p.add_argument("--context", type=int, help="known frames per window past the first (default: half a window)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the written video (default: 8)")
    _sampling_args(p)
    p.set_defaults(func=_sample)


def _run_job(args, label: str, flag: str, minimum: int, **job) -> tuple:
    """Read the input, sample ``Job(clip, **job)``, return (input Clip, output frames); ``flag`` names the
    job's own option, which must be at least ``minimum``."""
    from . import tasks

    value = getattr(args, flag.lstrip("-").replace("-", "_"))
    if value < minimum:
        raise ValueError(f"{flag} must be at least {minimum}, got {value}")
    clip = _read_input(args)
    model = _load_model(args)
    j = tasks.Job(clip.frames, **job, window=args.window, tile=args.tile)
    kw = _sample_job(args, model, label, j.output_shape(), tasks.plan(model, j))
    return clip, tasks.run(model, j, **kw)


def _extend(args) -> None:
    clip, out = _run_job(args, "extend", "--frames", 1, new_frames=args.frames, context=args.context)
    _write(args, out, clip.fps, clip.audio)  # write_video pads the audio with silence to the new length


def add_extend(sub) -> None:
    p = sub.add_parser("extend", help="continue a clip by new frames",
                       description="Add frames after a clip, window by window, each window conditioned on the "
                                   "last frames made. The input frames are kept unchanged; audio is kept and "
                                   "padded with silence.")
    _input_args(p)
    p.add_argument("--frames", type=int, required=True, metavar="N", help="frames to add")
    p.add_argument("--context", type=int, help="known frames per window (default: half a window)")
    _sampling_args(p)
    p.set_defaults(func=_extend)


def _interpolate(args) -> None:
    clip, out = _run_job(args, "interpolate", "--multiplier", 2, multiplier=args.multiplier, overlap=args.overlap)
    _write(args, out, clip.fps * args.multiplier, clip.audio)


def add_interpolate(sub) -> None:
    p = sub.add_parser("interpolate", help="multiply a clip's frame rate by making frames between its frames",
                       description="Make K−1 new frames between every two input frames: (F−1)·K+1 frames at "
                                   "K times the frame rate, same duration. Input frames are kept unchanged; "
                                   "audio is kept. The model should have been trained at the output frame rate.")
    _input_args(p)
    p.add_argument("--multiplier", "-k", type=int, required=True, metavar="K", help="frame-rate multiplier (≥ 2)")
    p.add_argument("--overlap", type=int, help="frames shared by neighbouring windows (default: about half)")
    _sampling_args(p)
    p.set_defaults(func=_interpolate)


def _upscale(args) -> None:
    clip, out = _run_job(args, "upscale", "--factor", 2, factor=args.factor, overlap=args.overlap)
    _write(args, out, clip.fps, clip.audio)


def add_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="raise a clip's resolution by an integer factor",
                       description="Make every frame S times larger whose S×S block averages match the input "
                                   "(reconstruction guidance). Frames beyond the model's resolution are "
                                   "sampled as blended tiles; long clips as overlapping windows. Audio is kept.")
    _input_args(p)
    p.add_argument("--factor", "-s", type=int, required=True, metavar="S", help="scale factor (≥ 2)")
    p.add_argument("--overlap", type=int, help="frames shared by neighbouring windows (default: a quarter window)")
    _sampling_args(p)
    p.set_defaults(func=_upscale)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vdm", description="Video Diffusion Models: sample, extend, "
                                     "interpolate and upscale clips; train models.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_info(sub)
    add_run(sub)
    add_demo(sub)
    add_sample(sub)
    add_extend(sub)
    add_interpolate(sub)
    add_upscale(sub)
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:  # bad input (VideoError is a ValueError): message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
