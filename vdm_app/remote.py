"""``vdm run --server``: queue prompts on a running ComfyUI and bring their outputs back.

``POST /upload/image`` copies a local clip into the server's input folder, ``POST /prompt`` queues the
prompt, the server's websocket (``/ws?clientId=…``, read with websocket-client as in ComfyUI's own API
examples) reports progress and the end, ``/history/<prompt id>`` says how it ended and which files it
wrote, and ``/view`` downloads each: written under a temporary name and renamed into place only when complete (as
many bytes as the reply's Content-Length) and readable (a video decoded, an image verified).
"""
from __future__ import annotations

import copy
import http.client
import json
import re
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

from PIL import Image, ImageSequence

from .graph import WorkflowError, title
from .lib import ProgressBar, atomic_path, video_io

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""Downloads checked with Pillow (video_io.READ_SUFFIXES are decoded with video_io; others are not checked)."""


def _websocket():
    try:
        import websocket  # websocket-client
    except ImportError:
        raise WorkflowError("vdm run --server needs the websocket-client package: pip install websocket-client "
                            "(or pip install 'comfyui-vdm[server]')") from None
    return websocket


class Server:
    """A running ComfyUI: queue a prompt, follow it, download its outputs."""

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
        except (urllib.error.URLError, OSError) as e:
            raise WorkflowError(f"cannot reach ComfyUI at {self.url}: {getattr(e, 'reason', e)}") from None
        except http.client.HTTPException as e:
            raise WorkflowError(f"{self.url}{path}: broken reply ({type(e).__name__}: {e}); is it ComfyUI?") from None

    def _json(self, path: str, body: bytes | None = None, headers=None):
        """The JSON reply to a request; WorkflowError when it is cut off or is not JSON."""
        with self._request(path, body, headers) as r:
            try:
                return json.loads(r.read().decode())
            except (http.client.HTTPException, OSError) as e:
                raise WorkflowError(f"{self.url}{path}: the reply broke off ({type(e).__name__}); "
                                    "the server or the network failed: try again") from None
            except ValueError as e:  # not UTF-8 or not JSON
                raise WorkflowError(f"{self.url}{path}: the reply is not JSON ({e}); is it ComfyUI?") from None

    def get_json(self, path: str):
        return self._json(path)

    def upload(self, file: Path) -> str:
        """Copy a clip into the server's input folder (``POST /upload/image``); returns its name there."""
        boundary = secrets.token_hex(16)
        body = b"".join([
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n".encode(),
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{file.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode(), file.read_bytes(), b"\r\n",
            f"--{boundary}--\r\n".encode()])
        info = self._json("/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        return self._json("/prompt", body, {"Content-Type": "application/json"})["prompt_id"]

    def open_socket(self):
        """The server's websocket for this client (open it before queueing), or None when it cannot be
        opened (then :meth:`wait` polls /history)."""
        websocket = _websocket()
        url = re.sub(r"^http", "ws", self.url) + f"/ws?clientId={self.client_id}"
        try:
            return websocket.create_connection(url, timeout=10)
        except (OSError, websocket.WebSocketException):
            return None

    def wait(self, prompt_id: str, ws, progress: Callable[[str, int, int], None] | None = None) -> dict:
        """Follow ``prompt_id`` until it finishes; returns its /history entry (which appears once the prompt
        has finished). With a websocket, progress messages go to ``progress(node, value, max)`` and /history
        is asked when the server reports the end (and every 5 s in case that message was missed); without
        one (or once the socket closes), /history is polled every second. Raises WorkflowError on an
        execution error, an interruption, a server that cannot be reached, or after the timeout."""
        websocket = _websocket()
        deadline, last_poll, ended = time.time() + self.timeout, time.time(), ws is None
        if ws is not None:
            ws.settimeout(1.0)
        try:
            while time.time() < deadline:
                if ended or time.time() - last_poll > 5:
                    last_poll, ended = time.time(), ws is None
                    entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
                    if entry and entry.get("status"):
                        return _check_entry(prompt_id, entry)
                if ws is None:
                    time.sleep(1.0)
                    continue
                try:
                    text = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                except (OSError, websocket.WebSocketException):  # the socket closed: ask /history from now on
                    ws.close(timeout=0.5)
                    ws, ended = None, True
                    continue
                if not isinstance(text, str):
                    continue  # binary frames are previews
                try:
                    msg = json.loads(text)
                except json.JSONDecodeError:
                    continue
                data = msg.get("data") if isinstance(msg, dict) else None
                if not isinstance(data, dict) or data.get("prompt_id") not in (None, prompt_id):
                    continue
                kind = msg.get("type")
                if kind == "progress" and progress and data.get("node") is not None:
                    progress(str(data["node"]), int(data["value"]), int(data["max"]))
                ended = kind in ("execution_success", "execution_error", "execution_interrupted") or (
                    kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id)
        finally:
            if ws is not None:
                ws.close(timeout=0.5)  # ComfyUI answers the close at once; do not wait long for one that does not
        raise WorkflowError(f"prompt {prompt_id} did not finish within {self.timeout:.0f} s on {self.url}")

    def download(self, item: dict, path: Path) -> Path:
        """One output file (``{filename, subfolder, type}`` from /history) written to ``path``, renamed into place
        only when it is complete and readable; otherwise WorkflowError, and nothing is left at ``path`` or beside it."""
        query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
        what = f"{self.url}/view: {item.get('filename')} (for {path})"
        with self._request(f"/view?{query}", timeout=600) as r, atomic_path(path) as tmp:
            _save(r, tmp, what)
            _check_readable(tmp, what)
        return path


def _content_length(r) -> int | None:
    """The reply's Content-Length, or None when it sends none (or a bad one)."""
    try:
        return int(r.headers["Content-Length"])
    except (TypeError, ValueError):
        return None


def _save(r, tmp: Path, what: str) -> None:
    """The body of the reply ``r`` written to ``tmp``; WorkflowError when it breaks off or ends short of its
    Content-Length."""
    expected, got = _content_length(r), 0
    with open(tmp, "wb") as f:
        while True:
            try:
                chunk = r.read(1 << 20)
            except (http.client.HTTPException, OSError) as e:  # IncompleteRead, a reset, a timeout
                raise WorkflowError(f"{what}: the download broke off after {got:,} bytes ({type(e).__name__}); "
                                    "nothing was saved: run again to retry") from None
            if not chunk:
                break
            f.write(chunk)
            got += len(chunk)
    if expected is not None and got != expected:
        raise WorkflowError(f"{what}: the download was cut off after {got:,} of {expected:,} bytes; nothing was "
                            "saved: run again to retry")


def _check_readable(file: Path, what: str) -> None:
    """WorkflowError unless ``file`` decodes: every frame of a video (``video_io``), every frame of an image
    (Pillow). Files of other kinds are not checked."""
    suffix = file.suffix.lower()
    if suffix not in video_io.READ_SUFFIXES + IMAGE_SUFFIXES:
        return
    try:
        if suffix in video_io.READ_SUFFIXES:
            video_io.read_video(file, size=(1, 1), audio=False)  # decodes every frame, keeps 1 pixel of each
        else:
            with Image.open(file) as img:
                img.verify()
            with Image.open(file) as img:
                for frame in ImageSequence.Iterator(img):
                    frame.load()
    except Exception as e:  # whatever the decoder raises, the file is unusable
        detail = str(e).replace(str(file), "the file")
        raise WorkflowError(f"{what}: the download is not a readable {suffix[1:]} file ({type(e).__name__}: "
                            f"{detail}); nothing was saved: run again to retry, or check the server's output") from None


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


def run_on_server(server: Server, prompt: dict, outputs: Callable[[str, dict], Path], *, log=None) -> list[Path]:
    """Queue ``prompt`` on ``server``, follow it and download every output file to ``outputs(node_id, item)``.
    LoadVideo files that exist locally are uploaded first."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    prompt = copy.deepcopy(prompt)
    for nid, node in prompt.items():
        if node["class_type"] == "LoadVideo":
            file = Path(str(node["inputs"].get("file", "")))
            if file.is_file():
                node["inputs"]["file"] = server.upload(file)
                log(f"uploaded {file} to {server.url} as {node['inputs']['file']}")
    ws = server.open_socket()
    prompt_id = server.queue(prompt)
    log(f"queued prompt {prompt_id} on {server.url}" + ("" if ws else " (no websocket: polling /history)"))
    bars: dict[str, ProgressBar] = {}

    def progress(node: str, value: int, total: int) -> None:
        label = title(node, prompt[node]) if node in prompt else f"node {node}"
        bars.setdefault(node, ProgressBar(label))(value, total)

    entry = server.wait(prompt_id, ws, progress)
    items = output_items(entry)
    if not items:
        raise WorkflowError(f"prompt {prompt_id} finished without output files (an identical prompt run before is "
                            "served from ComfyUI's cache: change a value such as the seed or filename_prefix)")
    return [server.download(it, outputs(nid, it)) for nid, its in sorted(items.items()) for it in its]
