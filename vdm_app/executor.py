"""``vdm run`` without ComfyUI: execute a prompt graph of this pack's nodes and ComfyUI's core video nodes.

Each VDM node runs the same node function its ComfyUI node calls (``node_functions.run_node``); the core video nodes the
examples use run through small adapters here:

* ``LoadVideo`` (``file``: a path; relative paths are taken from the current folder) → VIDEO
* ``GetVideoComponents`` (video) → images, audio, fps
* ``CreateVideo`` (images, fps, audio) → VIDEO
* ``SaveVideo`` (video, filename_prefix, format, codec) writes mp4 (h264) or webm (vp9). ComfyUI 0.33's
  nested encoder options (``format.codec.…``) are accepted and not applied.

Everything a user can get wrong is checked before the first node runs: node types and input names,
every value against the node spec (``spec.check_value``: type, range, finite numbers, choices), and
every output file the save nodes will write (``video_write.output_target``). Outputs are written
atomically. A single run names files the ComfyUI way, ``<output dir>/<filename_prefix>_00001_.mp4``.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from . import clips, models, node_functions, spec
from .graph import OUTPUT_NODES, WorkflowError, check_prompt, execution_order, is_link, title
from .lib import ProgressBar, video_write

SAVE_FORMATS = {"auto": ".mp4", "mp4": ".mp4", "webm": ".webm"}
SAVE_CODECS = {".mp4": ("auto", "h264"), ".webm": ("auto", "vp9")}
UI_ONLY = {"upload", "video-preview"}
"""Values of widgets the frontend adds to LoadVideo (upload button, player) and sends along; ComfyUI ignores them."""

Namer = Callable[[str, str, str], Path]
"""``save(node_id, filename_prefix, suffix) -> path`` of the file a save node writes."""


@dataclass
class Video:
    """The VIDEO the core adapters pass around: frames as an IMAGE ``[F, H, W, 3]``, fps, AUDIO or None."""

    images: Tensor
    fps: float
    audio: dict | None = None


def load_video(file: str) -> tuple[Video]:
    """LoadVideo: the whole clip (frames, frame rate, sound)."""
    path = Path(file)
    if not path.exists():
        raise FileNotFoundError(f"LoadVideo: {path} does not exist; give a clip with --set file=PATH, or "
                                "--input-dir FOLDER to run the workflow on every clip in a folder")
    return (Video(*clips.read_clip(path)),)


def get_video_components(video: Video) -> tuple:
    """GetVideoComponents: images, audio, fps (ComfyUI 0.33's bit depth and colour space outputs are not made)."""
    if not isinstance(video, Video):
        raise WorkflowError(f"GetVideoComponents: video must come from LoadVideo or CreateVideo, got {type(video).__name__}")
    return video.images, video.audio, video.fps


def create_video(images: Tensor, fps: float, audio: dict | None = None, bit_depth: int = 8) -> tuple[Video]:
    """CreateVideo: frames + frame rate (+ sound) → VIDEO (8-bit only headless)."""
    if int(bit_depth) != 8:
        raise WorkflowError(f"CreateVideo: vdm run writes 8-bit video; set bit_depth to 8 (got {bit_depth})")
    clips.image_to_clip(images, "CreateVideo images")  # checks the layout early
    return (Video(images, float(fps), audio),)


CORE_INPUTS = {
    "LoadVideo": {"file", "upload", "video-preview"},
    "GetVideoComponents": {"video"},
    "CreateVideo": {"images", "fps", "audio", "bit_depth"},
    "SaveVideo": {"video", "filename_prefix", "format", "codec"},
}
CORE_FUNCTIONS = {"LoadVideo": load_video, "GetVideoComponents": get_video_components, "CreateVideo": create_video}


def known_inputs(class_type: str) -> set[str] | None:
    """The input ids a node type accepts headless (None: the type cannot run headless)."""
    if class_type in CORE_INPUTS:
        return CORE_INPUTS[class_type]
    node = spec.NODES.get(class_type)
    if node is None or node.host_only:
        return None
    return {i.name for i in node.inputs}


def accepts(class_type: str, key: str) -> bool:
    """Whether a node of ``class_type`` has input ``key`` headless (``apply_sets``'s question)."""
    names = known_inputs(class_type)
    return names is not None and (key in names or (class_type == "SaveVideo" and key.startswith("format.")))


def check_nodes(prompt: dict, nids=None) -> None:
    """Every node in ``nids`` (default: all) is one vdm run can execute, with only inputs it knows, and every
    value given to a VDM node fits its spec."""
    for nid in nids if nids is not None else prompt:
        node = prompt[nid]
        ct = node["class_type"]
        names = known_inputs(ct)
        if names is None:
            runnable = ", ".join(sorted([*(n for n, s in spec.NODES.items() if not s.host_only), *CORE_INPUTS]))
            raise WorkflowError(f"{title(nid, node)}: vdm run cannot execute {ct} headless (it runs {runnable}); "
                                "run the workflow in ComfyUI or with --server URL")
        for key, value in node.get("inputs", {}).items():
            if not accepts(ct, key):
                raise WorkflowError(f"{title(nid, node)} has no input {key!r}; its inputs: {', '.join(sorted(names))}")
            if ct in spec.NODES and not is_link(value):
                inp = spec.NODES[ct].input(key)
                if not inp.widget:
                    raise WorkflowError(f"{title(nid, node)}: input {key!r} ({inp.type}) must be connected to a "
                                        f"node's output, not given the value {value!r}")
                try:
                    spec.check_value(spec.NODES[ct], inp, value)
                except spec.InputError as e:
                    raise WorkflowError(f"{title(nid, node)}: {e}") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


RUN_MODEL_HINT = (f"give the path of a .safetensors checkpoint written by vdm train (--set model_name=PATH), or "
                  f"'{spec.BUNDLED_NAME}'")


def model_path(name: str, how: str = RUN_MODEL_HINT) -> Path:
    """The checkpoint file a ``model_name`` names (any name but the bundled model's is a path); a FileNotFoundError
    saying what is wrong with it and ``how`` to give another (the front end's way)."""
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Load VDM: no file {str(path)!r} exists; {how}")
    if not path.is_file():
        raise FileNotFoundError(f"Load VDM: {str(path)!r} is a folder, not a checkpoint file; {how}")
    return path


def save_settings(nid: str, inputs: dict) -> tuple[str, str]:
    """(filename_prefix, file suffix) of a SaveVideo node, checked."""
    fmt, codec = inputs.get("format", "auto"), inputs.get("format.codec", inputs.get("codec", "auto"))
    if not isinstance(fmt, str) or fmt not in SAVE_FORMATS:
        raise WorkflowError(f"SaveVideo (node {nid}): format {fmt!r} cannot be written headless; use "
                            + ", ".join(SAVE_FORMATS))
    suffix = SAVE_FORMATS[fmt]
    if codec not in SAVE_CODECS[suffix]:
        raise WorkflowError(f"SaveVideo (node {nid}): codec {codec!r} cannot be written to {suffix} headless; use "
                            + " or ".join(SAVE_CODECS[suffix]))
    return str(inputs.get("filename_prefix", "ComfyUI")), suffix


def output_paths(prompt: dict, order: list[str], save: Namer) -> dict[str, Path]:
    """``{save node id: the file it will write}``, each checked as a video target (``video_write.output_target``)."""
    paths = {}
    for nid in order:
        node = prompt[nid]
        if node["class_type"] in OUTPUT_NODES:
            prefix, suffix = save_settings(nid, node.get("inputs", {}))
            path = save(nid, prefix, suffix)
            try:
                video_write.output_target(path)
            except ValueError as e:
                raise WorkflowError(f"SaveVideo (node {nid}): {e}") from None
            paths[nid] = path
    return paths


def run_prompt(prompt: dict, save: Namer, *, device=None, log=None) -> list[Path]:
    """Execute ``prompt`` headless, after checking all of it; ``save`` names each output file. Returns the
    written paths."""
    check_prompt(prompt)
    order = execution_order(prompt)
    check_nodes(prompt, order)
    paths = output_paths(prompt, order, save)
    device = torch.device(device) if device is not None else default_device()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    results: dict[str, tuple] = {}
    written: list[Path] = []
    for nid in order:
        node = prompt[nid]
        ct = node["class_type"]
        kwargs = {}
        for key, value in node.get("inputs", {}).items():
            if is_link(value):
                src, slot = str(value[0]), value[1]
                outs = results[src]
                if not 0 <= slot < len(outs):
                    raise WorkflowError(f"input {key!r} of {title(nid, node)} is linked to output {slot} of "
                                        f"{title(src, prompt[src])}, which has {len(outs)} output(s) headless")
                value = outs[slot]
            kwargs[key] = value
        started = time.time()
        try:
            if ct == "SaveVideo":
                written.append(_save_video(nid, paths[nid], kwargs.get("video")))
                results[nid] = ()
            elif ct in CORE_FUNCTIONS:
                results[nid] = tuple(CORE_FUNCTIONS[ct](**{k: v for k, v in kwargs.items() if k not in UI_ONLY}))
            else:
                hooks = {"VDM_LoadModel": {"resolve_path": model_path, "device": device},
                         "VDM_SampleDDIMv": {"progress": ProgressBar(title(nid, node)),
                                             "load_model_to_device": models.move_to(device)}}.get(ct, {})
                results[nid] = tuple(node_functions.run_node(ct, kwargs, **hooks))
        except TypeError as e:  # a missing required input of a core node
            raise WorkflowError(f"{title(nid, node)}: {e}") from None
        except spec.InputError as e:
            raise WorkflowError(f"{title(nid, node)}: {e}") from None
        log(f"{title(nid, node)} done in {time.time() - started:.1f} s")
    return written


def _save_video(nid: str, path: Path, video) -> Path:
    if not isinstance(video, Video):
        raise WorkflowError(f"SaveVideo (node {nid}): video must come from CreateVideo or LoadVideo")
    return clips.write_clip(path, video.images, video.fps, video.audio)


def numbered_name(output_dir) -> Namer:
    """ComfyUI's naming: ``<output_dir>/<prefix>_<00001>_<suffix>`` with the next free number; the prefix
    may hold subfolders but may not leave ``output_dir``."""
    root = Path(output_dir).resolve()

    def name(nid: str, prefix: str, suffix: str) -> Path:
        base = (root / prefix).resolve()
        if root != base and root not in base.parents:
            raise WorkflowError(f"SaveVideo (node {nid}): filename_prefix {prefix!r} points outside {root}")
        folder, stem = base.parent, base.name
        pattern = re.compile(re.escape(stem) + r"_(\d+)_\.")
        taken = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))] if folder.is_dir() else []
        return folder / f"{stem}_{max(taken, default=0) + 1:05d}_{suffix}"

    return name
