"""The example workflows (workflows/*.json in UI format, workflows/api/*.json in API format) and `vdm run`.

The UI files are checked against the nodes' real schemas (the pack imported through tests/comfy_stubs.py):
node ids, input and output names and types, links, and the positional ``widgets_values`` the frontend
writes. Every API twin of the pack's own model runs headless with a tiny random checkpoint at 2 steps, and
the runner's batch mode, resume, --set errors and --server client (against a small fake ComfyUI) are
exercised. The Wan examples (``wan_*``) need ComfyUI itself — its model loaders, text encoder and the
host-only Use ComfyUI Model node — so their API twins are checked for structure only (every VDM value fits
its spec, every core node has its inputs), and ``vdm run`` must refuse them with a pointer to ComfyUI;
tests/harness/ runs them in the real ComfyUI.
"""
import base64
import hashlib
import io
import socket
import json
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from PIL import Image

import comfy_stubs
from comfy_pack import stubbed_pack
from vdm_app import cli, executor, graph, pool, remote
from vdm_core import checkpoint, data, video_io, video_write
from vdm_core.unet3d import UNet3D, UNet3DConfig

ROOT = Path(__file__).resolve().parents[1]
UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
API_FILES = sorted((ROOT / "workflows" / "api").glob("*.json"))
NAMES = [p.stem for p in UI_FILES]
JOBS = {"generate", "extend", "interpolate", "upscale", "interpolate_upscale"}
WAN = {"wan_generate", "wan_extend", "wan_interpolate", "wan_upscale"}
"""Examples on ComfyUI's Wan 2.1 1.3B (the file names of ComfyUI's Wan templates)."""
WAN_FILES = {"UNETLoader": ("unet_name", "wan2.1_t2v_1.3B_fp16.safetensors"),
             "CLIPLoader": ("clip_name", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
             "VAELoader": ("vae_name", "wan_2.1_vae.safetensors")}
# (frames, width, height, fps) each example's video must have; the same with the tiny model at 2 steps
EXPECTED = {"generate": (32, 16, 16, 8), "extend": (32, 16, 16, 8), "interpolate": (23, 16, 16, 16),
            "upscale": (16, 16, 16, 8), "interpolate_upscale": (15, 16, 16, 16)}
# inputs (in widget order) and outputs of the core nodes the examples use, as in ComfyUI 0.3.64
CORE = {
    "LoadVideo": ({"file": "COMBO"}, [("VIDEO", "VIDEO")]),
    "GetVideoComponents": ({"video": "VIDEO"}, [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
    "CreateVideo": ({"images": "IMAGE", "audio": "AUDIO", "fps": "FLOAT"}, [("VIDEO", "VIDEO")]),
    "SaveVideo": ({"video": "VIDEO", "filename_prefix": "STRING", "format": "COMBO", "codec": "COMBO"}, []),
    "UNETLoader": ({"unet_name": "COMBO", "weight_dtype": "COMBO"}, [("MODEL", "MODEL")]),
    "CLIPLoader": ({"clip_name": "COMBO", "type": "COMBO", "device": "COMBO"}, [("CLIP", "CLIP")]),
    "CLIPTextEncode": ({"text": "STRING", "clip": "CLIP"}, [("CONDITIONING", "CONDITIONING")]),
    "VAELoader": ({"vae_name": "COMBO"}, [("VAE", "VAE")]),
}
HOST_ONLY_CORE = {"UNETLoader", "CLIPLoader", "CLIPTextEncode", "VAELoader"}
"""Core nodes `vdm run` cannot execute (ComfyUI's model loaders and text encoding)."""
WIDGET_TYPES = {"INT", "FLOAT", "COMBO", "STRING", "BOOLEAN"}
TINY = UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2, resolution=16, frames=16)


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    """{node_id: Schema} of the pack's nodes, imported the way ComfyUI imports it (with stand-in modules)."""
    models = tmp_path_factory.mktemp("models")
    with stubbed_pack(comfy_stubs.modules(str(models)), name="custom_nodes_comfyui-vdm_workflows") as (_, _, nodes):
        return {node_id: n.GET_SCHEMA() for node_id, n in nodes.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    checkpoint.save(path, UNet3D(TINY))
    return path


def load(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def vdm(*args):
    return cli.main([str(a) for a in args])


def probe(path):
    info = video_io.probe(path)
    return info.frames, info.width, info.height, float(info.fps)


# ---------------------------------------------------------------------------------------------- the files


def test_every_job_has_a_ui_workflow_and_an_api_twin():
    assert JOBS | {"extend_video"} | WAN <= set(NAMES)
    assert [p.name for p in API_FILES] == [p.name for p in UI_FILES]
    for path in UI_FILES:
        assert graph.is_ui_format(load(path)), path
    for path in API_FILES:
        graph.check_prompt(load(path), path.name)  # API format, links to existing nodes


def _widgets(schema_or_core, node_type):
    """[(input id, type, control_after_generate?)] of a node's widget inputs in the frontend's order."""
    if node_type in CORE:
        return [(k, t, False) for k, t in CORE[node_type][0].items() if t in WIDGET_TYPES]
    out = []
    for group in (False, True):  # required first, then optional, as INPUT_TYPES lists them
        for i in schema_or_core.inputs:
            t = i.io_type
            if bool(i.optional) == group and t in WIDGET_TYPES:
                # the frontend adds a control widget to INT inputs that ask for one and to any INT named "seed"
                control = t == "INT" and (bool(getattr(i, "control_after_generate", False)) or i.id == "seed")
                out.append((i.id, t, control))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_matches_the_nodes(name, schemas):
    wf = load(ROOT / "workflows" / f"{name}.json")
    assert wf["version"] == 0.4 and {"last_node_id", "last_link_id", "groups", "config", "extra"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == typ == nodes[dst]["inputs"][dst_slot]["type"]
    for node in wf["nodes"]:
        t = node["type"]
        assert node["mode"] == 0, f"{name}: node {node['id']} is muted or bypassed"
        if t == "MarkdownNote":
            continue
        if t.startswith("VDM_"):
            schema = schemas[t]
            inputs = {i.id: i.io_type for i in schema.inputs}
            outputs = [(o.display_name or o.id, o.io_type) for o in schema.outputs]
            options = {i.id: i.options for i in schema.inputs if i.io_type == "COMBO"}
            limits = {i.id: (getattr(i, "min", None), getattr(i, "max", None)) for i in schema.inputs}
        else:
            assert t in CORE, f"{name}: unexpected node type {t}"
            inputs, outputs, options, limits = CORE[t][0], CORE[t][1], {}, {}
        for slot in node["inputs"]:
            assert inputs.get(slot["name"]) == slot["type"], f"{name}: {t} has no input {slot['name']} ({slot['type']})"
        assert [(o["name"], o["type"]) for o in node["outputs"]] == outputs, f"{name}: {t} outputs"
        widgets = _widgets(schemas.get(t), t)
        expected_len = len(widgets) + sum(c for *_, c in widgets) + (1 if t == "LoadVideo" else 0)  # upload button
        values = list(node.get("widgets_values", []))
        assert len(values) == expected_len, f"{name}: {t} widgets_values {values} vs widgets {widgets}"
        for wid, typ, control in widgets:
            value = values.pop(0)
            if typ in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool)
                lo, hi = limits.get(wid, (None, None))
                assert (lo is None or value >= lo) and (hi is None or value <= hi), f"{name}: {t}.{wid}={value}"
            if wid in options:
                assert value in options[wid], f"{name}: {t}.{wid}={value!r} not in {options[wid]}"
            if wid == "model_name":
                assert value == "vdm-sprites-16 (bundled)", "examples must use the bundled model"
            if t in WAN_FILES and wid == WAN_FILES[t][0]:
                assert value == WAN_FILES[t][1], f"{name}: {t} must load ComfyUI's template file {WAN_FILES[t][1]}"
            if t == "CLIPLoader" and wid == "type":
                assert value == "wan"
            if control:
                assert values.pop(0) == "fixed", f"{name}: {t}.{wid} must be 'fixed' so the example reproduces"


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_is_the_same_graph(name, schemas):
    ui, api = load(ROOT / "workflows" / f"{name}.json"), load(ROOT / "workflows" / "api" / f"{name}.json")
    runs = {str(n["id"]): n for n in ui["nodes"] if n["type"] != "MarkdownNote"}
    assert {k: v["class_type"] for k, v in api.items()} == {k: v["type"] for k, v in runs.items()}
    links = {link[0]: link for link in ui["links"]}
    for nid, node in runs.items():
        inputs = api[nid]["inputs"]
        for slot in node["inputs"]:
            if slot["link"] is not None:
                _, src, src_slot, *_ = links[slot["link"]]
                assert inputs[slot["name"]] == [str(src), src_slot]
        values = [v for v in node.get("widgets_values", []) if v not in ("fixed", "image")]  # control / upload extras
        linked = {s["name"] for s in node["inputs"] if s["link"] is not None}
        for (wid, _, _), value in zip(_widgets(schemas.get(node["type"]), node["type"]), values):
            if wid not in linked:
                assert inputs[wid] == value, f"{name}: node {nid} {wid}"
    if name in WAN:
        check_host_prompt(api, name)
    else:
        executor.check_nodes(api)  # every node and input is one `vdm run` executes


def check_host_prompt(api, name):
    """An API prompt that needs ComfyUI: the headless nodes as `vdm run` checks them, every VDM node's
    values against its spec (host-only ones included), every core node's inputs as in ComfyUI 0.3.64."""
    from vdm_app import spec

    hosted = {nid for nid, n in api.items() if n["class_type"] in HOST_ONLY_CORE or
              (n["class_type"] in spec.NODES and spec.NODES[n["class_type"]].host_only)}
    assert hosted, f"{name} needs nothing of ComfyUI: it belongs with the headless examples"
    executor.check_nodes(api, [nid for nid in api if nid not in hosted])
    for nid in hosted:
        ct, inputs = api[nid]["class_type"], api[nid]["inputs"]
        if ct in spec.NODES:
            node = spec.NODES[ct]  # linked widgets take their value at run time; sockets keep the link
            spec.check_inputs(ct, {k: v for k, v in inputs.items() if not (graph.is_link(v) and node.input(k).widget)})
            known = {i.name for i in spec.NODES[ct].inputs}
        else:
            known = set(CORE[ct][0])
            assert {k for k, t in CORE[ct][0].items() if t in WIDGET_TYPES} <= set(inputs), f"{name}: {ct} {inputs}"
        assert set(inputs) <= known, f"{name}: {ct} has inputs {sorted(set(inputs) - known)} it does not take"


@pytest.mark.parametrize("name", sorted(WAN))
def test_wan_workflows_are_refused_headless_with_a_pointer_to_comfyui(name, capsys):
    assert vdm("run", ROOT / "workflows" / "api" / f"{name}.json") == 2
    err = capsys.readouterr().err
    assert "headless" in err and "run the workflow in ComfyUI or with --server URL" in err


@pytest.mark.parametrize("name", sorted(WAN))
def test_wan_workflows_say_which_models_they_need(name):
    note = next(n for n in load(ROOT / "workflows" / f"{name}.json")["nodes"] if n["type"] == "MarkdownNote")
    for _, file in WAN_FILES.values():
        assert file in note["widgets_values"][0], f"{name}: the note must name {file}"


def test_vdm_demo_reads_the_one_extend_example():
    assert cli.example("extend") == ROOT / "workflows" / "api" / "extend.json"
    assert not (ROOT / "vdm_core" / "workflows").exists()  # no copy to keep in step
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"vdm_app.examples" = "workflows/api"' in pyproject  # and a wheel carries it as vdm_app/examples


# ---------------------------------------------------------------------------------------------- running


@pytest.mark.parametrize("name", sorted(JOBS))
def test_api_workflow_runs_headless(name, tiny, tmp_path):
    rc = vdm("run", ROOT / "workflows" / "api" / f"{name}.json", "--set", "steps=2",
             "--set", f"model_name={tiny}", "--output-dir", tmp_path, "--device", "cpu")
    assert rc == 0
    (out,) = (tmp_path / "vdm").glob(f"{name}_*_.mp4")
    assert out.name == f"{name}_00001_.mp4"
    assert probe(out) == EXPECTED[name]


def test_demo_writes_the_extend_example(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "BUNDLED", tiny)
    assert vdm("demo", "-o", tmp_path / "demo.mp4", "--steps", "1", "--device", "cpu") == 0
    assert probe(tmp_path / "demo.mp4") == EXPECTED["extend"]


def write_clips(folder, seeds, frames=4):
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        video_write.write_video(folder / f"clip{seed}.mp4", data.sprite_clip(seed, size=16, frames=frames), fps=8)


def test_batch_over_a_folder_resumes(tiny, tmp_path, capsys):
    clips, out = tmp_path / "in", tmp_path / "out"
    write_clips(clips, [1, 2, 3])
    (clips / "notes.txt").write_text("not a clip")
    args = ["run", ROOT / "workflows" / "api" / "extend_video.json", "--input-dir", clips, "--output-dir", out,
            "--set", "steps=1", "--set", "new_frames=2", "--set", f"model_name={tiny}", "--device", "cpu"]
    assert vdm(*args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip1.mp4", "clip2.mp4", "clip3.mp4"]
    assert probe(out / "clip2.mp4") == (6, 16, 16, 8)
    # an interrupted batch: one output missing -> only that clip runs again
    (out / "clip2.mp4").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert vdm(*args) == 0
    err = capsys.readouterr().err
    assert "skip clip1.mp4" in err and "skip clip3.mp4" in err and "--- clip2.mp4" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "clip2.mp4"} == before
    assert probe(out / "clip2.mp4") == (6, 16, 16, 8)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_batch_goes_on_after_a_bad_clip(tiny, tmp_path, capsys):
    clips, out = tmp_path / "in", tmp_path / "out"
    write_clips(clips, [1])
    (clips / "broken.mp4").write_bytes(b"not a video")
    # the frontend exports LoadVideo's upload button and player values too (when the clip exists); ignored
    rc = vdm("run", ROOT / "workflows" / "api" / "extend_video.json", "--input-dir", clips, "--output-dir", out,
             "--set", "steps=1", "--set", "new_frames=1", "--set", f"model_name={tiny}", "--device", "cpu",
             "--set", "upload=image", "--set", "video-preview=")
    assert rc == 1
    assert [p.name for p in out.iterdir()] == ["clip1.mp4"]
    assert "FAILED broken.mp4" in capsys.readouterr().err


def test_input_dir_needs_a_load_video_node(tmp_path, capsys):
    write_clips(tmp_path / "in", [1])
    assert vdm("run", ROOT / "workflows" / "api" / "extend.json", "--input-dir", tmp_path / "in") == 2
    assert "exactly one LoadVideo" in capsys.readouterr().err


def test_missing_input_clip_says_how_to_give_one(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert vdm("run", ROOT / "workflows" / "api" / "extend_video.json", "--set", f"model_name={tiny}") == 2
    err = capsys.readouterr().err
    assert "vdm_sprites.mp4 does not exist" in err and "--set file=PATH" in err and "--input-dir" in err


def test_ui_format_is_refused_with_a_pointer_to_the_api_twin(capsys):
    assert vdm("run", ROOT / "workflows" / "extend.json") == 2
    err = capsys.readouterr().err
    assert "UI-format" in err and "Export (API)" in err and str(Path("workflows") / "api" / "extend.json") in err


@pytest.mark.parametrize("assignment, message", [
    ("nosuch.steps=2", "no node with id, title or class type 'nosuch'"),
    ("4.nosuch=2", "has no input 'nosuch'"),
    ("VDM_SampleDDIMv.nosuch=2", "has no input 'nosuch'"),
    ("nosuch=2", "no node in the workflow has an input 'nosuch'"),
    ("VDM_ExtendClip.frames=1", "is connected to node"),
    ("steps", "write NODE.INPUT=VALUE"),
])
def test_set_errors_name_the_problem(assignment, message, capsys):
    assert vdm("run", ROOT / "workflows" / "api" / "extend.json", "--set", assignment) == 2
    assert message in capsys.readouterr().err


def test_set_by_id_title_class_and_bare_name():
    prompt = load(ROOT / "workflows" / "api" / "extend.json")
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "VDM_SampleDDIMv")
    title = prompt[sampler]["_meta"]["title"]
    for key in (f"{sampler}.steps", f"{title}.steps", "VDM_SampleDDIMv.steps", "steps"):
        assert graph.apply_sets(prompt, [f"{key}=3"], executor.accepts)[sampler]["inputs"]["steps"] == 3
    before = json.dumps(prompt)
    out = graph.apply_sets(prompt, ["VDM_SampleDDIMv.method=replacement", "eta=0.5", "filename_prefix=a/b"], executor.accepts)
    assert out[sampler]["inputs"]["method"] == "replacement" and out[sampler]["inputs"]["eta"] == 0.5
    assert json.dumps(prompt) == before  # the original is not changed
    length = [v["inputs"]["length"] for v in graph.apply_sets(prompt, ["length=5"], executor.accepts).values() if "length" in v["inputs"]]
    assert length == [5, 5]  # Sprite Clip and the sampler both have `length`


def test_unknown_nodes_and_bad_graphs_are_refused(tmp_path):
    prompt = load(ROOT / "workflows" / "api" / "generate.json")
    prompt["99"] = {"class_type": "KSampler", "inputs": {}}
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveVideo")
    prompt[save]["inputs"]["video"] = ["99", 0]
    with pytest.raises(graph.WorkflowError, match="cannot execute KSampler headless"):
        executor.run_prompt(prompt, executor.numbered_name(tmp_path))
    prompt["99"] = {"class_type": "CreateVideo", "inputs": {"images": ["99", 0], "fps": 8}}
    with pytest.raises(graph.WorkflowError, match="cycle"):
        executor.run_prompt(prompt, executor.numbered_name(tmp_path))
    del prompt[save]
    with pytest.raises(graph.WorkflowError, match="no output node"):
        executor.run_prompt(prompt, executor.numbered_name(tmp_path))


def test_numbered_names_follow_comfyui(tmp_path):
    name = executor.numbered_name(tmp_path)
    assert name("6", "vdm/x", ".mp4") == tmp_path / "vdm" / "x_00001_.mp4"
    (tmp_path / "vdm").mkdir()
    (tmp_path / "vdm" / "x_00007_.mp4").write_bytes(b"")
    assert name("6", "vdm/x", ".webm") == tmp_path / "vdm" / "x_00008_.webm"
    with pytest.raises(graph.WorkflowError, match="outside"):
        name("6", "../escape", ".mp4")


# ---------------------------------------------------------------------------------------------- --server


class FakeComfy:
    """Just the parts of ComfyUI's HTTP API that `vdm run --server` uses: /upload/image, /prompt, /ws (progress
    messages, a binary preview frame, then "executing" with node None), /history/<id> and /view. Each prompt
    "writes" a real 2-frame mp4 of its own (``made[prompt id]``: its bytes)."""

    def __init__(self, fail_node=None, reject=False, delay=0.0, die_on=None, cut=None):
        self.uploads, self.prompts, self.history, self.files, self.made = {}, [], {}, {}, {}
        self.fail_node, self.reject, self.sockets, self.connections = fail_node, reject, [], []
        self.delay, self.die_on = delay, die_on  # seconds per prompt; the prompt number during which it dies
        self.cut = cut  # a path prefix ("/view", "/history"): its replies stop after a quarter of their bytes
        self.stopped = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, code, body, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fake.cut and self.path.startswith(fake.cut):  # the connection drops mid-body
                    self.wfile.write(data[:len(data) // 4])
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def do_GET(self):
                url = urlsplit(self.path)
                if url.path == "/ws":
                    accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] +
                                              "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
                    fake.sockets.append(self.wfile)  # before the handshake ends: messages of the next prompt reach it
                    fake.connections.append(self.connection)
                    self.send_response(101)
                    self.send_header("Upgrade", "websocket")
                    self.send_header("Connection", "Upgrade")
                    self.send_header("Sec-WebSocket-Accept", accept)
                    self.end_headers()
                    self.wfile.flush()
                    self.close_connection = True
                    fake.stopped.wait(5)  # keep the socket open while the prompt runs
                elif url.path.startswith("/history/"):
                    pid = url.path.rsplit("/", 1)[1]
                    self.reply(200, {pid: fake.history[pid]} if pid in fake.history else {})
                elif url.path == "/view":
                    q = parse_qs(url.query)
                    self.reply(200, fake.files[(q["subfolder"][0], q["filename"][0])], "video/mp4")
                else:
                    self.reply(404, {})

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/upload/image":
                    name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
                    fake.uploads[name] = body
                    self.reply(200, {"name": name, "subfolder": "", "type": "input"})
                elif self.path == "/prompt":
                    if fake.reject:
                        self.reply(400, {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {
                            "1": {"class_type": "VDM_LoadModel", "errors": [{"message": "Value not in list",
                                                                           "details": "model_name: 'x'"}]}}})
                        return
                    prompt = json.loads(body)["prompt"]
                    pid = uuid.uuid4().hex
                    fake.prompts.append(prompt)
                    self.reply(200, {"prompt_id": pid, "number": len(fake.prompts)})
                    fake.execute(pid, prompt)
                else:
                    self.reply(404, {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def frame(opcode, payload):
        return bytes([0x80 | opcode, len(payload)]) + payload if len(payload) < 126 else \
            bytes([0x80 | opcode, 126]) + len(payload).to_bytes(2, "big") + payload

    def execute(self, pid, prompt):
        threading.Event().wait(self.delay)
        if self.die_on == len(self.prompts):  # the server process dies while the prompt runs
            for conn in self.connections:
                conn.shutdown(socket.SHUT_RDWR)
            threading.Thread(target=self.close, daemon=True).start()
            return
        save = next(k for k, v in prompt.items() if v["class_type"] == "SaveVideo")
        sampler = next(k for k, v in prompt.items() if v["class_type"] == "VDM_SampleDDIMv")
        for ws in self.sockets[-1:]:
            for i in (1, 2):
                msg = {"type": "progress", "data": {"value": i, "max": 2, "node": sampler, "prompt_id": pid}}
                ws.write(self.frame(0x1, json.dumps(msg).encode()))
            ws.write(self.frame(0x2, b"\x00\x00\x00\x01" + b"jpeg" * 40))  # preview image: skipped
            ws.flush()
        self.finish(pid, prompt, save, sampler)
        for ws in self.sockets[-1:]:
            ws.write(self.frame(0x1, json.dumps({"type": "executing", "data": {"node": None, "prompt_id": pid}}).encode()))
            ws.flush()

    def finish(self, pid, prompt, save, sampler):
        if self.fail_node:
            self.history[pid] = {"status": {"status_str": "error", "completed": False, "messages": [
                ["execution_error", {"node_id": sampler, "node_type": "VDM_SampleDDIMv",
                                     "exception_type": "MemoryError", "exception_message": "out of memory"}]]},
                                 "outputs": {}}
            return
        name = f"{prompt[save]['inputs']['filename_prefix'].split('/')[-1]}_{len(self.prompts):05d}_.mp4"
        self.files[("vdm", name)] = self.made[pid] = video_bytes(int(pid[:8], 16))
        self.history[pid] = {"status": {"status_str": "success", "completed": True, "messages": []},
                             "outputs": {save: {"images": [{"filename": name, "subfolder": "vdm", "type": "output"}],
                                                "animated": [True]}}}

    def close(self):
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def video_bytes(seed: int, suffix=".mp4") -> bytes:
    """A real 2-frame 16x16 clip (sprite clip ``seed``) as the bytes of a file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip{suffix}"
        video_write.write_video(path, data.sprite_clip(seed, size=16, frames=2), fps=8)
        return path.read_bytes()


def finishes(fn, *args, seconds=60, **kwargs):
    """``fn(*args, **kwargs)``, failing the test instead of hanging it when it has not returned within ``seconds``."""
    result = {}

    def target():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the test below
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} did not return within {seconds} s: it hangs"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_server_mode_uploads_follows_progress_and_downloads(tmp_path, capsys):
    clips, out = tmp_path / "in", tmp_path / "out"
    write_clips(clips, [1, 2], frames=2)
    fake = FakeComfy()
    try:
        args = ["run", ROOT / "workflows" / "api" / "extend_video.json", "--server", fake.url, "--input-dir", clips,
                "--output-dir", out, "--set", "steps=3"]
        assert vdm(*args) == 0
        assert sorted(fake.uploads) == ["clip1.mp4", "clip2.mp4"]
        loads = [next(v for v in p.values() if v["class_type"] == "LoadVideo") for p in fake.prompts]
        assert [n["inputs"]["file"] for n in loads] == ["clip1.mp4", "clip2.mp4"]  # the uploaded names
        assert all(next(v for v in p.values() if v["class_type"] == "VDM_SampleDDIMv")["inputs"]["steps"] == 3
                   for p in fake.prompts)
        assert sorted(p.name for p in out.iterdir()) == ["clip1.mp4", "clip2.mp4"]
        assert (out / "clip1.mp4").read_bytes() == fake.made[next(iter(fake.history))]
        err = capsys.readouterr().err
        assert "100%" in err and "2/2" in err and "no websocket" not in err
        assert vdm(*args) == 0 and len(fake.prompts) == 2  # everything there: nothing queued again
        # a single run keeps the server's subfolder and file name
        assert vdm("run", ROOT / "workflows" / "api" / "extend.json", "--server", fake.url, "-o", out) == 0
        assert (out / "vdm" / "extend_00003_.mp4").is_file()
    finally:
        fake.close()


@pytest.mark.parametrize("problem, message", [
    (dict(fail_node=True), "VDM_SampleDDIMv) failed: MemoryError: out of memory"),
    (dict(reject=True), "node 1 (VDM_LoadModel): Value not in list: model_name: 'x'"),
])
def test_server_errors_are_reported(problem, message, tmp_path, capsys):
    fake = FakeComfy(**problem)
    try:
        assert vdm("run", ROOT / "workflows" / "api" / "extend.json", "--server", fake.url, "-o", tmp_path) == 2
        assert message in capsys.readouterr().err
    finally:
        fake.close()


def test_unreachable_server(tmp_path, capsys):
    assert vdm("run", ROOT / "workflows" / "api" / "extend.json", "--server", "http://127.0.0.1:9", "-o", tmp_path) == 2
    assert "cannot reach ComfyUI" in capsys.readouterr().err


@pytest.mark.parametrize("assignment, message", [
    ("guidance_weight=NaN", "guidance_weight must be a finite number"),
    ("eta=Infinity", "eta must be a finite number"),
    ("steps=0", "steps must be from 1 to 1000"),
    ("steps=2.5", "steps must be a whole number"),
    ('method="inpaint"', "method must be one of auto, reconstruction, replacement, both"),
    ("filename_prefix=../escape", "points outside"),
    ("filename_prefix=notes.txt/x", "is a file, not a folder"),
    ('format="gif"', "cannot be written headless"),
])
def test_vdm_run_refuses_bad_values_and_outputs_before_any_compute(assignment, message, tiny, tmp_path, capsys,
                                                                   monkeypatch):
    from vdm_core import tasks

    ran = []
    monkeypatch.setattr(tasks, "generate", lambda *a, **k: ran.append(1))
    (tmp_path / "notes.txt").write_text("a file")
    rc = vdm("run", ROOT / "workflows" / "api" / "generate.json", "--set", f"model_name={tiny}", "--set", assignment,
             "--output-dir", tmp_path, "--device", "cpu")
    err = capsys.readouterr().err
    assert rc == 2 and message in err and not ran, err
    assert err.strip().splitlines()[-1].startswith("error:")


def test_server_pool_runs_every_clip_once_and_survives_a_dying_server(tmp_path, capsys):
    clips, out = tmp_path / "in", tmp_path / "out"
    write_clips(clips, range(1, 7), frames=2)
    a, b = FakeComfy(delay=0.2), FakeComfy(delay=0.2, die_on=2)  # b dies during its second clip
    try:
        args = ["run", ROOT / "workflows" / "api" / "extend_video.json", "--server", a.url, "--server", b.url,
                "--input-dir", clips, "--output-dir", out, "--set", "steps=3"]
        assert finishes(vdm, *args) == 0
        names = sorted(p.name for p in out.iterdir())
        assert names == [f"clip{i}.mp4" for i in range(1, 7)]
        done = {pid for f in (a, b) for pid, h in f.history.items() if h["status"]["status_str"] == "success"}
        assert len(done) == 6  # every clip ran to the end exactly once
        made = {video: pid for f in (a, b) for pid, video in f.made.items()}
        assert {made[(out / n).read_bytes()] for n in names} == done
        assert len(b.prompts) == 2 and len(a.prompts) == 5  # b's lost clip went to a
        err = capsys.readouterr().err
        assert f"giving up on {b.url}" in err and "queued again for another server" in err and "6/6" in err
        a2 = FakeComfy()
        again = ["run", args[1], "--server", a2.url, *args[6:]]  # resume with another server: all outputs there
        assert vdm(*again) == 0 and a2.prompts == []
        a2.close()
    finally:
        a.close()


def test_server_pool_fails_a_clip_only_when_every_server_failed_it(tmp_path, capsys):
    clips, out = tmp_path / "in", tmp_path / "out"
    write_clips(clips, [1, 2], frames=2)
    a, b = FakeComfy(fail_node=True), FakeComfy(fail_node=True)
    try:
        assert finishes(vdm, "run", ROOT / "workflows" / "api" / "extend_video.json", "--server", a.url, "--server",
                        b.url, "--input-dir", clips, "--output-dir", out) == 1
        assert len(a.prompts) == len(b.prompts) == 2  # each clip was tried on both
        err = capsys.readouterr().err
        assert "2 clip(s) failed" in err and "out of memory" in err
    finally:
        a.close()
        b.close()


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name, body", [("out.mp4", lambda: video_bytes(1)), ("out.png", png_bytes)],
                         ids=["mp4", "png"])
def test_download_saves_a_complete_readable_file(name, body, tmp_path):
    fake = FakeComfy()
    fake.files[("vdm", name)] = body()
    try:
        item = {"filename": name, "subfolder": "vdm", "type": "output"}
        assert finishes(remote.Server(fake.url).download, item, tmp_path / name) == tmp_path / name
        assert (tmp_path / name).read_bytes() == body()
        assert [p.name for p in tmp_path.iterdir()] == [name]
    finally:
        fake.close()


@pytest.mark.parametrize("name, body, cut, message", [
    ("out.mp4", lambda: video_bytes(1), "/view", r"cut off after [\d,]+ of [\d,]+ bytes"),
    ("out.png", png_bytes, "/view", r"cut off after [\d,]+ of [\d,]+ bytes"),
    ("out.mp4", lambda: video_bytes(1)[:-200], None, "not a readable mp4"),  # all bytes came; the file is cut
    ("out.mp4", lambda: b"not a video" * 100, None, "not a readable mp4"),
    ("out.png", lambda: png_bytes()[:-20], None, "not a readable png"),
], ids=["mp4-cut-off", "png-cut-off", "mp4-truncated", "mp4-garbage", "png-truncated"])
def test_download_refuses_a_cut_off_or_unreadable_file(name, body, cut, message, tmp_path):
    fake = FakeComfy(cut=cut)
    fake.files[("vdm", name)] = body()
    try:
        item = {"filename": name, "subfolder": "vdm", "type": "output"}
        with pytest.raises(graph.WorkflowError, match=message):
            finishes(remote.Server(fake.url).download, item, tmp_path / name)
        assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
    finally:
        fake.close()


@pytest.mark.parametrize("cut", ["/view", "/history"])
def test_server_pool_requeues_a_clip_whose_reply_was_cut_off(cut, tmp_path, capsys):
    clips, out = tmp_path / "in", tmp_path / "out"
    write_clips(clips, [1, 2, 3], frames=2)
    good, bad = FakeComfy(delay=0.3), FakeComfy(cut=cut)
    try:
        assert finishes(vdm, "run", ROOT / "workflows" / "api" / "extend_video.json", "--server", good.url,
                        "--server", bad.url, "--input-dir", clips, "--output-dir", out) == 0
        names = sorted(p.name for p in out.iterdir())
        assert names == ["clip1.mp4", "clip2.mp4", "clip3.mp4"]  # no temporary files either
        assert len(good.prompts) == 3 and bad.prompts  # the bad server had clips; each ran once on the good one
        assert sorted((out / n).read_bytes() for n in names) == sorted(good.made.values())
        err = capsys.readouterr().err
        assert "queued again for another server" in err and "3/3" in err
    finally:
        good.close()
        bad.close()


def test_server_pool_requeues_a_clip_after_any_error(tmp_path, monkeypatch):
    servers = [remote.Server("http://127.0.0.1:1"), remote.Server("http://127.0.0.1:2")]
    clips = [pool.Clip(tmp_path / f"clip{i}.mp4", {}, {}) for i in (1, 2, 3)]

    def run_on_server(server, prompt, outputs, log):
        if server.url.endswith(":1"):
            raise KeyError("prompt_id")  # not a WorkflowError nor an OSError
        threading.Event().wait(0.05)
        return [tmp_path / f"{server.url[-1]}-{len(prompt)}"]

    monkeypatch.setattr(pool, "run_on_server", run_on_server)
    written, failed = finishes(pool.run_pool, servers, clips, seconds=30,
                               log=lambda msg: None, under=lambda item: tmp_path)
    assert failed == [] and len(written) == 3 and all(p.name.startswith("2-") for p in written)
    assert all(c.failed_on <= {"http://127.0.0.1:1"} for c in clips)


def test_one_server_batch_fails_a_clip_on_any_error_and_goes_on(tmp_path, monkeypatch, capsys):
    """A malformed reply (here a KeyError) fails that clip only; the other clips of the folder still run."""
    from vdm_app import batch

    clips, out = tmp_path / "in", tmp_path / "out"
    write_clips(clips, [1, 2], frames=2)
    ran = []

    def run_on_server(server, prompt, outputs, log):
        ran.append(1)
        if len(ran) == 1:
            raise KeyError("prompt_id")
        return []

    monkeypatch.setattr(batch, "run_on_server", run_on_server)
    assert vdm("run", ROOT / "workflows" / "api" / "extend_video.json", "--input-dir", clips, "--output-dir", out,
               "--server", "http://127.0.0.1:1") == 1
    err = capsys.readouterr().err
    assert len(ran) == 2 and "FAILED clip1.mp4: KeyError" in err and "1 clip(s) failed: clip1.mp4" in err


@pytest.mark.parametrize("cut", ["/view", "/history"])
def test_a_clip_cut_off_on_its_server_fails_and_runs_again_on_rerun(cut, tmp_path, capsys):
    clips, out = tmp_path / "in", tmp_path / "out"
    write_clips(clips, [1], frames=2)
    args = ["run", ROOT / "workflows" / "api" / "extend_video.json", "--input-dir", clips, "--output-dir", out]
    bad = FakeComfy(cut=cut)
    try:
        assert finishes(vdm, *args, "--server", bad.url) == 1
        err = capsys.readouterr().err
        assert "FAILED clip1.mp4" in err and "1 clip(s) failed: clip1.mp4" in err
        assert not out.exists() or list(out.iterdir()) == []
    finally:
        bad.close()
    good = FakeComfy()
    try:
        assert finishes(vdm, *args, "--server", good.url) == 0  # the rerun runs the clip again
        assert [p.name for p in out.iterdir()] == ["clip1.mp4"]
        assert (out / "clip1.mp4").read_bytes() == next(iter(good.made.values()))
    finally:
        good.close()
