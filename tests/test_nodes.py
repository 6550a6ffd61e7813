"""The ComfyUI nodes, imported the way ComfyUI imports a custom-node folder, against small stand-ins for
ComfyUI's modules (tests/comfy_stubs.py). Every node runs under torch.inference_mode(), like in ComfyUI."""
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import comfy_stubs
from comfy_pack import stubbed_pack
from vdm_core import checkpoint
from vdm_core.unet3d import UNet3D, UNet3DConfig

ROOT = Path(__file__).resolve().parents[1]
NODE_IDS = {"VDM_LoadModel", "VDM_SampleDDIMv", "VDM_ExtendClip", "VDM_InterpolateFrames", "VDM_UpscaleVideo",
            "VDM_SpriteClip", "VDM_FromComfyModel"}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """(pack module, {node_id: node class}, stub modules) with the pack loaded from a folder named like a
    registry install (a dash in it), under ComfyUI's mangled module name."""
    tmp = tmp_path_factory.mktemp("comfy")
    models = tmp / "models"
    (models / "vdm").mkdir(parents=True)
    torch.manual_seed(0)
    checkpoint.save(models / "vdm" / "tiny.safetensors",
                    UNet3D(UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2, resolution=8, frames=4)))
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(models / "vdm" / "some-vae.safetensors"))
    (models / "vdm" / "notes.txt").write_text("not a model")
    pack = tmp / "custom_nodes" / "comfyui-vdm"
    pack.parent.mkdir()
    pack.symlink_to(ROOT, target_is_directory=True)
    stubs = comfy_stubs.modules(str(models))
    with stubbed_pack(stubs, pack, str(pack).replace(".", "_x_")) as (module, extension, nodes):
        yield module, nodes, stubs, extension


def run(node, **inputs):
    """Execute a node the way ComfyUI does: inside torch.inference_mode(), outputs as a tuple."""
    with torch.inference_mode():
        return node.execute(**inputs).args


def test_entry_point_registers_every_node(comfy):
    module, nodes, stubs, extension = comfy
    assert isinstance(extension, comfy_stubs.ComfyExtension)
    assert set(nodes) == NODE_IDS
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")  # V1 mappings would make ComfyUI ignore the entry point
    assert (ROOT / module.WEB_DIRECTORY / "docs").is_dir()
    for node_id in NODE_IDS:
        assert (ROOT / module.WEB_DIRECTORY / "docs" / f"{node_id}.md").is_file(), node_id


def test_schemas_are_complete(comfy):
    _, nodes, _, _ = comfy
    for node_id, node in nodes.items():
        schema = node.GET_SCHEMA()  # validates: unique ids, no input id equal to an output id
        assert node_id.startswith("VDM_") and schema.category.startswith("VDM/") and schema.display_name
        assert len(schema.description) > 40, node_id
        for i in schema.inputs:
            assert i.tooltip, f"{node_id}.{i.id} has no tooltip"
        for o in schema.outputs:
            assert o.tooltip and o.display_name, f"{node_id} output {o.id}"
        assert not {i.id for i in schema.inputs} & {o.id for o in schema.outputs}


def test_stub_schema_check_is_real(comfy):
    _, _, stubs, _ = comfy
    io = stubs["comfy_api.latest"].io

    class Clash(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema("X", inputs=[io.Float.Input("fps")], outputs=[io.Float.Output("fps")])

        @classmethod
        def execute(cls, fps):
            return io.NodeOutput(fps)

    with pytest.raises(ValueError, match="unique between inputs and outputs"):
        Clash.GET_SCHEMA()


def test_schemas_are_the_node_spec(comfy):
    """Every ComfyUI input is the spec's: same name, type, default, range and tooltip (the CLI and vdm run are
    built from the same spec, so their defaults cannot differ from the widgets')."""
    module, nodes, _, _ = comfy
    spec = sys.modules[module.__name__ + ".vdm_app.spec"]
    assert set(nodes) == set(spec.NODES)
    for node_id, node in nodes.items():
        schema, want = node.GET_SCHEMA(), spec.NODES[node_id]
        assert (schema.display_name, schema.category, schema.description) == (want.display_name, want.category,
                                                                                 want.description)
        assert [i.id for i in schema.inputs] == [i.name for i in want.inputs]
        assert [o.id for o in schema.outputs] == [o.name for o in want.outputs]
        for got, inp in zip(schema.inputs, want.inputs):
            assert got.io_type == inp.type and got.tooltip == inp.tooltip and bool(got.optional) == inp.optional
            if inp.widget:
                assert got.default == inp.default, (node_id, inp.name)
            if inp.type in ("INT", "FLOAT"):
                assert (got.min, got.max) == (inp.min, inp.max), (node_id, inp.name)
            if inp.type == "COMBO" and not inp.dynamic:
                assert list(got.options) == list(inp.options)
    guidance = next(i for i in nodes["VDM_SampleDDIMv"].GET_SCHEMA().inputs if i.id == "guidance_weight")
    assert guidance.default == -1 and "auto" in guidance.tooltip and "4·factor²" in guidance.tooltip


def test_the_extend_video_example_finds_its_clip_without_overwriting_a_users_file(comfy, tmp_path):
    module, _, stubs, _ = comfy
    clip = Path(stubs["folder_paths"].get_input_directory()) / "vdm_sprites.mp4"
    assert clip.is_file()  # written when the pack loaded
    info = checkpoint_free_probe(clip)
    assert info == (16, 16, 16, 8.0)
    clip.write_bytes(b"the artist's own clip")
    sample_clip = sys.modules[module.__name__ + ".nodes.sample_clip"]
    sample_clip.put_sample_clip()
    assert clip.read_bytes() == b"the artist's own clip"
    clip.unlink()
    sample_clip.put_sample_clip()
    assert checkpoint_free_probe(clip) == (16, 16, 16, 8.0)


def checkpoint_free_probe(path):
    from vdm_core import video_io

    info = video_io.probe(path)
    return info.frames, info.width, info.height, float(info.fps)


def test_widget_types_and_seed(comfy):
    _, nodes, _, _ = comfy
    types = {n: {i.id: i.io_type for i in node.GET_SCHEMA().inputs} for n, node in nodes.items()}
    assert types["VDM_SampleDDIMv"]["model"] == "VDM_MODEL" and types["VDM_SampleDDIMv"]["job"] == "VDM_JOB"
    for job_node in ("VDM_ExtendClip", "VDM_InterpolateFrames", "VDM_UpscaleVideo"):
        assert types[job_node]["frames"] == "IMAGE" and types[job_node]["audio"] == "AUDIO"
        assert [o.io_type for o in nodes[job_node].GET_SCHEMA().outputs] == ["VDM_JOB"]
    outputs = [(o.io_type, o.display_name) for o in nodes["VDM_SampleDDIMv"].GET_SCHEMA().outputs]
    assert outputs == [("IMAGE", "images"), ("FLOAT", "fps"), ("AUDIO", "audio")]
    seed = next(i for i in nodes["VDM_SampleDDIMv"].GET_SCHEMA().inputs if i.id == "seed")
    assert seed.control_after_generate and seed.min == 0 and seed.max == 0xFFFFFFFFFFFFFFFF


def test_loader_lists_bundled_first_then_safetensors(comfy):
    _, nodes, stubs, _ = comfy
    combo = next(i for i in nodes["VDM_LoadModel"].GET_SCHEMA().inputs if i.id == "model_name")
    assert combo.options == ["vdm-sprites-16 (bundled)", "some-vae.safetensors", "tiny.safetensors"]
    assert stubs["folder_paths"].folder_names_and_paths["vdm"][1] >= {".safetensors"}


def test_loader_errors_an_artist_can_act_on(comfy):
    _, nodes, _, _ = comfy
    with pytest.raises(ValueError, match="Load VDM: some-vae.safetensors .* not a VDM checkpoint"):
        run(nodes["VDM_LoadModel"], model_name="some-vae.safetensors", dtype="auto")
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        run(nodes["VDM_LoadModel"], model_name="gone.safetensors", dtype="auto")


def test_generate_extend_and_sample_with_guidance(comfy):
    _, nodes, stubs, _ = comfy
    mm, utils = stubs["comfy.model_management"], stubs["comfy.utils"]
    updates = []
    utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total, preview)))
    (model,) = run(nodes["VDM_LoadModel"], model_name="tiny.safetensors", dtype="auto")
    assert model.handle.model.device == torch.device("cpu")  # what ModelPatcher sets on the module it wraps
    images, fps = run(nodes["VDM_SpriteClip"], seed=5, size=8, length=3, fps=10.0)
    sound = {"waveform": torch.zeros(1, 1, 30), "sample_rate": 100}
    (job,) = run(nodes["VDM_ExtendClip"], new_frames=2, context=0, window=0, tile=0, frames=images, fps=fps,
                 audio=sound)
    loads = len(mm.state["loads"])
    out, out_fps, out_audio = run(nodes["VDM_SampleDDIMv"], model=model, length=16, width=16, height=16, steps=2,
                                  eta=0.0, guidance_weight=8.0, method="reconstruction", seed=3, job=job)
    assert out.shape == (5, 8, 8, 3) and out_fps == 10.0 and out_audio["waveform"].shape[-1] == 50
    assert torch.allclose(out[:3], images, atol=1e-6)
    assert len(mm.state["loads"]) == loads + 1
    patcher, memory_required, full = mm.state["loads"][-1]
    assert patcher is model.handle and memory_required > 0 and full
    assert updates and updates[-1][0] == updates[-1][1]
    kind, picture, size = updates[-1][2]
    assert kind == "JPEG" and picture.mode == "RGB" and size == 512
    utils.set_progress_bar_global_hook(None)


def test_interpolate_then_upscale_chain(comfy):
    _, nodes, _, _ = comfy
    (model,) = run(nodes["VDM_LoadModel"], model_name="tiny.safetensors", dtype="fp32")
    images, fps = run(nodes["VDM_SpriteClip"], seed=1, size=4, length=2, fps=6.0)
    (interp,) = run(nodes["VDM_InterpolateFrames"], multiplier=2, window=0, overlap=0, tile=0, frames=images, fps=fps)
    (both,) = run(nodes["VDM_UpscaleVideo"], factor=2, window=0, overlap=0, tile=0, job=interp)
    out, out_fps, out_audio = run(nodes["VDM_SampleDDIMv"], model=model, steps=1, guidance_weight=4.0, job=both)
    assert out.shape == (3, 8, 8, 3) and out_fps == 12.0 and out_audio is None


def test_unconditional_sample_defaults(comfy):
    _, nodes, _, _ = comfy
    (model,) = run(nodes["VDM_LoadModel"], model_name="tiny.safetensors")
    out, out_fps, out_audio = run(nodes["VDM_SampleDDIMv"], model=model, length=2, width=8, height=8, steps=1)
    assert out.shape == (2, 8, 8, 3) and out_fps == 8.0 and out_audio is None


def test_job_node_without_a_clip_says_what_to_connect(comfy):
    _, nodes, _, _ = comfy
    with pytest.raises(ValueError, match="connect a clip to `frames`"):
        run(nodes["VDM_UpscaleVideo"], factor=2)
    images, fps = run(nodes["VDM_SpriteClip"], seed=1, size=4, length=1, fps=6.0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        run(nodes["VDM_InterpolateFrames"], frames=images)


def test_cancel_stops_sampling_and_resets(comfy):
    _, nodes, stubs, _ = comfy
    mm, utils = stubs["comfy.model_management"], stubs["comfy.utils"]
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        mm.interrupt_current_processing(True)  # the user presses Cancel during the first step

    utils.set_progress_bar_global_hook(hook)
    (model,) = run(nodes["VDM_LoadModel"], model_name="tiny.safetensors")
    with pytest.raises(mm.InterruptProcessingException):
        run(nodes["VDM_SampleDDIMv"], model=model, length=4, width=8, height=8, steps=5)
    assert seen == [1] and not mm.processing_interrupted()
    mm.interrupt_current_processing(True)  # Cancel pressed before the first step ends: no step completes
    with pytest.raises(mm.InterruptProcessingException):
        run(nodes["VDM_SampleDDIMv"], model=model, length=4, width=8, height=8, steps=5)
    assert seen == [1]
    utils.set_progress_bar_global_hook(None)
    out = run(nodes["VDM_SampleDDIMv"], model=model, length=2, width=8, height=8, steps=1)[0]
    assert out.shape == (2, 8, 8, 3)


def test_sample_with_posterior_and_consistency_and_without_iterations(comfy, monkeypatch):
    """The new methods run through the node; `iterations` is optional, so a prompt saved before it existed (no
    `iterations`) runs with the default, and a given value reaches the sampler."""
    from vdm_core import settings
    _, nodes, _, _ = comfy
    seen = []
    for module in [m for n, m in sys.modules.items() if n.endswith("vdm_core.sampling")]:  # the pack's own copy too
        spread, consistent = module.products_per_step, module.consistent  # posterior's: spread over the grid
        monkeypatch.setattr(module, "products_per_step", lambda phis, it, settles, real=spread:
                            seen.append(("posterior", it)) or real(phis, it, settles))
        monkeypatch.setattr(module, "consistent", lambda den, obs, it, real=consistent:
                            seen.append(("consistent", it)) or real(den, obs, it))
    (model,) = run(nodes["VDM_LoadModel"], model_name="tiny.safetensors", dtype="fp32")
    images, fps = run(nodes["VDM_SpriteClip"], seed=5, size=8, length=3, fps=10.0)
    (job,) = run(nodes["VDM_ExtendClip"], new_frames=2, context=0, window=0, tile=0, frames=images, fps=fps)
    for method, extra in (("posterior", {"iterations": 2}), ("posterior", {}), ("consistency", {})):
        out, _, _ = run(nodes["VDM_SampleDDIMv"], model=model, steps=2, method=method, seed=3, job=job, **extra)
        assert out.shape == (5, 8, 8, 3) and torch.allclose(out[:3], images, atol=1e-6)
    default = settings.DEFAULT_ITERATIONS
    assert seen == [("posterior", 2), ("posterior", default), ("consistent", default)]
