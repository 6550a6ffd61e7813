"""``vdm run``: execute an API-format ComfyUI workflow of this pack's nodes without ComfyUI, or on a server.

A workflow in API format ("Export (API)" in ComfyUI) is ``{node_id: {"class_type": …, "inputs": {…}}}``;
an input is a literal value or a link ``[source node id, output index]``. Headless, each VDM node runs the
same function its ComfyUI node calls (:data:`vdm_core.workflow.NODE_FUNCTIONS`), and the core video nodes
the examples use run through small adapters here:

* ``LoadVideo`` (``file``: a path; relative paths are taken from the current folder) → VIDEO
* ``GetVideoComponents`` (video) → images, audio, fps
* ``CreateVideo`` (images, fps, audio) → VIDEO
* ``SaveVideo`` (video, filename_prefix, format, codec) writes mp4 (h264) or webm (vp9). ComfyUI 0.33's
  nested encoder options (``format.codec.…``) are accepted and not applied.

Only output nodes (``SaveVideo``) and what they depend on run, in dependency order, as in ComfyUI.
Outputs are written atomically (``video_io.write_video``). A single run names files the ComfyUI way,
``<output dir>/<filename_prefix>_00001_.mp4`` (the next free number). A batch over a folder of clips runs
one job per clip (the ``LoadVideo`` file replaced by the clip) and names the output after the clip,
``<output dir>/<clip stem>.mp4`` (``<clip stem>_<node id>.mp4`` with several save nodes); a clip whose
outputs all exist is skipped, so an interrupted batch resumes where it stopped.

With a server URL the same prompts are queued on a running ComfyUI (``POST /prompt``; clips are uploaded
to its input folder first), progress is followed over its websocket (a minimal stdlib client; if the
websocket cannot be opened, ``/history`` is polled instead) and the output files are downloaded with
``/view``.
"""
from __future__ import annotations

import base64
import inspect
import json
import os
import re
import secrets
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from . import video_io, workflow

OUTPUT_NODES = ("SaveVideo",)
SAVE_FORMATS = {"auto": ".mp4", "mp4": ".mp4", "webm": ".webm"}
SAVE_CODECS = {".mp4": ("auto", "h264"), ".webm": ("auto", "vp9")}
HOOKS = {"VDM_LoadModel": ("resolve_path", "device"), "VDM_SampleDDIMv": ("progress", "load_model_to_device")}
"""Keyword-only host hooks of the node functions that the runner supplies (never workflow inputs)."""


class WorkflowError(ValueError):
    """A workflow that cannot run: the message names the node, the input and what to change."""


# ---------------------------------------------------------------------------------------------- loading


def is_ui_format(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def load_prompt(path) -> dict:
    """The API-format prompt in ``path`` (also accepts ``{"prompt": {...}}``, the body of ``POST /prompt``).
    A UI-format file is refused with a message pointing at its API-format twin."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkflowError(f"{path} is not a readable JSON workflow: {e}") from None
    if is_ui_format(data):
        twin = path.parent / "api" / path.name
        hint = f"; this pack ships it as {twin}" if twin.is_file() else ""
        raise WorkflowError(f"{path} is a UI-format workflow (what the ComfyUI editor saves); vdm run needs the "
                            f"API format: in ComfyUI use Workflow → Export (API){hint}")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    check_prompt(data, str(path))
    return data


def check_prompt(prompt, name: str = "workflow") -> None:
    """Raise WorkflowError unless ``prompt`` is a non-empty API-format dict whose links point at existing nodes."""
    if not isinstance(prompt, dict) or not prompt:
        raise WorkflowError(f"{name} is not an API-format workflow (a JSON object of nodes with class_type)")
    for nid, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"{name}: node {nid!r} has no class_type; is this an API-format workflow?")
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{name}: node {nid} ({node['class_type']}) has inputs that are not an object")
        for key, value in node.get("inputs", {}).items():
            if _is_link(value) and str(value[0]) not in prompt:
                raise WorkflowError(f"{name}: input {key!r} of node {nid} ({node['class_type']}) is linked to "
                                    f"node {value[0]}, which is not in the workflow")


def _is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def _title(nid: str, node: dict) -> str:
    title = (node.get("_meta") or {}).get("title")
    return f"node {nid} ({node['class_type']}{', ' + repr(title) if title and title != node['class_type'] else ''})"


# ---------------------------------------------------------------------------------------------- node table


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
    clip = video_io.read_video(path)
    audio = None if clip.audio is None else {"waveform": clip.audio.waveform[None], "sample_rate": clip.audio.sample_rate}
    return (Video(workflow.clip_to_image(clip.frames), float(clip.fps), audio),)


def get_video_components(video: Video) -> tuple:
    """GetVideoComponents: images, audio, fps (ComfyUI 0.33's bit depth and colour space outputs are not made)."""
    if not isinstance(video, Video):
        raise WorkflowError(f"GetVideoComponents: video must come from LoadVideo or CreateVideo, got {type(video).__name__}")
    return video.images, video.audio, video.fps


def create_video(images: Tensor, fps: float, audio: dict | None = None, bit_depth: int = 8) -> tuple[Video]:
    """CreateVideo: frames + frame rate (+ sound) → VIDEO (8-bit only headless)."""
    if int(bit_depth) != 8:
        raise WorkflowError(f"CreateVideo: vdm run writes 8-bit video; set bit_depth to 8 (got {bit_depth})")
    workflow.image_to_clip(images, "CreateVideo images")  # checks the layout early
    return (Video(images, float(fps), audio),)


CORE_INPUTS = {
    "LoadVideo": {"file", "upload", "video-preview"},
    "GetVideoComponents": {"video"},
    "CreateVideo": {"images", "fps", "audio", "bit_depth"},
    "SaveVideo": {"video", "filename_prefix", "format", "codec"},
}
UI_ONLY = {"upload", "video-preview"}
"""Values of widgets the frontend adds to LoadVideo (upload button, player) and sends along; ComfyUI ignores them."""
CORE_FUNCTIONS = {"LoadVideo": load_video, "GetVideoComponents": get_video_components, "CreateVideo": create_video}


def known_inputs(class_type: str) -> set[str] | None:
    """The input ids a node type accepts headless (None: the type cannot run headless)."""
    if class_type in CORE_INPUTS:
        return CORE_INPUTS[class_type]
    fn = workflow.NODE_FUNCTIONS.get(class_type)
    if fn is None:
        return None
    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)}


def _accepts(class_type: str, key: str) -> bool:
    names = known_inputs(class_type)
    return names is not None and (key in names or (class_type == "SaveVideo" and key.startswith("format.")))


def check_nodes(prompt: dict, nids=None) -> None:
    """Every node in ``nids`` (default: all) is one vdm run can execute, with only inputs it knows."""
    for nid in nids if nids is not None else prompt:
        node = prompt[nid]
        ct = node["class_type"]
        names = known_inputs(ct)
        if names is None:
            supported = ", ".join(sorted([*workflow.NODE_FUNCTIONS, *CORE_INPUTS]))
            raise WorkflowError(f"{_title(nid, node)}: vdm run cannot execute {ct} headless (it runs {supported}); "
                                "run the workflow in ComfyUI or with --server URL")
        for key in node.get("inputs", {}):
            if not _accepts(ct, key):
                raise WorkflowError(f"{_title(nid, node)} has no input {key!r}; its inputs: {', '.join(sorted(names))}")


# ---------------------------------------------------------------------------------------------- --set


def parse_value(text: str):
    """``--set`` values are JSON where they parse (``2``, ``0.5``, ``true``, ``"x"``), else plain strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_sets(prompt: dict, assignments: list[str]) -> dict:
    """A copy of ``prompt`` with ``NODE.INPUT=VALUE`` assignments applied. NODE is a node id, its title or its
    class_type; a bare ``INPUT=VALUE`` sets that input on every node that has it. Linked inputs are refused."""
    prompt = json.loads(json.dumps(prompt))
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise WorkflowError(f"--set {item!r}: write NODE.INPUT=VALUE (NODE: id, title or class type) or INPUT=VALUE")
        value = parse_value(text)
        targets = []
        for nid, node in prompt.items():
            refs = {nid, node["class_type"], (node.get("_meta") or {}).get("title")}
            for ref in refs:
                if ref and key.startswith(ref + "."):
                    targets.append((nid, key[len(ref) + 1:]))
                    break
        if not targets:
            if "." in key and not any(_accepts(n["class_type"], key) for n in prompt.values()):
                ref = key.rsplit(".", 1)[0]
                raise WorkflowError(f"--set {item!r}: no node with id, title or class type {ref!r} (nodes: "
                                    + ", ".join(f"{n} {v['class_type']}" for n, v in prompt.items()) + ")")
            targets = [(nid, key) for nid, node in prompt.items() if _accepts(node["class_type"], key)]
            if not targets:
                raise WorkflowError(f"--set {item!r}: no node in the workflow has an input {key!r}")
        for nid, name in targets:
            node = prompt[nid]
            if not _accepts(node["class_type"], name):
                raise WorkflowError(f"--set {item!r}: {_title(nid, node)} has no input {name!r}; its inputs: "
                                    + ", ".join(sorted(known_inputs(node["class_type"]) or [])))
            if _is_link(node.get("inputs", {}).get(name)):
                raise WorkflowError(f"--set {item!r}: input {name!r} of {_title(nid, node)} is connected to node "
                                    f"{node['inputs'][name][0]}; --set changes values, not connections")
            node.setdefault("inputs", {})[name] = value
    return prompt


# ---------------------------------------------------------------------------------------------- execution


def execution_order(prompt: dict) -> list[str]:
    """Ids of the output nodes and everything they depend on, each after its inputs (ComfyUI runs only these)."""
    outputs = [nid for nid, node in prompt.items() if node["class_type"] in OUTPUT_NODES]
    if not outputs:
        raise WorkflowError("the workflow has no output node (" + ", ".join(OUTPUT_NODES) + "), so nothing would be "
                            "saved; add Save Video")
    order, state = [], {}

    def visit(nid: str, path: tuple) -> None:
        if state.get(nid) == "done":
            return
        if state.get(nid) == "active":
            raise WorkflowError("the workflow has a cycle: nodes " + " → ".join([*path, nid]))
        state[nid] = "active"
        for value in prompt[nid].get("inputs", {}).values():
            if _is_link(value):
                visit(str(value[0]), (*path, nid))
        state[nid] = "done"
        order.append(nid)

    for nid in sorted(outputs, key=_id_key):
        visit(nid, ())
    return order


def _id_key(nid: str):
    return (0, int(nid), "") if nid.isdigit() else (1, 0, nid)


class ProgressBar:
    """A text progress bar on a stream (done/total, it/s, ETA): redrawn in place on a terminal, a line
    every 5 % otherwise."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream, self.last = label, stream or sys.stderr, -1
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start: tuple[float, int] | None = None  # (time, done) of the first report

    def __call__(self, done: int, total: int, preview=None) -> None:
        total = max(1, int(total))
        done = max(0, min(int(done), total))
        now = time.monotonic()
        if self.start is None:
            self.start = (now, done)
        step = done * 20 // total
        if not self.tty and step == self.last:
            return
        self.last = step
        fill = done * 30 // total
        line = f"{self.label} [{'#' * fill}{'.' * (30 - fill)}] {done}/{total}"
        t0, d0 = self.start
        if done > d0 and now > t0:
            rate = (done - d0) / (now - t0)
            eta = (total - done) / rate
            line += f" {rate:.2f} it/s, ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        self.stream.write(("\r" + line + ("\n" if done == total else "")) if self.tty else line + "\n")
        self.stream.flush()


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_model(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"VDM_LoadModel: model {name!r} is neither '{workflow.BUNDLED_NAME}' nor a checkpoint "
                                f"file; give a .safetensors path (e.g. --set model_name=PATH)")
    return path


def run_prompt(prompt: dict, save: Callable[[str, str, str], Path], *, device=None, log=None) -> list[Path]:
    """Execute ``prompt`` headless; ``save(node_id, filename_prefix, suffix) -> path`` names each output
    file. Returns the written paths."""
    check_prompt(prompt)
    order = execution_order(prompt)
    check_nodes(prompt, order)
    device = torch.device(device) if device is not None else _default_device()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    results: dict[str, tuple] = {}
    written: list[Path] = []
    for nid in order:
        node = prompt[nid]
        ct = node["class_type"]
        kwargs = {}
        for key, value in node.get("inputs", {}).items():
            if _is_link(value):
                src, slot = str(value[0]), value[1]
                outs = results[src]
                if not 0 <= slot < len(outs):
                    raise WorkflowError(f"input {key!r} of {_title(nid, node)} is linked to output {slot} of "
                                        f"{_title(src, prompt[src])}, which has {len(outs)} output(s) headless")
                value = outs[slot]
            kwargs[key] = value
        started = time.time()
        try:
            if ct == "SaveVideo":
                written.append(_save_video(nid, save, **kwargs))
                results[nid] = ()
            elif ct in CORE_FUNCTIONS:
                results[nid] = tuple(CORE_FUNCTIONS[ct](**{k: v for k, v in kwargs.items() if k not in UI_ONLY}))
            else:
                hooks = {"resolve_path": _resolve_model, "device": device,
                         "progress": ProgressBar(f"{_title(nid, node)}"),
                         "load_model_to_device": workflow.move_to(device)}
                extra = {h: hooks[h] for h in HOOKS.get(ct, ())}
                results[nid] = tuple(workflow.NODE_FUNCTIONS[ct](**kwargs, **extra))
        except TypeError as e:  # a missing required input
            raise WorkflowError(f"{_title(nid, node)}: {e}") from None
        log(f"{_title(nid, node)} done in {time.time() - started:.1f} s")
    return written


def _save_video(nid: str, save, video: Video, filename_prefix: str = "ComfyUI", format: str = "auto",
                codec: str = "auto", **nested) -> Path:
    if not isinstance(video, Video):
        raise WorkflowError(f"SaveVideo (node {nid}): video must come from CreateVideo or LoadVideo")
    if format not in SAVE_FORMATS:
        raise WorkflowError(f"SaveVideo (node {nid}): format {format!r} cannot be written headless; use "
                            + ", ".join(SAVE_FORMATS))
    suffix = SAVE_FORMATS[format]
    codec = nested.get("format.codec", codec)
    if codec not in SAVE_CODECS[suffix]:
        raise WorkflowError(f"SaveVideo (node {nid}): codec {codec!r} cannot be written to {suffix} headless; use "
                            + " or ".join(SAVE_CODECS[suffix]))
    audio = None
    if video.audio is not None:
        wave = video.audio["waveform"]
        audio = video_io.Audio(wave[0] if wave.ndim == 3 else wave, int(video.audio["sample_rate"]))
    path = save(nid, str(filename_prefix), suffix)
    return video_io.write_video(path, workflow.image_to_clip(video.images, "SaveVideo video"), video.fps, audio)


def numbered_name(output_dir) -> Callable[[str, str, str], Path]:
    """ComfyUI's naming: ``<output_dir>/<prefix>_<00001>_<suffix>`` with the next free number; the prefix
    may hold subfolders but may not leave ``output_dir``."""
    root = Path(output_dir).resolve()

    def name(nid: str, prefix: str, suffix: str) -> Path:
        base = (root / prefix).resolve()
        if root != base and root not in base.parents:
            raise WorkflowError(f"SaveVideo (node {nid}): filename_prefix {prefix!r} points outside {root}")
        folder, stem = base.parent, base.name
        pattern = re.compile(re.escape(stem) + r"_(\d+)_\.")
        taken = [int(m.group(1)) for p in folder.glob(f"{stem}_*_.*") if (m := pattern.match(p.name))] \
            if folder.is_dir() else []
        return folder / f"{stem}_{max(taken, default=0) + 1:05d}_{suffix}"

    return name


# ---------------------------------------------------------------------------------------------- batch


def video_nodes(prompt: dict) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == "LoadVideo"]


def list_clips(folder) -> list[Path]:
    """The clips in ``folder`` (files with a video suffix video_io reads), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkflowError(f"--input-dir {folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in video_io.READ_SUFFIXES
                  and not p.name.startswith("."))


def batch_outputs(prompt: dict, clip: Path, output_dir, suffixes: dict[str, str]) -> dict[str, Path]:
    """``{save node id: output path}`` for one clip: ``<clip stem><suffix>``, or ``<clip stem>_<node id><suffix>``
    when the workflow saves several videos."""
    saves = sorted((nid for nid, n in prompt.items() if n["class_type"] in OUTPUT_NODES), key=_id_key)
    out = Path(output_dir)
    if len(saves) == 1:
        return {saves[0]: out / f"{clip.stem}{suffixes[saves[0]]}"}
    return {nid: out / f"{clip.stem}_{nid}{suffixes[nid]}" for nid in saves}


def save_suffixes(prompt: dict) -> dict[str, str]:
    """File suffix each SaveVideo node will write."""
    out = {}
    for nid, node in prompt.items():
        if node["class_type"] in OUTPUT_NODES:
            fmt = node.get("inputs", {}).get("format", "auto")
            out[nid] = SAVE_FORMATS.get(fmt, ".mp4") if isinstance(fmt, str) else ".mp4"
    return out


def batch_jobs(prompt: dict, input_dir, output_dir):
    """``(clip, prompt for this clip, {save node: path}, done)`` for every clip in ``input_dir``."""
    loaders = video_nodes(prompt)
    if len(loaders) != 1:
        raise WorkflowError(f"--input-dir needs a workflow with exactly one LoadVideo node (this one has "
                            f"{len(loaders)}); e.g. workflows/api/extend_video.json")
    clips = list_clips(input_dir)
    if not clips:
        raise WorkflowError(f"--input-dir {input_dir} holds no clips ({', '.join(video_io.READ_SUFFIXES)})")
    suffixes = save_suffixes(prompt)
    for clip in clips:
        job = json.loads(json.dumps(prompt))
        job[loaders[0]]["inputs"]["file"] = str(clip)
        paths = batch_outputs(prompt, clip, output_dir, suffixes)
        yield clip, job, paths, all(p.exists() for p in paths.values())


# ---------------------------------------------------------------------------------------------- server


class Server:
    """A running ComfyUI: queue a prompt, follow it, download its outputs (stdlib only)."""

    def __init__(self, url: str, timeout: float = 3600):
        self.url = url.rstrip("/")
        if not re.match(r"https?://", self.url):
            raise WorkflowError(f"--server {url!r}: give a URL like http://127.0.0.1:8188")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _request(self, path: str, body: bytes | None = None, headers=None, timeout=60):
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            raise WorkflowError(f"{self.url}{path}: HTTP {e.code}: {_server_error(detail)}") from None
        except urllib.error.URLError as e:
            raise WorkflowError(f"cannot reach ComfyUI at {self.url}: {e.reason}") from None

    def get_json(self, path: str):
        with self._request(path) as r:
            return json.loads(r.read().decode())

    def upload(self, file: Path) -> str:
        """Copy a clip into the server's input folder (``POST /upload/image``); returns its name there."""
        boundary = secrets.token_hex(16)
        body = b"".join([
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n".encode(),
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{file.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode(), file.read_bytes(), b"\r\n",
            f"--{boundary}--\r\n".encode()])
        with self._request("/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}) as r:
            info = json.loads(r.read().decode())
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        with self._request("/prompt", body, {"Content-Type": "application/json"}) as r:
            return json.loads(r.read().decode())["prompt_id"]

    def open_socket(self) -> "WebSocket | None":
        """The server's websocket for this client (open it before queueing), or None when it cannot be opened."""
        try:
            return WebSocket.connect(self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}")
        except OSError:
            return None

    def wait(self, prompt_id: str, ws: "WebSocket | None" = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict:
        """Follow ``prompt_id`` until it finishes; returns its /history entry (which appears once the prompt has
        finished). Raises WorkflowError on an execution error. With a websocket, progress messages are passed
        to ``progress(node, value, max)`` and /history is asked when the server reports the end (and every
        5 s); without one, /history is polled every second."""
        deadline = time.time() + self.timeout
        last_poll, ended = time.time(), ws is None
        try:
            while time.time() < deadline:
                if ws is None or ended or time.time() - last_poll > 5:
                    last_poll, ended = time.time(), False
                    entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
                    if entry and entry.get("status"):
                        return _check_entry(prompt_id, entry)
                if ws is None:
                    time.sleep(1.0)
                    continue
                try:
                    msg = ws.receive(timeout=1.0)
                except OSError:
                    ws = None
                    continue
                if not msg or not isinstance(msg.get("data"), dict) or msg["data"].get("prompt_id") not in (None, prompt_id):
                    continue
                kind, data = msg.get("type"), msg["data"]
                if kind == "progress" and progress and data.get("node") is not None:
                    progress(str(data["node"]), int(data["value"]), int(data["max"]))
                ended = kind in ("execution_success", "execution_error", "execution_interrupted") or (
                    kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id)
        finally:
            if ws is not None:
                ws.close()
        raise WorkflowError(f"prompt {prompt_id} did not finish within {self.timeout:.0f} s on {self.url}")

    def download(self, item: dict, path: Path) -> Path:
        """One output file (``{filename, subfolder, type}`` from /history) written atomically to ``path``."""
        query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            with self._request(f"/view?{query}", timeout=600) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def _server_error(text: str) -> str:
    """The useful part of a /prompt rejection: the error and each node's errors."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    parts = [str((data.get("error") or {}).get("message", ""))]
    for nid, info in (data.get("node_errors") or {}).items():
        for err in info.get("errors", []):
            parts.append(f"node {nid} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}")
    return "; ".join(p for p in parts if p) or text[:500]


def _check_entry(prompt_id: str, entry: dict) -> dict:
    for kind, data in (entry.get("status") or {}).get("messages", []):
        if kind == "execution_error":
            raise WorkflowError(f"ComfyUI: node {data.get('node_id')} ({data.get('node_type')}) failed: "
                                f"{data.get('exception_type')}: {data.get('exception_message')}")
        if kind == "execution_interrupted":
            raise WorkflowError(f"ComfyUI: prompt {prompt_id} was interrupted")
    return entry


def output_items(entry: dict) -> dict[str, list[dict]]:
    """``{node id: [output file items]}`` of a /history entry (files of type "output" only)."""
    out = {}
    for nid, ui in (entry.get("outputs") or {}).items():
        items = [it for value in ui.values() if isinstance(value, list) for it in value
                 if isinstance(it, dict) and "filename" in it and it.get("type", "output") == "output"]
        if items:
            out[str(nid)] = items
    return out


class WebSocket:
    """Just enough of RFC 6455 to read ComfyUI's status messages: client handshake, unmasked server text
    frames (binary preview frames are skipped), ping answered, masked close."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    @classmethod
    def connect(cls, url: str, timeout: float = 10) -> "WebSocket":
        u = urllib.parse.urlsplit(url)
        if u.scheme != "ws":
            raise OSError(f"only ws:// is supported, got {url}")
        sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        path = u.path + (f"?{u.query}" if u.query else "")
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        ws = cls(sock)
        head = ws._read_until(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            sock.close()
            raise OSError(f"websocket handshake refused: {head.splitlines()[0] if head else b''!r}")
        return ws

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("connection closed")
        self.buffer += chunk

    def _frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the first whole frame in the buffer, removed from it; None if incomplete."""
        buf = self.buffer
        if len(buf) < 2:
            return None
        n, pos = buf[1] & 0x7F, 2
        if n >= 126:
            size = 2 if n == 126 else 8
            if len(buf) < pos + size:
                return None
            n = int.from_bytes(buf[pos:pos + size], "big")
            pos += size
        mask = None
        if buf[1] & 0x80:
            mask, pos = buf[pos:pos + 4], pos + 4
        if len(buf) < pos + n:
            return None
        payload, self.buffer = buf[pos:pos + n], buf[pos + n:]
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return buf[0] & 0x0F, payload

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = secrets.token_bytes(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self, timeout: float = 1.0) -> dict | None:
        """The next JSON text message, or None when no whole frame arrived within ``timeout`` (or it was not a
        JSON text frame). Raises OSError when the connection closes."""
        self.sock.settimeout(timeout)
        frame = self._frame()
        while frame is None:
            try:
                self._fill()
            except socket.timeout:
                return None
            frame = self._frame()
        opcode, payload = frame
        if opcode == 0x9:
            self._send(0xA, payload)
        elif opcode == 0x8:
            raise OSError("websocket closed by the server")
        if opcode != 0x1:
            return None
        try:
            return json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()


def run_on_server(server: Server, prompt: dict, outputs: Callable[[str, dict], Path], *, log=None) -> list[Path]:
    """Queue ``prompt`` on ``server``, follow it and download every output file to ``outputs(node_id, item)``.
    LoadVideo files that exist locally are uploaded first."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    prompt = json.loads(json.dumps(prompt))
    for nid in video_nodes(prompt):
        file = Path(str(prompt[nid]["inputs"].get("file", "")))
        if file.is_file():
            prompt[nid]["inputs"]["file"] = server.upload(file)
            log(f"uploaded {file} to {server.url} as {prompt[nid]['inputs']['file']}")
    ws = server.open_socket()
    prompt_id = server.queue(prompt)
    log(f"queued prompt {prompt_id} on {server.url}" + ("" if ws else " (no websocket: polling /history)"))
    bars: dict[str, ProgressBar] = {}

    def progress(node: str, value: int, total: int) -> None:
        title = _title(node, prompt[node]) if node in prompt else f"node {node}"
        bars.setdefault(node, ProgressBar(title))(value, total)

    entry = server.wait(prompt_id, ws, progress)
    items = output_items(entry)
    if not items:
        raise WorkflowError(f"prompt {prompt_id} finished without output files (an identical prompt run before is "
                            "served from ComfyUI's cache: change a value such as the seed or filename_prefix)")
    return [server.download(it, outputs(nid, it)) for nid, its in sorted(items.items()) for it in its]


# ---------------------------------------------------------------------------------------------- vdm run


def run_workflow(path, sets=(), *, input_dir=None, output_dir=".", server: str | None = None, device=None,
                 log=None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``vdm run``: run the workflow in ``path`` once, or once per clip of ``input_dir`` (skipping clips whose
    outputs exist). Returns (written files, [(clip, error message)] of failed clips)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    prompt = apply_sets(load_prompt(path), list(sets))
    output_dir = Path(output_dir)
    remote = Server(server) if server else None
    if remote is None:
        check_nodes(prompt, execution_order(prompt))
    if input_dir is None:
        if remote is None:
            return run_prompt(prompt, numbered_name(output_dir), device=device, log=log), []
        return run_on_server(remote, prompt, lambda nid, it: _under(output_dir, it), log=log), []
    written, failed = [], []
    for clip, job, paths, done in batch_jobs(prompt, input_dir, output_dir):
        if done:
            log(f"skip {clip.name}: {', '.join(str(p) for p in paths.values())} exists")
            continue
        log(f"--- {clip.name}")
        try:
            if remote is None:
                written += run_prompt(job, lambda nid, prefix, suffix: paths[nid], device=device, log=log)
            else:
                written += run_on_server(remote, job, lambda nid, it: paths.get(nid) or _under(output_dir, it), log=log)
        except (WorkflowError, video_io.VideoError, OSError, ValueError, MemoryError) as e:
            log(f"FAILED {clip.name}: {e}")
            failed.append((clip, str(e)))
    return written, failed


def _under(output_dir: Path, item: dict) -> Path:
    """Where a downloaded output goes: its server subfolder and name under ``output_dir`` (kept inside it)."""
    rel = Path(item.get("subfolder") or "") / Path(item["filename"]).name
    if rel.is_absolute() or ".." in rel.parts:
        rel = Path(Path(item["filename"]).name)
    return output_dir / rel


PACKAGED = Path(__file__).parent / "workflows"
"""API-format example workflows shipped inside the package (copies of the repository's workflows/api/)."""


def demo(out="vdm-demo.mp4", *, steps: int | None = None, device=None, log=None) -> Path:
    """``vdm demo``: the extend example (a sprite clip continued by the bundled model) written to ``out``
    (.mp4, .webm or .gif); ``steps`` overrides the example's sampling steps."""
    prompt = load_prompt(PACKAGED / "extend.json")
    if steps is not None:
        prompt = apply_sets(prompt, [f"steps={int(steps)}"])
    (path,) = run_prompt(prompt, lambda nid, prefix, suffix: Path(out), device=device, log=log)
    return path
