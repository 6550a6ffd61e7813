"""Use ComfyUI Model (nodes/comfy_model.py, comfy_session.py, comfy_space.py) without ComfyUI: the glue on
stand-ins of ComfyUI's modules (tests/comfy_stubs.py) and of its model_sampling formulas
(tests/comfy_model_sampling.py).

* SigmaModel built the way the node builds it gives, for an exact Gaussian clip prior wrapped as every
  prediction type (EPS, V, V on the EDM schedule, V_DDPM, X0, flow with and without shift, LTX-Video's
  Flux shift), x̂ equal to the exact posterior mean on its own grid and between grid points; its angle
  grid starts at σ_max's angle and follows the shift.
* The session runs our loop inside the (stand-in) CFGGuider.sample: real sigma grid, zero noise of the
  window's shape, zero text conditioning, weights made in inference mode usable by the guidance, in-place
  models functionalized, cancel passed through, everything restored afterwards.
* The latent space of a stand-in VAE: differentiable decode through the probed affine un-normalisation,
  final decode and encode outside the session only.

The real ComfyUI runs of the same code are tests/harness/ (not CI).
"""
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import comfy_model_sampling as cms
import oracle
import comfy_stubs
from comfy_pack import stubbed_pack
from vdm_core import guidance, sampling, tasks
from vdm_core.contract import capabilities
from vdm_core.settings import DEFAULT_STEPS, SamplerSettings
from vdm_core.external import SigmaModel

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 4, 3, 2, 5)  # [B, C, F, h, w] latents


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """(the pack's nodes.comfy_model module, comfy_session, comfy_space, stub modules)."""
    stubs = comfy_stubs.modules(str(tmp_path_factory.mktemp("models")))
    name = "custom_nodes_comfyui-vdm_comfy_model"
    with stubbed_pack(stubs, name=name):
        yield (sys.modules[name + ".nodes.comfy_model"], sys.modules[name + ".nodes.comfy_session"],
               sys.modules[name + ".nodes.comfy_space"], stubs)


def prior(seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 0.5, 0.3 + torch.rand(shape, generator=g)


def posterior(mean, std, z, phi):
    """E[x0 | z] for z = cos φ·x0 + sin φ·ε, x0 ~ N(mean, std²)."""
    c, s, var = math.cos(phi), math.sin(phi), std ** 2
    return mean + c * var * (z - c * mean) / (c * c * var + s * s)


def x_hat(model, z, phi):
    return math.cos(phi) * z - math.sin(phi) * model(z, torch.full((z.shape[0],), phi))


def oracle_model(pack, prior, kind):
    """The exact denoiser of Gaussian ``prior`` as a SigmaModel of prediction type ``kind``, as the node builds it."""
    return oracle.hosted(prior, *pack[0].sampling_functions(cms.KINDS[kind]()))


# ---------------------------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("kind", sorted(cms.KINDS))
def test_sigma_model_of_each_prediction_type_gives_the_exact_posterior_mean(kind, pack):
    comfy_model, *_ = pack
    ms = cms.KINDS[kind]()
    mean, std = prior()
    oracle = cms.OracleModel(ms, mean, std)
    scaling, lo, hi, sigmas = comfy_model.sampling_functions(ms)
    model = SigmaModel(scaling, lo, hi, sigmas, channels=SHAPE[1], denoise=lambda x, s: oracle.apply_model(x, s))
    angles = model.angles(8)
    on_grid = angles[:-1]
    between = [(a + b) / 2 for a, b in zip(on_grid, on_grid[1:])] + [model.phi_min * 1.5]
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    for phi in on_grid + between:
        want = posterior(mean, std, z, phi)
        got = x_hat(model, z, phi)
        err = (got - want).abs().max() / want.abs().max()
        assert err < 1e-5, (kind, phi, float(err))


@pytest.mark.parametrize("kind", sorted(cms.KINDS))
def test_angle_grid_starts_at_sigma_max_and_ends_on_the_smallest_level(kind, pack):
    comfy_model, *_ = pack
    ms = cms.KINDS[kind]()
    scaling, lo, hi, sigmas = comfy_model.sampling_functions(ms)
    handed = []
    model = SigmaModel(scaling, lo, hi, sigmas, channels=1, session=lambda window, shape, levels: handed.append(levels))
    angles = model.angles(10)
    a, b = scaling(hi)
    assert angles[0] == pytest.approx(math.atan2(b, a), abs=1e-12)
    assert all(x > y for x, y in zip(angles, angles[1:])) and 0 < angles[-1]
    if kind.startswith("flow") or kind == "ltxv":
        assert angles[0] == pytest.approx(math.pi / 2, abs=1e-12)  # σ_max = 1: pure noise
    if kind == "eps":
        assert angles[0] == pytest.approx(math.atan(14.6146), abs=1e-4)
    # the session hands the host the grid's own noise levels, the last one followed by 0
    model.run(lambda: None, (1, 1, 2, 2, 2), angles)
    assert handed == [pytest.approx([s for s in sigmas(10) if s > 0] + [0.0], rel=1e-9)]


def test_the_grid_follows_the_shift(pack):
    comfy_model, *_ = pack

    def tangents(ms):
        model = SigmaModel(*comfy_model.sampling_functions(ms), channels=1)
        return [math.tan(p) for p in model.angles(8)[1:-1]]

    flat, wan = tangents(cms.KINDS["flow"]()), tangents(cms.KINDS["flow_shift8"]())
    ltxv = tangents(cms.KINDS["ltxv"]())
    assert [w / f for w, f in zip(wan, flat)] == pytest.approx([8.0] * len(flat), rel=1e-4)
    assert [t / f for t, f in zip(ltxv, flat)] == pytest.approx([math.exp(2.37)] * len(flat), rel=1e-4)


@pytest.mark.parametrize("kind", sorted(cms.KINDS))
def test_posterior_guidance_extends_through_each_prediction_type(kind, pack):
    """Extension of an AR(1) clip prior (16 frames, ρ 0.9, std 0.25; frames 0–7 known, frame 7+k has mean ρᵏ·x₇)
    wrapped in each prediction type's coordinates as the node reads them, at the nodes' default steps on the grid
    jobs sample posterior on (the model's own, filled at low noise: ``schedule.filled_within``): posterior guidance
    gets the conditional mean (worst-frame slope error ≤ 0.05; measured 0.022–0.043, 'both' at auto 0.15–0.36)
    and the exact conditional's spread within 0.9–1.1 (0.95–1.01 with the second-order steps posterior takes,
    ``sampling.ddim``; 0.84–0.91 with DDIM's; on the host's own 32-step grid 0.26–0.55 for Wan's shift, whose last
    level is the angle of a std-0.26 signal). The discrete schedules (EPS, V, V_DDPM, X0)
    start at σ_max = 14.6, short of pure noise; from noise alone, as ComfyUI's KSampler starts, their far frames
    undershot by 0.054, and with the start's signal α₀·x̃ (``sampling.sample``) they are within 0.022 like the
    rest."""
    prior = oracle.CorrelatedGaussian(16, 0.9, 0.25)
    model = oracle_model(pack, prior, kind)
    x = prior.draw(16, 24, 24, seed=22)
    obs, unknown, mean, var = oracle.job("extend", prior, x)
    angles = capabilities(model).angles(DEFAULT_STEPS, "posterior")
    out = sampling.sample(model, torch.randn(x.shape, generator=torch.Generator().manual_seed(20)), angles,
                          SamplerSettings(method="posterior"), observation=obs, clip=False)
    slopes, ratios = oracle.frame_fit(out[:, :, unknown], mean, var)
    assert max(abs(s - 1) for s in slopes) <= 0.05, slopes
    assert 0.9 <= min(ratios) and max(ratios) <= 1.1, ratios


@pytest.mark.parametrize("job", ["interpolate", "upscale2"])
def test_posterior_interpolates_and_upscales_on_wans_grid(job, pack):
    """Interpolation ×4 (keyframes 0, 4, 8, 12 of 16) and upscaling ×2 (2×2 block means known) of the AR(1) prior
    through a model on Wan's shift-8 grid at the nodes' default steps, posterior on its filled grid: the
    unknown frames' slope on the exact conditional mean within 0.05 (measured 0.013 / 0.000) and their spread
    within 0.9–1.1 of the exact conditional's (0.97–1.01 / 0.96–1.01; with DDIM's first-order steps 0.84–0.88 /
    0.81–0.86; on the host's grid 0.16–0.33 / 0.57–0.65, benchmarks/comfy_grid_oracles.py --jobs interpolate
    upscale2)."""
    settings = SamplerSettings(method="posterior").for_job(factor=2 if job == "upscale2" else 1)
    slopes, ratios = fit_on_wans_grid(pack, oracle.CorrelatedGaussian(16, 0.9, 0.25), job, settings, clips=16)
    assert max(abs(s - 1) for s in slopes) <= 0.05, slopes
    assert 0.9 <= min(ratios) and max(ratios) <= 1.1, ratios


def fit_on_wans_grid(pack, prior, job, settings, clips):
    """(slopes, variance ratios) of ``job``'s unknown frames (``oracle.job``) on ``clips`` clips of 24² of ``prior``,
    sampled with ``settings`` (resolved) through a model on Wan's shift-8 grid at the nodes' default steps."""
    model = oracle_model(pack, prior, "flow_shift8")
    x = prior.draw(clips, 24, 24, seed=22)
    obs, unknown, mean, var = oracle.job(job, prior, x)
    angles = capabilities(model).angles(DEFAULT_STEPS, settings.method)
    out = sampling.sample(model, torch.randn(x.shape, generator=torch.Generator().manual_seed(20)), angles, settings,
                          observation=obs, clip=False, generator=torch.Generator().manual_seed(21))
    return oracle.frame_fit(out[:, :, unknown], mean, var)


def test_posterior_extends_smooth_fields_on_wans_grid(pack):
    """A held-out prior whose denoiser's Jacobian has the spread spectrum of smooth images (the AR(1) series in
    time, each frame a smooth field of length 2 pixels: ``oracle.SeparableGaussian``), extended through a model on
    Wan's shift-8 grid at the nodes' defaults (method auto: posterior, 4 products per step on average): the new
    frames' worst slope on the exact conditional mean within 0.05 (measured 0.020; with 4 products at every step
    0.068, 'both' 0.18: benchmarks/comfy_grid_oracles.py --length 2). The solve's products go where its error
    matters (``posterior.products_per_step``)."""
    settings = SamplerSettings().for_job(extend=True)
    slopes, ratios = fit_on_wans_grid(pack, oracle.SeparableGaussian(16, 0.9, 0.25, 24, 2.0), "extend", settings,
                                      clips=64)
    assert max(abs(s - 1) for s in slopes) <= 0.05, slopes
    assert 0.8 <= min(ratios) and max(ratios) <= 1.25, ratios


def test_the_default_method_holds_the_contrast_of_a_long_extension_on_wans_grid(pack):
    """A clip of a slowly changing stationary prior (AR(1), ρ 0.97, std 0.25) extended by 8 windows (16 frames, 8 known)
    through a model on Wan's shift-8 grid at the nodes' defaults (method auto: posterior): every window's new frames
    keep 0.9–1.1 of the prior's contrast (measured 0.95–1.02; 'both' at auto climbs to 1.49 there,
    benchmarks/comfy_grid_oracles.py --drift)."""
    prior = oracle.CorrelatedGaussian(16, 0.97, 0.25)
    model = oracle_model(pack, prior, "flow_shift8")
    clip = prior.draw(1, 16, 16, seed=5)[0, :, :8]
    out = tasks.extend(model, clip, 64, window=16, seed=3)
    contrast = [out[:, 8 + 8 * w:16 + 8 * w].std().item() / 0.25 for w in range(8)]
    assert all(0.9 <= c <= 1.1 for c in contrast), contrast


def test_a_new_clip_at_the_default_method_keeps_the_hosts_grid(pack):
    """Without an observation the method only picks the step grid: method auto makes a new clip's first window on
    the host's own grid, as 'both' does, not on posterior's grid filled at low noise; its later windows, which
    know the frames before them, it conditions as posterior does."""
    prior = oracle.CorrelatedGaussian(16, 0.9, 0.25)
    model = oracle_model(pack, prior, "flow_shift8")
    default, both, post = (tasks.generate(model, 24, 4, 4, window=16, context=8, seed=2, **m)
                           for m in ({}, {"method": "both"}, {"method": "posterior"}))
    assert torch.equal(default[:, :16], both[:, :16]) and not torch.allclose(default[:, :16], post[:, :16], atol=1e-3)
    assert not torch.allclose(default[:, 16:], both[:, 16:], atol=1e-3)


# ---------------------------------------------------------------------------------------------- the node


def load_model(stubs, ms=None, cls=cms.WAN21, seed=0, **kw):
    """A stand-in MODEL as a loader makes it: built under inference mode (its weights are inference tensors)."""
    with torch.inference_mode():
        mean, std = prior(seed)
        base = cls(ms or cms.KINDS["flow_shift8"](), mean, std, **kw)
        return stubs["comfy.model_patcher"].ModelPatcher(base, load_device=torch.device("cpu"),
                                                          offload_device=torch.device("cpu"))


def node(pack, **inputs):
    comfy_model, *_ = pack
    values = {**dict(vae=None, positive=None, negative=None, cfg=1.0, checkpointing=False), **inputs}
    with torch.inference_mode():
        return comfy_model.VDMFromComfyModel.execute(**values).args[0]


def test_node_output_describes_the_model(pack):
    *_, stubs = pack
    patcher = load_model(stubs)
    vdm = node(pack, model=patcher)
    net = vdm.network
    assert vdm.handle is patcher and vdm.name == "WAN21"
    assert net.space is None and net.config.channels == SHAPE[1] and net.config.frames == 21
    assert net.config.resolution is None and net.device == torch.device("cpu") and net.clip_x is False
    with pytest.raises(RuntimeError, match="inside its host's session"):
        net(torch.zeros(SHAPE), torch.tensor([1.0]))


def test_the_window_samples_inside_cfg_guider(pack):
    *_, stubs = pack
    samplers = stubs["comfy.samplers"]
    patcher = load_model(stubs)
    net = node(pack, model=patcher).network
    angles = net.angles(6)
    mean, std = prior(0)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    before = len(samplers.state["samples"])
    with torch.inference_mode():  # as a node runs
        got = net.run(lambda: x_hat(net, z, angles[2]), SHAPE, angles)
    assert torch.allclose(got, posterior(mean, std, z, angles[2]), atol=2e-5)
    (record,) = samplers.state["samples"][before:]
    assert tuple(record["noise"].shape) == SHAPE and not record["noise"].any() and not record["latent"].any()
    sigmas = pack[0].sampling_functions(cms.KINDS["flow_shift8"]())[3]
    assert record["sigmas"].tolist() == pytest.approx([s for s in sigmas(6) if s > 0] + [0.0], rel=1e-6)
    assert record["sigmas"][0] == pytest.approx(1.0) and record["sigmas"][-1] == 0
    assert net.denoise is None  # only inside the session
    cond = patcher.model.conds_seen[-1][0]["cross_attn"]
    assert cond.shape == (1, 1, 8) and not cond.any()  # Wan: one zero token of text_dim


def test_guidance_reaches_weights_loaded_in_inference_mode(pack):
    """Reconstruction guidance through the session pulls the observed latent frame toward y, although the
    stand-in's weights were made under torch.inference_mode (they are cloned one by one in the session)."""
    *_, stubs = pack
    patcher = load_model(stubs)
    assert sum(p.is_inference() for p in patcher.model.parameters()) > 0
    net = node(pack, model=patcher).network
    angles = net.angles(8)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    y = torch.full((1, SHAPE[1], 1, *SHAPE[3:]), 1.5)
    obs = guidance.select_frames(y, (0,), SHAPE[2])
    errors = []
    for w in (0.0, 0.5, 1.0):
        with torch.inference_mode():
            settings = SamplerSettings(method="reconstruction", guidance_weight=w)
            x = net.run(lambda: sampling.sample(net, noise, angles, settings, observation=obs, clip=False), SHAPE,
                        angles)
        errors.append(float((x[:, :, :1] - y).abs().mean()))
    assert errors[0] > errors[1] > errors[2], errors
    assert sum(p.is_inference() for p in patcher.model.parameters()) == 0


def test_cfg_uses_a_zero_negative_and_positive_as_given(pack):
    *_, stubs = pack
    patcher = load_model(stubs)
    positive = [[torch.ones(1, 3, 8), {}]]
    net = node(pack, model=patcher, positive=positive, cfg=3.0).network
    angles = net.angles(2)
    with torch.inference_mode():
        net.run(lambda: net.x0(torch.zeros(SHAPE), angles[0]), SHAPE, angles)
    seen = patcher.model.conds_seen[-2:]
    assert [c[0]["cross_attn"].shape for c in seen] == [(1, 3, 8), (1, 1, 8)]
    assert seen[0][0]["cross_attn"].eq(1).all() and not seen[1][0]["cross_attn"].any()


def test_a_model_without_a_known_text_input_asks_for_positive(pack):
    *_, stubs = pack
    with pytest.raises(ValueError, match="connect `positive`"):
        node(pack, model=load_model(stubs, cls=cms.OracleModel))
    assert node(pack, model=load_model(stubs, cls=cms.OracleModel), positive=[[torch.zeros(1, 1, 8), {}]])


def test_a_model_that_adds_no_noise_is_refused(pack):
    *_, stubs = pack

    class NoNoise(cms.CONST):  # ComfyUI's IMG_TO_IMG_FLOW: x = x0 at every level
        def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
            return latent_image

    ms = cms.model_sampling(cms.DiscreteFlow(1.0), NoNoise)
    with pytest.raises(ValueError, match="adds no noise"):
        node(pack, model=load_model(stubs, ms))


class InPlaceOracle(cms.GaussianOracle):
    """Its forward updates a tensor autograd saved (as LTX-Video's blocks do): plain backward fails."""

    def forward(self, xc, sigma):
        t = xc.exp()
        t.mul_(1.0)
        return super().forward(xc + 0.0 * t, sigma)


class InPlaceModel(cms.WAN21):
    def __init__(self, ms, mean, std, text_dim=8):
        super().__init__(ms, mean, std, text_dim)
        self.diffusion_model = InPlaceOracle(ms, mean, std)
        self.diffusion_model.text_dim = text_dim


def test_an_in_place_model_is_functionalized_and_the_window_sampled_again(pack):
    _, session_mod, _, stubs = pack
    patcher = load_model(stubs, cls=InPlaceModel)
    vdm = node(pack, model=patcher)
    net, session = vdm.network, vdm.network._session
    angles = net.angles(4)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    obs = guidance.select_frames(torch.ones(1, SHAPE[1], 1, *SHAPE[3:]), (0,), SHAPE[2])
    plain = InPlaceOracle(cms.KINDS["flow"](), torch.zeros(SHAPE), torch.ones(SHAPE))
    xx = noise.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="inplace"):  # what the session catches
        torch.autograd.grad(plain(xx, torch.tensor([0.5])).sum(), xx)
    assert not session.functionalize
    with torch.inference_mode():
        x = net.run(lambda: sampling.sample(net, noise, angles, SamplerSettings(method="both", guidance_weight=1.0), observation=obs,
                                            clip=False), SHAPE, angles)
    assert session.functionalize and torch.isfinite(x).all()
    assert "forward" not in patcher.model.diffusion_model.__dict__  # unwrapped afterwards


def test_cancel_passes_through_and_the_session_is_restored(pack):
    _, session_mod, _, stubs = pack
    mm = stubs["comfy.model_management"]
    patcher = load_model(stubs)
    net = node(pack, model=patcher).network
    angles = net.angles(4)

    class Cancel(BaseException):  # 0.33's InterruptProcessingException is a BaseException
        pass

    for exc in (mm.InterruptProcessingException, Cancel):
        def fn():
            net.x0(torch.zeros(SHAPE), angles[0])
            raise exc()

        with pytest.raises(exc), torch.inference_mode():
            net.run(fn, SHAPE, angles)
        assert net.denoise is None and not net._session.active


def test_in_training_is_set_for_the_window_and_restored(pack, monkeypatch):
    *_, stubs = pack
    mm = stubs["comfy.model_management"]
    monkeypatch.setattr(mm, "in_training", False, raising=False)
    net = node(pack, model=load_model(stubs)).network
    seen = []
    with torch.inference_mode():
        net.run(lambda: seen.append(mm.in_training) or torch.zeros(SHAPE), SHAPE, net.angles(4))
    assert seen == [True] and mm.in_training is False


# ---------------------------------------------------------------------------------------------- torch helpers


def test_autograd_safe_replaces_inference_and_zombie_tensors(pack):
    _, session_mod, _, _ = pack
    with torch.inference_mode():
        net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    net[1].eval()
    x = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors"):
        net(x).sum().backward()
    net[0].weight.data = net[0].weight.data * 1  # a "zombie": no longer is_inference(), still unusable
    assert not net[0].weight.is_inference() and session_mod.unusable_for_autograd(net[0].weight)
    weight = net[0].weight.detach().clone()
    assert session_mod.autograd_safe(net) == 2 + 2 + 3  # linear and norm weight and bias; the norm's 3 buffers
    assert not any(session_mod.unusable_for_autograd(t) for t in [*net.parameters(), *net.buffers()])
    assert torch.equal(net[0].weight, weight)
    (g,) = torch.autograd.grad(net(x).sum(), x)
    assert torch.isfinite(g).all()
    assert session_mod.autograd_safe(net) == 0


def test_autograd_safe_conds_clones_nested_inference_tensors(pack):
    _, session_mod, _, _ = pack
    with torch.inference_mode():
        t = torch.ones(2)
    holder = SimpleNamespace(cond=t)
    conds = {"positive": [{"cross_attn": t, "model_conds": {"c": holder}, "n": 3}]}
    assert session_mod.autograd_safe_conds(conds) == 2
    assert not conds["positive"][0]["cross_attn"].is_inference() and not holder.cond.is_inference()


def test_checkpointed_blocks_give_the_same_gradient_and_are_removed(pack):
    _, session_mod, _, _ = pack
    torch.manual_seed(0)
    dm = torch.nn.Module()
    dm.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh()) for _ in range(3))

    def forward(x):
        for block in dm.blocks:
            x = block(x)
        return x

    x = torch.randn(2, 4, requires_grad=True)
    (want,) = torch.autograd.grad(forward(x).pow(2).sum(), x)
    with session_mod.checkpointed_blocks(dm) as n:
        assert n == 3
        (got,) = torch.autograd.grad(forward(x).pow(2).sum(), x)
    assert torch.allclose(got, want, atol=1e-6)  # each wrapper recomputes its own block
    assert all("forward" not in b.__dict__ for b in dm.blocks)


def test_functionalized_forward_differentiates_in_place_updates(pack):
    _, session_mod, _, _ = pack

    class M(torch.nn.Module):
        def forward(self, x, scale=1.0):
            h = torch.sigmoid(x)
            h.mul_(scale)  # sigmoid saved h for its backward
            return h

    m, x = M(), torch.randn(5, requires_grad=True)
    with pytest.raises(RuntimeError, match="inplace"):
        torch.autograd.grad(m(x, scale=2.0).sum(), x)
    with session_mod.functionalized(m):
        (g,) = torch.autograd.grad(m(x, scale=2.0).sum(), x)
    s = torch.sigmoid(x.detach())
    assert torch.allclose(g, 2 * s * (1 - s), atol=1e-6) and "forward" not in m.__dict__


# ---------------------------------------------------------------------------------------------- the VAE


class StandInDecoder(torch.nn.Module):
    """A causal ×4-in-time, ×2-in-space "VAE" with 3 of the latent channels as colours (ComfyUI's video
    VAEs: ``decode`` [B, C, T, h, w] → [B, 3, 1 + 4(T − 1), 2h, 2w] in about [-1, 1])."""

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Conv3d(4, 3, 1)

    def decode(self, z):
        frames = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(4, 2)], 2)
        return torch.tanh(self.mix(frames)).repeat_interleave(2, 3).repeat_interleave(2, 4)


class StandInVAE:
    def __init__(self, stubs):
        with torch.inference_mode():
            self.first_stage_model = StandInDecoder()
        self.latent_channels, self.vae_dtype, self.device, self.latent_dim = 4, torch.float32, torch.device("cpu"), 3
        self.patcher = stubs["comfy.model_patcher"].ModelPatcher(self.first_stage_model, torch.device("cpu"),
                                                                 torch.device("cpu"))
        self.encoded = []

    def temporal_compression_decode(self):
        return 4

    def spacial_compression_decode(self):
        return 2

    def memory_used_decode(self, shape, dtype):
        return 10 * math.prod(shape)

    def decode(self, raw):
        return ((self.first_stage_model.decode(raw) + 1) / 2).clamp(0, 1).movedim(1, -1)

    def decode_tiled(self, raw, **kw):
        self.tiled = kw
        return self.decode(raw)

    def encode(self, image):  # IMAGE [F, H, W, 3] → raw latents [1, 4, 1 + (F − 1)//4, H/2, W/2]
        self.encoded.append(image.shape)
        f, h, w, _ = image.shape
        return torch.ones(1, 4, 1 + (f - 1) // 4, h // 2, w // 2) * image.mean()


def test_the_vae_latent_space(pack):
    *_, stubs = pack
    vae = StandInVAE(stubs)
    patcher = load_model(stubs)
    net = node(pack, model=patcher, vae=vae).network
    space, fmt = net.space, patcher.model.latent_format
    assert (space.channels, space.time, space.scale, space.causal) == (4, 4, 2, False)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    angles = net.angles(2)

    def inside():
        with torch.enable_grad():
            xx = x.clone().requires_grad_()
            img = space.decode(xx)
            (g,) = torch.autograd.grad(img.sum(), xx)
        for refused in (lambda: space.decode_final(x), lambda: space.encode(torch.zeros(1, 3, 5, 4, 10))):
            with pytest.raises(RuntimeError, match="outside SigmaModel.run"):
                refused()
        return img.detach(), g

    with torch.inference_mode():
        img, g = net.run(inside, SHAPE, angles)
    raw = fmt.process_out(x)
    assert img.shape == (1, 3, 9, 4, 10) and torch.allclose(img, vae.first_stage_model.decode(raw), atol=1e-6)
    assert torch.isfinite(g).all() and g.abs().sum() > 0  # through decoder weights made in inference mode
    with torch.enable_grad():  # outside a session (tasks probes the decoder's gain there): readies the VAE itself
        vae2 = StandInVAE(stubs)
        outside = node(pack, model=load_model(stubs), vae=vae2).network.space
        xx = x.clone().requires_grad_()
        (g2,) = torch.autograd.grad(outside.decode(xx).sum(), xx)
    assert torch.isfinite(g2).all() and not any(p.is_inference() for p in vae2.first_stage_model.parameters())
    final = space.decode_final(x)
    assert torch.allclose(final, img.clamp(-1, 1), atol=1e-6)
    clip = torch.rand(1, 3, 5, 4, 10) * 2 - 1
    lat = space.encode(clip)
    assert vae.encoded[-1] == (5, 4, 10, 3) and lat.shape == (1, 4, 2, 2, 5)
    assert torch.allclose(lat, fmt.process_in(torch.ones(1, 4, 2, 2, 5) * ((clip + 1) / 2).mean()), atol=1e-6)
    long = torch.zeros(1, 4, 2 * 21 + 1, 2, 5)
    space.decode_final(long)
    assert vae.tiled["tile_t"] == 21  # a clip longer than two native windows: temporal tiles


def test_a_vae_of_another_latent_size_is_refused(pack):
    *_, stubs = pack
    vae = StandInVAE(stubs)
    vae.latent_channels = 16
    with pytest.raises(ValueError, match="connect the model's own VAE"):
        node(pack, model=load_model(stubs), vae=vae)


class CachedBlock(torch.nn.Module):
    """A causal block as in Wan's decoder: reads its cache entry (the previous chunk's input) and replaces it."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv, self.calls = torch.nn.Conv3d(cin, cout, 1), 0

    def forward(self, x, feat_cache=None, feat_idx=[0]):
        self.calls += 1
        i = feat_idx[0]
        prev = feat_cache[i] if feat_cache[i] is not None else torch.zeros_like(x)
        feat_cache[i] = x
        feat_idx[0] += 1
        return torch.tanh(self.conv(x + 0.5 * prev))


class ChunkDecoder(torch.nn.Module):
    """A decoder called once per latent frame with a causal cache, as Wan's ``Decoder3d`` is
    (``forward(x, feat_cache=list, feat_idx=[i])``), its blocks in ``upsamples`` taking the cache too."""

    def __init__(self):
        super().__init__()
        self.upsamples = torch.nn.Sequential(CachedBlock(2, 4), CachedBlock(4, 3))
        self.calls = 0

    def forward(self, x, feat_cache=None, feat_idx=[0]):
        self.calls += 1
        for block in self.upsamples:
            x = block(x, feat_cache, feat_idx)
        return x


class ChunkVAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = ChunkDecoder()

    def decode(self, z):
        cache, out = [None, None], []
        for t in range(z.shape[2]):
            out.append(self.decoder(z[:, :, t:t + 1], feat_cache=cache, feat_idx=[0]))
        return torch.cat(out, 2)


def test_decoder_chunks_are_checkpointed_exactly(pack):
    """A pixel observation's gradient through a chunked causal decoder: the same values and gradient with each chunk
    call and each cached block in it checkpointed, each chunk recomputed once in the backward pass and a block once
    more within that recompute, the decoder restored afterwards."""
    _, _, space_mod, _ = pack
    torch.manual_seed(0)
    vae = ChunkVAE()
    x = torch.randn(1, 2, 5, 3, 3, requires_grad=True)
    want = vae.decode(x)
    (g_want,) = torch.autograd.grad(want.pow(3).sum(), x)
    blocks = list(vae.decoder.upsamples)
    vae.decoder.calls = blocks[0].calls = blocks[1].calls = 0
    with space_mod.checkpointed_chunks(vae) as on:
        got = vae.decode(x)
        assert on and vae.decoder.calls == 5 and [b.calls for b in blocks] == [5, 5]
        (g_got,) = torch.autograd.grad(got.pow(3).sum(), x)
    assert torch.equal(got, want) and torch.allclose(g_got, g_want, atol=1e-6)
    assert vae.decoder.calls == 10  # every chunk ran again in the backward pass,
    assert blocks[0].calls == 15  # and inside that recompute the first block once more for its own backward
    assert all("forward" not in m.__dict__ for m in [vae.decoder] + blocks)
    with space_mod.checkpointed_chunks(vae, torch.device("cpu")):  # caches kept in a store (the host's memory on
        (g_stored,) = torch.autograd.grad(vae.decode(x).pow(3).sum(), x)  # a GPU; here the code path, no transfer)
    assert torch.allclose(g_stored, g_want, atol=1e-6)
    vae.decoder.calls = blocks[0].calls = blocks[1].calls = 0
    with space_mod.checkpointed_chunks(vae):  # as the pack's decode: the backward pass after the context ends
        got = vae.decode(x)
    assert all("forward" not in m.__dict__ for m in [vae.decoder] + blocks)
    (g_after,) = torch.autograd.grad(got.pow(3).sum(), x)  # the recompute runs the same checkpointed blocks
    assert torch.allclose(g_after, g_want, atol=1e-6) and vae.decoder.calls == 10 and blocks[0].calls == 15
    assert all("forward" not in m.__dict__ for m in [vae.decoder] + blocks)
    with torch.no_grad(), space_mod.checkpointed_chunks(vae):
        assert torch.equal(vae.decode(x), want)  # without autograd: the plain calls
    plain = StandInDecoder()
    with space_mod.checkpointed_chunks(plain) as on:  # no chunk calls (LTX-Video): left alone
        assert not on
