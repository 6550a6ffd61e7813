"""vdm_app.node_functions: the node functions (called through the node spec, with its defaults, as every front end
calls them) on the CPU with a tiny random checkpoint at 1–2 steps."""
import pytest
import torch
from safetensors.torch import save_file

from vdm_app import clips, models, node_functions, spec
from vdm_core import checkpoint, precision, tasks
from vdm_core.unet3d import UNet3D, UNet3DConfig

TINY = UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2, resolution=8, frames=4)
HOOKS = {"progress", "load_model_to_device", "oom_errors", "resolve_path", "device"}


def node(node_id, **values):
    """Run a node as the front ends do: ``node_functions.run_node`` with the given inputs (and host hooks)."""
    hooks = {k: values.pop(k) for k in list(values) if k in HOOKS}
    return node_functions.run_node(node_id, values, **hooks)


def load(model_name, dtype="auto", **hooks):
    return node("VDM_LoadModel", model_name=model_name, dtype=dtype, **hooks)


def sample(model, job, **values):
    return node("VDM_SampleDDIMv", model=model, job=job, **values)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    checkpoint.save(path, UNet3D(TINY))
    return path


@pytest.fixture(scope="module")
def model(tiny_path):
    return load(str(tiny_path), "fp32")[0]


@pytest.fixture(scope="module")
def sprites():
    return node("VDM_SpriteClip", seed=3, size=8, length=3, fps=12.0)


def audio(samples=60, rate=40):
    return {"waveform": torch.linspace(-1, 1, 2 * samples).reshape(1, 2, samples), "sample_rate": rate}


# ---------------------------------------------------------------------------------------------- layout


def test_image_to_clip_and_back():
    image = torch.rand(5, 6, 7, 3)
    before = image.clone()
    clip = clips.image_to_clip(image)
    assert clip.shape == (3, 5, 6, 7) and clip.dtype == torch.float32
    assert torch.allclose(clip[:, 2, 3, 4], image[2, 3, 4] * 2 - 1)
    back = clips.clip_to_image(clip)
    assert back.shape == image.shape and back.is_contiguous()
    assert torch.allclose(back, image, atol=1e-6)
    assert torch.equal(image, before)  # input untouched


def test_one_frame_keeps_its_frame_axis():
    image = torch.rand(1, 4, 4, 3)
    clip = clips.image_to_clip(image)
    assert clip.shape == (3, 1, 4, 4)
    assert clips.clip_to_image(clip).shape == (1, 4, 4, 3)
    assert clips.clip_to_image(torch.zeros(3, 1, 2, 2)).shape == (1, 2, 2, 3)


def test_conversion_maps_ranges_and_clamps():
    image = torch.tensor([0.0, 1.0, 1.5, -0.2]).reshape(4, 1, 1, 1).expand(4, 1, 1, 3)
    clip = clips.image_to_clip(image)
    assert clip[0, :, 0, 0].tolist() == [-1.0, 1.0, 1.0, -1.0]
    assert clips.clip_to_image(torch.full((3, 1, 1, 1), 2.0)).max() == 1.0


@pytest.mark.parametrize("image, message", [
    (torch.rand(0, 4, 4, 3), "empty"),
    (torch.rand(4, 4, 3), "IMAGE batch"),
    (torch.rand(2, 4, 4, 4), "4 channels"),
])
def test_bad_images_name_the_input(image, message):
    with pytest.raises(ValueError, match=message) as e:
        clips.image_to_clip(image, name="frames")
    assert "frames" in str(e.value)


def test_preview_strip_is_visible_for_tiny_clips():
    pic = clips.preview_strip(torch.rand(4, 8, 8, 3))
    assert pic.mode == "RGB" and pic.height >= 128 and pic.width == 4 * pic.height


# ---------------------------------------------------------------------------------------------- load


def test_load_model_dtypes(tiny_path):
    m = load(str(tiny_path), "auto")[0]
    assert isinstance(m, models.VDMModel) and m.network.dtype == torch.float32 and m.network.device.type == "cpu"
    assert load(str(tiny_path), "bf16")[0].network.dtype == torch.bfloat16
    assert precision.resolve("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="must be one of auto, fp32, fp16, bf16"):
        precision.resolve("fp8", "cpu")


def test_load_model_under_inference_mode_gives_normal_weights(tiny_path):
    with torch.inference_mode():
        m = load(str(tiny_path), "fp32")[0]
    assert not any(p.is_inference() for p in m.network.parameters())


def test_load_model_resolves_names(tiny_path):
    seen = []
    load("tiny.safetensors", resolve_path=lambda n: seen.append(n) or tiny_path)
    assert seen == ["tiny.safetensors"]


def test_non_vdm_safetensors_says_so(tmp_path):
    other = tmp_path / "sd-vae.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(checkpoint.CheckpointError, match="not a VDM checkpoint"):
        load(str(other))


def test_missing_bundled_model_says_what_to_do(monkeypatch, tmp_path, tiny_path):
    monkeypatch.setattr(checkpoint, "BUNDLED", tmp_path / "absent.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="models/vdm"):
        load(spec.BUNDLED_NAME)
    monkeypatch.setattr(checkpoint, "BUNDLED", tiny_path)
    assert load(spec.BUNDLED_NAME)[0].network.config.frames == TINY.frames


# ---------------------------------------------------------------------------------------------- jobs


def test_sprite_clip(sprites):
    images, fps = sprites
    assert images.shape == (3, 8, 8, 3) and fps == 12.0
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, node("VDM_SpriteClip", seed=3, size=8, length=3, fps=12.0)[0])


def test_extend_job_pads_audio_with_silence(sprites):
    images, fps = sprites
    sound = audio(samples=10, rate=40)  # 0.25 s; the output is 5 frames at 12 fps ≈ 0.4167 s → 17 samples
    (job,) = node("VDM_ExtendClip", frames=images, fps=fps, audio=sound, new_frames=2)
    assert job.job.output_shape() == (3, 5, 8, 8) and job.output_fps == 12.0
    out = job.output_audio()
    assert out["waveform"].shape == (1, 2, 17) and out["sample_rate"] == 40
    assert torch.equal(out["waveform"][..., :10], sound["waveform"]) and out["waveform"][..., 10:].abs().max() == 0
    assert sound["waveform"].shape == (1, 2, 10)  # input untouched
    long = audio(samples=100, rate=40)
    assert node("VDM_ExtendClip", frames=images, fps=fps, audio=long, new_frames=2)[0].output_audio() is not None
    assert node("VDM_ExtendClip", frames=images, fps=fps, audio=long, new_frames=2)[0].output_audio()["waveform"].shape[-1] == 100


def test_interpolate_job_keeps_duration(sprites):
    images, fps = sprites
    sound = audio()
    (job,) = node("VDM_InterpolateFrames", frames=images, fps=fps, audio=sound, multiplier=3)
    assert job.job.output_shape() == (3, 7, 8, 8)
    assert job.output_fps == 36.0 and job.output_audio()["waveform"] is sound["waveform"]  # not copied


def test_chained_interpolate_then_upscale_is_one_job(sprites):
    images, fps = sprites
    (interp,) = node("VDM_InterpolateFrames", frames=images, fps=fps, multiplier=2, window=4)
    (both,) = node("VDM_UpscaleVideo", job=interp, factor=2)
    assert both.job.multiplier == 2 and both.job.factor == 2 and both.job.window == 4
    assert both.job.output_shape() == (3, 5, 16, 16) and both.output_fps == 24.0
    (twice,) = node("VDM_InterpolateFrames", job=interp, multiplier=2)
    assert twice.job.output_shape()[1] == 9  # (3 − 1)·4 + 1


def test_job_errors_name_what_to_change(sprites):
    images, fps = sprites
    with pytest.raises(ValueError, match="connect a clip to `frames`"):
        node("VDM_ExtendClip", new_frames=2)
    with pytest.raises(ValueError, match="either `frames` or `job`"):
        node("VDM_UpscaleVideo", frames=images, job=node("VDM_ExtendClip", frames=images, new_frames=1)[0])
    with pytest.raises(ValueError, match="interpolation needs a clip of at least 2 frames"):
        node("VDM_InterpolateFrames", frames=images[:1], fps=fps)
    with pytest.raises(ValueError, match="extend cannot be combined"):
        node("VDM_InterpolateFrames", job=node("VDM_ExtendClip", frames=images, new_frames=1)[0])
    with pytest.raises(ValueError, match="empty"):
        node("VDM_ExtendClip", frames=images[:0])
    with pytest.raises(ValueError, match="fps must be from 0.01"):
        node("VDM_ExtendClip", frames=images, fps=0.0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(spec.InputError, match="Extend Clip \\(VDM\\): fps must be a finite number"):
            node("VDM_ExtendClip", frames=images, fps=bad)


def test_lazy_audio_without_sound_counts_as_none(sprites):
    class NoSound(dict):
        def __getitem__(self, key):
            raise RuntimeError("ffmpeg: no audio stream")

    images, fps = sprites
    assert node("VDM_ExtendClip", frames=images, audio=NoSound(), new_frames=1)[0].audio is None


# ---------------------------------------------------------------------------------------------- sampling


def test_extend_sample_under_inference_mode(model, sprites):
    images, fps = sprites
    calls = []
    with torch.inference_mode():  # what ComfyUI does around every node
        (job,) = node("VDM_ExtendClip", frames=images, fps=fps, audio=audio(samples=10), new_frames=2)
        out, out_fps, out_audio = sample(model, job, steps=2, guidance_weight=8.0, seed=1,
                                                   progress=lambda d, t, p: calls.append((d, t, p.shape)))
    assert out.shape == (5, 8, 8, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.allclose(out[:3], images, atol=1e-6)  # known frames come back unchanged
    assert out_fps == 12.0 and out_audio["waveform"].shape[-1] == round(5 / 12 * 40)
    total = calls[0][1]
    assert [c[0] for c in calls] == list(range(1, total + 1)) and all(c[1] == total for c in calls)
    assert all(c[2][1:] == (8, 8, 3) and 1 <= c[2][0] <= clips.PREVIEW_FRAMES for c in calls)


def test_interpolate_upscale_and_factor_3(model, sprites):
    images, fps = sprites
    (both,) = node("VDM_UpscaleVideo", job=node("VDM_InterpolateFrames", frames=images[:2], fps=fps)[0], factor=2)
    out, out_fps, _ = sample(model, both, steps=1)
    assert out.shape == (3, 16, 16, 3) and out_fps == 24.0
    (three,) = node("VDM_UpscaleVideo", frames=images[:1], fps=fps, factor=3)  # 8×8 → 24×24: tiles of 8 do not divide evenly
    assert sample(model, three, steps=1, method="both")[0].shape == (1, 24, 24, 3)
    with pytest.raises(ValueError, match="Sample DDIM-v: method .replacement.*upscaling"):
        sample(model, three, steps=1, method="replacement")


def test_unconditional_is_seeded(model):
    a, fps, sound = sample(model, None, length=5, width=8, height=8, steps=2, seed=7)
    assert a.shape == (5, 8, 8, 3) and fps == spec.DEFAULT_FPS and sound is None
    b = sample(model, None, length=5, width=8, height=8, steps=2, seed=7)[0]
    assert torch.equal(a, b)
    big_seed = sample(model, None, length=2, width=8, height=8, steps=1, seed=0xFFFFFFFFFFFFFFFF)[0]
    assert big_seed.shape == (2, 8, 8, 3)


def test_progress_can_cancel(model):
    class Cancelled(Exception):
        pass

    def cancel(done, total, preview):
        raise Cancelled

    with pytest.raises(Cancelled):
        sample(model, None, length=2, width=8, height=8, steps=3, progress=cancel)


def test_progress_moves_with_every_tile_and_cancels_inside_a_step(model):
    """A host's cancel check lives in its progress hook: it runs after every tile, so a tiled step stops within
    one tile; the bar counts steps (2 here), not tile-steps."""
    reports = []
    sample(model, None, length=2, width=16, height=16, steps=2, progress=lambda d, t, p: reports.append((d, t)))
    assert reports == [(i + j / 9, 2) for i in range(2) for j in range(1, 10)]  # 3×3 tiles of 8 px per step

    class Cancelled(Exception):
        pass

    def cancel_at_fifth(done, total, preview):
        reports.append(done)
        if len(reports) == 5:
            raise Cancelled

    reports.clear()
    with pytest.raises(Cancelled):
        sample(model, None, length=2, width=16, height=16, steps=2, progress=cancel_at_fifth)
    assert reports[-1] < 1  # stopped inside the first step


def test_device_hook_is_used(model):
    seen = []

    def load(m, memory_required):
        seen.append(memory_required)
        return m.network

    sample(model, None, length=2, width=8, height=8, steps=1, load_model_to_device=load)
    assert len(seen) == 1 and seen[0] > 0
    assert models.move_to("cpu")(model, 0) is model.network


def test_out_of_memory_retries_smaller_then_names_settings(model, sprites, monkeypatch):
    class FakeOOM(RuntimeError):
        pass

    images, fps = sprites
    (job,) = node("VDM_ExtendClip", frames=images, fps=fps, new_frames=2)
    tried, real_run = [], tasks.run

    def run(network, job, *args, **kw):
        tried.append((job.window, job.tile))
        if len(tried) < 2:
            raise FakeOOM("CUDA out of memory")
        return real_run(network, job, *args, **kw)

    monkeypatch.setattr(tasks, "run", run)
    out = sample(model, job, steps=1, oom_errors=(FakeOOM,))[0]
    assert out.shape == (5, 8, 8, 3) and tried == [(None, None), (None, 4)]

    tried.clear()
    monkeypatch.setattr(tasks, "run", lambda *a, **k: tried.append(a[1].window) or (_ for _ in ()).throw(FakeOOM()))
    with pytest.raises(MemoryError, match="Lower `window` or `tile`"):
        sample(model, job, steps=1, oom_errors=(FakeOOM,))
    assert tried == [None, None, 2]


def test_every_node_has_a_function_whose_inputs_are_the_spec_inputs():
    """No function of a node carries its own defaults for the node's inputs: the spec's are the only ones."""
    import inspect

    assert {k for k, n in spec.NODES.items() if not n.host_only} == {
        "VDM_LoadModel", "VDM_SampleDDIMv", "VDM_ExtendClip", "VDM_InterpolateFrames", "VDM_UpscaleVideo",
        "VDM_SpriteClip"}
    for node_id, n in spec.NODES.items():
        if n.host_only:  # its function needs the host (ComfyUI): it lives in nodes/
            continue
        params = inspect.signature(node_functions.FUNCTIONS[node_id]).parameters
        names = {i.name for i in n.inputs}
        assert names <= set(params), node_id
        assert all(params[k].default is inspect.Parameter.empty for k in names), node_id
        assert set(params) - names <= HOOKS, node_id


def test_guidance_weight_auto_is_the_tuned_weight_for_the_job(model, sprites, monkeypatch):
    from vdm_core import sampling

    images, fps = sprites
    seen, real = [], sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda *a, **kw: seen.append(a[3].guidance_weight) or real(*a, **kw))
    for job, auto in ((node("VDM_ExtendClip", frames=images, fps=fps, new_frames=1)[0], 8.0),
                      (node("VDM_InterpolateFrames", frames=images[:2], fps=fps, multiplier=2)[0], 16.0),
                      (node("VDM_UpscaleVideo", frames=images[:1], fps=fps, factor=2)[0], 16.0),
                      (node("VDM_UpscaleVideo", frames=images[:1, :2, :2], fps=fps, factor=4)[0], 64.0)):
        seen.clear()
        sample(model, job, steps=1)  # guidance_weight: the spec default, auto
        assert set(seen) == {auto}
        seen.clear()
        sample(model, job, steps=1, guidance_weight=3.0)
        assert set(seen) == {3.0}
