"""vdm_core.contract: the pack's U-Net, a host's model (external.SigmaModel) and the test oracles are models in
the written contract, and capabilities() reads each the way the jobs rely on."""
import math

import pytest
import torch

from vdm_core import tasks
from vdm_core.contract import (HostedModel, LatentModel, Native, NativeSize, SizedModel, VideoModel, capabilities)
from vdm_core.external import LatentSpace, SigmaModel
from vdm_core.schedule import filled_within, sampling_angles
from vdm_core.unet3d import UNet3D, UNet3DConfig


def flow_model(**kw):
    """A flow-matching model (x = (1 − σ)·x0 + σ·ε) whose denoiser predicts x0 = 0."""
    return SigmaModel(lambda s: (1 - s, s), 1e-3, 1.0, lambda n: torch.linspace(1, 0, n + 1).tolist(),
                      channels=4, denoise=lambda x, s: torch.zeros_like(x), **kw)


class Oracle:
    """A test oracle with a native size: v̂ of x = 0 (the plain callable of tests/test_tasks.py with a config)."""

    config = Native(frames=4, resolution=8, channels=3)

    def __call__(self, z, phi):
        return z * torch.cos(phi).view(-1, 1, 1, 1, 1) / torch.sin(phi).view(-1, 1, 1, 1, 1).clamp_min(1e-3)


def test_the_pack_unet_is_a_sized_model():
    net = UNet3D(UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2, resolution=8, frames=4))
    assert isinstance(net, VideoModel) and isinstance(net, SizedModel) and isinstance(net.config, NativeSize)
    assert not isinstance(net, HostedModel)
    caps = capabilities(net)
    assert (caps.frames, caps.resolution, caps.channels) == (4, 8, 3)
    assert caps.device == torch.device("cpu") and caps.clip_x and caps.run is None and caps.space is None
    assert caps.angles(5, "both") == sampling_angles(5).tolist()  # the pack's cosine grid
    if torch.cuda.is_available():  # the device is where its weights are
        assert capabilities(net.to("cuda")).device.type == "cuda"


def test_a_host_model_is_hosted_and_latent_with_a_space():
    plain = flow_model(frames=21, device="cpu")
    assert isinstance(plain, HostedModel) and isinstance(plain, SizedModel)
    caps = capabilities(plain)
    assert (caps.frames, caps.resolution, caps.channels) == (21, None, 4)
    assert caps.angles(32, "both") == plain.angles(32) and caps.run == plain.run and caps.clip_x is False
    # posterior: the host's grid filled at low noise, at no more steps
    assert caps.angles(32, "posterior") == filled_within(plain.angles, 32) != plain.angles(32)
    assert len(caps.angles(32, "posterior")) <= len(plain.angles(32))
    assert caps.space is None and caps.device == torch.device("cpu")
    space = LatentSpace(decode=lambda x: x, decode_final=lambda x: x, channels=4, time=4, scale=8)
    assert isinstance(flow_model(space=space), LatentModel)
    assert capabilities(flow_model(space=space)).space is space


def test_oracles_are_models_with_or_without_a_size():
    caps = capabilities(Oracle())
    assert (caps.frames, caps.resolution, caps.channels, caps.device) == (4, 8, 3, None)
    bare = capabilities(lambda z, phi: z)
    assert (bare.frames, bare.resolution, bare.channels, bare.run, bare.space) == (None, None, None, None, None)
    assert bare.clip_x
    with pytest.raises(TypeError, match=r"model\(z, phi\)"):
        capabilities("not a model")


def test_a_model_without_a_native_length_samples_the_whole_clip_as_one_window():
    """Use ComfyUI Model on a class the pack does not know (no native frame count): every job runs with its
    defaults, the whole clip as one window; an extension conditions on every input frame."""
    calls = []

    def model(z, phi):
        calls.append(z.shape[2])
        return z * 0

    clip = torch.rand(3, 5, 4, 4) * 2 - 1
    out = tasks.extend(model, clip, 7, steps=2)
    assert out.shape == (3, 12, 4, 4) and torch.equal(out[:, :5], clip)
    assert set(calls) == {12}  # one window over all 12 frames
    calls.clear()
    assert tasks.interpolate(model, clip, 3, steps=2).shape == (3, 13, 4, 4) and set(calls) == {13}
    calls.clear()
    assert tasks.generate(model, 9, 4, 4, steps=2).shape == (3, 9, 4, 4) and set(calls) == {9}


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_a_model_output_that_overflows_stops_sampling_with_a_clear_error(bad):
    """An fp16 overflow (±inf) must not be clamped into a constant clip: it is an error, as NaN is."""
    def model(z, phi):
        v = torch.zeros_like(z)
        v[..., 0, 0] = bad
        return v

    with pytest.raises(FloatingPointError, match=r"NaN/inf at step 1/3.*float32 or bfloat16"):
        tasks.generate(model, 4, 4, 4, steps=3)  # unguided: x̂ is clamped to [-1, 1] right after the model
    with pytest.raises(FloatingPointError, match=r"NaN/inf at step 1/3"):
        tasks.extend(model, torch.zeros(3, 2, 4, 4), 2, steps=3, window=4, method="replacement")
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        tasks.upscale(model, torch.zeros(3, 2, 2, 2), 2, steps=3, window=4)  # guided: inf inside autograd too


def test_sigma_model_finds_the_noise_level_of_any_angle():
    model = flow_model()
    for sigma in (1e-3, 0.01, 0.37, 0.999):
        assert model.sigma_of(model.phi_of(sigma)) == pytest.approx(sigma, rel=1e-12)
    assert model.sigma_of(math.pi / 2 + 1e-3) == 1.0 and model.sigma_of(0.0) == pytest.approx(1e-3)
