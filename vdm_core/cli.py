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
                      sample_every=args.sample_every, stride=args.stride, model=model)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    train(cfg, resume=args.resume, device=args.device)


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vdm", description="Video Diffusion Models: sample, extend, "
                                     "interpolate and upscale clips; train models.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_info(sub)
    add_run(sub)
    add_demo(sub)
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
