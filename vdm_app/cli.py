"""The ``vdm`` command (also ``python -m vdm_app``): ``vdm <subcommand> --help`` for each.

The job commands are the nodes on the command line: their flags are built from the node spec
(``vdm_app.spec``: same names, defaults, ranges and help as the ComfyUI widgets) and they run the same job
functions (``vdm_app.node_functions``) through ``node_functions.run_node``. ``vdm train``'s flags are built from the fields of
``vdm_core.train.TrainConfig`` and its network config. Every input is checked, and the output path too,
before any compute is spent; an error a user can cause is one line naming the input and what to do.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from . import spec

SHORT = {"--multiplier": "-k", "--factor": "-s"}
"""Short aliases of spec flags."""
CLI_MODEL_HINT = ("give --model the path of a .safetensors checkpoint written by vdm train, or leave --model out "
                  "for the bundled model")


# ---------------------------------------------------------------------------------------------- flags from the spec


def _number(kind):
    """argparse type of a spec INT/FLOAT (range and finiteness are checked by the spec afterwards);
    ``auto`` is taken for the guidance weight."""
    def parse(text: str):
        if kind is float and text.strip().lower() == "auto":
            return spec.AUTO_WEIGHT
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def _help(inp: spec.Input) -> str:
    if inp.name == "model_name":
        return "checkpoint (.safetensors written by `vdm train`; default: the bundled model)"
    default = "auto" if inp.name == "guidance_weight" else inp.default
    return f"{inp.tooltip} (default: {default})"


def add_spec_flags(p: argparse.ArgumentParser, node_id: str, skip=()) -> None:
    """One flag per command-line input of node ``node_id`` (``spec.flag_inputs``), defaults from the spec."""
    for inp in spec.flag_inputs(node_id):
        if inp.name in skip:
            continue
        names = [inp.flag] + ([SHORT[inp.flag]] if inp.flag in SHORT else [])
        kw = dict(dest=f"{node_id}.{inp.name}", default=inp.default, help=_help(inp))
        if inp.type == "COMBO" and not inp.dynamic:
            kw["choices"] = inp.options
        elif inp.type in ("INT", "FLOAT"):
            kw["type"] = _number(int if inp.type == "INT" else float)
            kw["metavar"] = "W_R|auto" if inp.name == "guidance_weight" else inp.name.upper()
        else:
            kw["metavar"] = "CKPT" if inp.name == "model_name" else inp.name.upper()
        p.add_argument(*names, **kw)


def spec_values(args, node_id: str) -> dict:
    """The values of node ``node_id``'s flags, checked against its spec (``spec.InputError`` if not)."""
    prefix = node_id + "."
    values = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    node, out = spec.NODES[node_id], {}
    for name, value in values.items():
        inp = node.input(name)
        try:
            out[name] = spec.check_value(node, inp, value)
        except spec.InputError as e:
            raise spec.InputError("", inp.flag, e.reason) from None
    return out


# ---------------------------------------------------------------------------------------------- jobs


def _device(args):
    import torch

    from .executor import default_device

    return torch.device(args.device) if args.device else default_device()


def _sampling_args(p, job_node: str | None) -> None:
    """Model, sampler settings and the job's own settings, all from the spec; output and device."""
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="video to write: .mp4, .webm, .gif or a "
                   "folder of PNGs (a path without extension)")
    add_spec_flags(p, "VDM_LoadModel")
    add_spec_flags(p, "VDM_SampleDDIMv", skip=("length", "width", "height") if job_node else ())
    if job_node:
        add_spec_flags(p, job_node)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _input_args(p) -> None:
    """The input clip of extend / interpolate / upscale, and how much of it to read."""
    p.add_argument("input", metavar="IN", help="clip to read: .mp4, .webm, .gif, .mov, .mkv, .avi or a PNG folder")
    p.add_argument("--start", type=int, default=0, help="first frame to read (default: 0)")
    p.add_argument("--max-frames", type=int, help="read at most this many frames (default: all)")
    p.add_argument("--short-side", type=int, metavar="PX", help="resize the input so its short side has PX "
                   "pixels (area average). Frames larger than the model's tile are sampled as tiles, which "
                   "is slow for large videos: shrink them here")


def _run_job(args, label: str, job_node: str | None) -> None:
    """Check everything, read the input, load the model, sample the job (or a new clip), write the output."""
    from . import clips, models, node_functions
    from .executor import model_path
    from .lib import ProgressBar, video_write

    load, sample = spec_values(args, "VDM_LoadModel"), spec_values(args, "VDM_SampleDDIMv")
    settings = spec_values(args, job_node) if job_node else {}
    video_write.output_target(args.out)  # refuse a bad output path before any compute
    device = _device(args)
    if load["model_name"] != spec.BUNDLED_NAME:
        model_path(load["model_name"], CLI_MODEL_HINT)
    if job_node:
        for name, minimum in (("start", 0), ("max_frames", 1), ("short_side", 1)):
            value = getattr(args, name)
            if value is not None and value < minimum:
                raise spec.InputError("", f"--{name.replace('_', '-')}", f"must be at least {minimum}, got {value}")
        images, fps, audio = clips.read_clip(args.input, start=args.start, max_frames=args.max_frames,
                                            short_side=args.short_side)
        (job,) = node_functions.run_node(job_node, {"frames": images, "fps": fps, "audio": audio, **settings})
    else:
        job = None
    (model,) = node_functions.run_node("VDM_LoadModel", load, resolve_path=lambda name: model_path(name, CLI_MODEL_HINT),
                                       device=device)
    images, fps, audio = node_functions.run_node("VDM_SampleDDIMv", {**sample, "model": model, "job": job},
                                                 progress=ProgressBar(f"vdm {label}"),
                                                 load_model_to_device=models.move_to(device))
    if job is None and args.fps is not None:
        fps = args.fps
    print(clips.write_clip(args.out, images, fps, audio))


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate a clip from noise",
                       description="Sample an unconditional clip. Longer than the model's window: the first "
                                   "window is sampled from noise and the rest extend it; larger than its "
                                   "resolution: blended tiles.")
    p.add_argument("--fps", type=_number(float), help=f"frame rate of the written video (default: {spec.DEFAULT_FPS:g})")
    _sampling_args(p, None)
    p.set_defaults(func=lambda a: _run_job(a, "sample", None))


def add_job(sub, name: str, node_id: str, help_text: str, description: str) -> None:
    p = sub.add_parser(name, help=help_text, description=description)
    _input_args(p)
    _sampling_args(p, node_id)
    p.set_defaults(func=lambda a: _run_job(a, name, node_id))


# ---------------------------------------------------------------------------------------------- train


def _flag_type(annotation):
    """(argparse keyword arguments) for a dataclass field's type: int, float, str, bool, tuple[int, ...],
    each optionally ``| None``."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (annotation,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"type": _number(args[0]) if args[0] in (int, float) else args[0], "nargs": "+"}
    if annotation in (int, float):
        return {"type": _number(annotation)}
    return {"type": str}


def _default(f: dataclasses.Field, defaults):
    """A field's default: from ``defaults`` (the enclosing field's default instance) if given, else its own;
    ``dataclasses.MISSING`` for a required field."""
    if defaults is not None:
        return getattr(defaults, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def add_dataclass_flags(p, cls, skip=(), dest_prefix: str = "", defaults=None) -> None:
    """One flag per field of dataclass ``cls`` (``--field-name``; help from ``field(metadata={"help": …})``);
    a nested dataclass field's fields get flags too, defaulting to the nested default's values. ``skip``:
    dotted field names without a flag (e.g. ``model.frames``, set by the training data)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dest_prefix + f.name in skip:
            continue
        kind, default = hints[f.name], _default(f, defaults)
        if dataclasses.is_dataclass(kind):
            add_dataclass_flags(p, kind, skip, f"{dest_prefix}{f.name}.", default)
            continue
        required = default is dataclasses.MISSING
        help_text = f.metadata.get("help", f.name.replace("_", " "))
        names = [f"--{f.name.replace('_', '-')}"] + (["-o"] if f.name == "out" else [])
        p.add_argument(*names, dest=dest_prefix + f.name, required=required, default=None if required else default,
                       help=help_text + ("" if required else f" (default: {default})"), **_flag_type(kind))


def config_from_args(cls, args, dest_prefix: str = ""):
    """``cls`` (a dataclass) from the parsed flags of :func:`add_dataclass_flags`."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = config_from_args(kind, args, f"{dest_prefix}{f.name}.")
        elif hasattr(args, dest_prefix + f.name):
            value = getattr(args, dest_prefix + f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _train(args) -> None:
    from .lib import train as training

    training.train(config_from_args(training.TrainConfig, args))


def add_train(sub, flags: bool = True) -> None:
    """``vdm train``; its flags (``TrainConfig``'s fields, which need torch) only when ``flags``."""
    p = sub.add_parser("train", help="train a model on moving sprites or a folder of clips (one process, or many "
                       "under torchrun)",
                       description="Train a VDM (v-loss) and write a safetensors checkpoint. Defaults fit a "
                                   "2-core CPU (16 frames of 16x16); raise --size/--base-width on a GPU. Every "
                                   "setting of vdm_core.train.TrainConfig is a flag. Under torchrun "
                                   "(torchrun --nproc-per-node N -m vdm_app train ...) it trains one model "
                                   "across N processes with the same global --batch.")
    if flags:
        from .lib import train as training

        add_dataclass_flags(p, training.TrainConfig, skip=("model.resolution", "model.frames", "model.channels"))
    p.set_defaults(func=_train)


# ---------------------------------------------------------------------------------------------- info, run, demo


def _info(args) -> None:
    from .lib import video_io

    info = video_io.probe(args.file)
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
    from .batch import run_workflow

    written, failed = run_workflow(args.workflow, args.set, input_dir=args.input_dir, output_dir=args.output_dir,
                                   servers=args.server, device=args.device)
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
    p.add_argument("--server", metavar="URL", action="append", default=[],
                   help="queue on a running ComfyUI (e.g. http://127.0.0.1:8188) and download its outputs, instead of "
                   "running here (needs websocket-client). Repeat it to share the clips of --input-dir among several "
                   "servers: each clip runs once; a clip whose server fails or dies is run on another")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available; not used with --server)")
    p.set_defaults(func=_run)


def example(name: str) -> Path:
    """The pack's API-format example workflow ``workflows/api/<name>.json``: beside this package in a clone,
    an editable install or a ComfyUI folder, or inside it (``vdm_app/examples``) when installed from a wheel."""
    here = Path(__file__).resolve().parent
    for path in (here.parent / "workflows" / "api" / f"{name}.json", here / "examples" / f"{name}.json"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"the example workflow {name}.json is missing from this install of comfyui-vdm; "
                            "reinstall it (pip install comfyui-vdm, or pip install -e . in a clone)")


def _demo(args) -> int:
    from .executor import accepts, run_prompt
    from .graph import apply_sets, load_prompt
    from .lib import video_write

    video_write.output_target(args.out)
    prompt = load_prompt(example("extend"))
    if args.steps is not None:
        prompt = apply_sets(prompt, [f"steps={int(args.steps)}"], accepts)
    (path,) = run_prompt(prompt, lambda nid, prefix, suffix: Path(args.out), device=args.device)
    print(path)
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


# ---------------------------------------------------------------------------------------------- main


def parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """The ``vdm`` command line; ``train_flags=False`` leaves out ``vdm train``'s flags (they import torch, which a
    help text or another command does not need)."""
    p = argparse.ArgumentParser(prog="vdm", description="Video Diffusion Models: sample, extend, interpolate and "
                                "upscale clips; train models.")
    sub = p.add_subparsers(dest="command", required=True)
    add_train(sub, train_flags)
    add_info(sub)
    add_run(sub)
    add_demo(sub)
    add_sample(sub)
    add_job(sub, "extend", "VDM_ExtendClip", "continue a clip by new frames",
            "Add frames after a clip, window by window, each window conditioned on the last frames made. The "
            "input frames are kept unchanged; audio is kept and padded with silence.")
    add_job(sub, "interpolate", "VDM_InterpolateFrames", "multiply a clip's frame rate by making frames between "
            "its frames", "Make K−1 new frames between every two input frames: (F−1)·K+1 frames at K times the "
            "frame rate, same duration. Input frames are kept unchanged; audio is kept. The model should have "
            "been trained at the output frame rate.")
    add_job(sub, "upscale", "VDM_UpscaleVideo", "raise a clip's resolution by an integer factor",
            "Make every frame S times larger whose S×S block averages match the input (reconstruction guidance). "
            "Frames beyond the model's resolution are sampled as blended tiles; long clips as overlapping "
            "windows. Audio is kept.")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(train_flags=bool(argv) and argv[0] == "train").parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, MemoryError) as e:  # every error a user can cause
        print(f"error: {e}", file=sys.stderr)
        return 2
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
