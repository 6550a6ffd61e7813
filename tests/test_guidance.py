"""Observations, operators, and the sampler conditioned on them: reconstruction guidance, replacement, the
final projection (VDM §3.1, eq. 7–8)."""
import math

import pytest
import torch

from vdm_core import unet3d
from vdm_core.guidance import (Observation, area_downsample, combine, downsample,
                               match_block_means, select_frames)
from vdm_core.sampling import guided, predict_x, sample
from vdm_core.settings import SamplerSettings
from vdm_core.schedule import sampling_angles

from oracle import CorrelatedGaussian, SeparableGaussian, regression_error

D = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny_unet(**kw):
    torch.manual_seed(0)
    return unet3d.UNet3D(unet3d.UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2, **kw)).eval()


# ---------------------------------------------------------------- operators

def test_area_downsample_is_the_block_mean():
    x = torch.randn(2, 3, 4, 8, 6, generator=_gen(0))
    y = area_downsample(x, 2)
    assert y.shape == (2, 3, 4, 4, 3)
    want = x.reshape(2, 3, 4, 4, 2, 3, 2).mean(dim=(4, 6))
    torch.testing.assert_close(y, want)
    assert torch.equal(area_downsample(x, 1), x)
    with pytest.raises(ValueError, match="divisible"):
        area_downsample(x, 4)
    with pytest.raises(ValueError, match="factor"):
        area_downsample(x, 0)


def test_area_downsample_adjoint_is_nearest_upsample_over_s2():
    s = 3
    x = torch.randn(2, 2, 3, 6, 9, generator=_gen(1), dtype=D)
    y = torch.randn(2, 2, 3, 2, 3, generator=_gen(2), dtype=D)
    at_y = y.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4) / s**2
    assert (area_downsample(x, s) * y).sum().item() == pytest.approx((x * at_y).sum().item(), rel=1e-12)


def test_match_block_means_is_the_nearest_clip_with_those_means():
    x = torch.randn(2, 3, 4, 6, 9, generator=_gen(21), dtype=D)
    y = torch.randn(2, 3, 4, 2, 3, generator=_gen(22), dtype=D)
    m = match_block_means(x, y, 3)
    torch.testing.assert_close(area_downsample(m, 3), y)
    # the change is constant per block and orthogonal to every clip with zero block means
    d = m - x
    torch.testing.assert_close(d, area_downsample(d, 3).repeat_interleave(3, 3).repeat_interleave(3, 4))
    n = torch.randn(2, 3, 4, 6, 9, generator=_gen(23), dtype=D)
    n = n - area_downsample(n, 3).repeat_interleave(3, 3).repeat_interleave(3, 4)
    assert (d * n).sum().abs().item() < 1e-9
    torch.testing.assert_close(match_block_means(m, y, 3), m)  # a projection


def test_select_frames_and_downsample_observations():
    x = torch.randn(2, 3, 6, 4, 4, generator=_gen(3))
    obs = select_frames(x[:, :, [0, 2, 4]], [0, 2, 4], 6)
    assert obs.frame_indices == (0, 2, 4) and obs.num_frames == 6
    assert torch.equal(obs.operator(x), obs.y)
    lo = downsample(area_downsample(x, 2), 2)
    assert lo.num_frames == 6 and lo.frame_indices is None
    torch.testing.assert_close(lo.operator(x), lo.y)
    with pytest.raises(ValueError, match="outside"):
        select_frames(x[:, :, :2], [0, 6], 6)
    with pytest.raises(ValueError, match="distinct"):
        select_frames(x[:, :, :2], [1, 1], 6)
    with pytest.raises(ValueError, match=r"\[B, C, 3, H, W\]"):
        select_frames(x[:, :, :2], [0, 1, 2], 6)


def test_select_frames_composes_with_downsample():
    x = torch.randn(2, 1, 7, 8, 8, generator=_gen(4))
    keys = [0, 3, 6]
    keys_lr = area_downsample(x[:, :, keys], 4)
    obs = select_frames(downsample(keys_lr, 4), keys, 7)
    assert obs.num_frames == 7 and obs.frame_indices is None  # not a pure selection: no replacement
    assert obs.y is keys_lr
    torch.testing.assert_close(obs.operator(x), keys_lr)
    other = torch.randn(2, 1, 7, 8, 8, generator=_gen(5))
    torch.testing.assert_close(obs.operator(other), area_downsample(other[:, :, keys], 4))
    with pytest.raises(ValueError, match="3 frames but 2 indices"):
        select_frames(downsample(keys_lr, 4), [0, 3], 7)


def test_combine_sums_both_errors_and_keeps_the_exact_frames_for_replacement():
    x = torch.randn(2, 1, 6, 4, 4, generator=_gen(6))
    exact = select_frames(x[:, :, :2], [0, 1], 6)
    low = select_frames(downsample(area_downsample(x[:, :, 2:], 2), 2), [2, 3, 4, 5], 6)
    obs = combine(exact, low)
    assert obs.num_frames == 6 and obs.frame_indices is None and obs.selection is exact
    assert exact.selection is exact and low.selection is None
    torch.testing.assert_close(obs.operator(x), obs.y)
    other = torch.randn(2, 1, 6, 4, 4, generator=_gen(7))
    want = (exact.y - exact.operator(other)).pow(2).sum() + (low.y - low.operator(other)).pow(2).sum()
    torch.testing.assert_close((obs.y - obs.operator(other)).pow(2).sum(), want)
    with pytest.raises(ValueError, match="frame selection"):
        combine(low, exact)
    with pytest.raises(ValueError, match="same clip"):
        combine(select_frames(x[:, :, :2], [0, 1], 7), low)


def test_both_replaces_the_exact_part_of_a_combined_observation():
    """'both' overwrites the exactly known frames and guides the others through the downsampler;
    'replacement' alone cannot honour a low-resolution part and says so."""
    base = CorrelatedGaussian(4, 0.9)
    x = base.draw(2, 4, 4, seed=8)
    obs = combine(select_frames(x[:, :, :1], [0], 4), select_frames(downsample(area_downsample(x[:, :, 1:], 2), 2),
                                                                    [1, 2, 3], 4))
    noise = torch.randn(2, 1, 4, 4, 4, generator=_gen(9))
    out = sample(base, noise, sampling_angles(8), observation=obs, clip=False,
                 settings=SamplerSettings(method="both", guidance_weight=4.0))
    assert torch.equal(out[:, :, :1], x[:, :, :1])
    free = sample(base, noise, sampling_angles(8), clip=False)
    err = (area_downsample(out[:, :, 1:], 2) - area_downsample(x[:, :, 1:], 2)).abs().mean()
    assert err < 0.5 * (area_downsample(free[:, :, 1:], 2) - area_downsample(x[:, :, 1:], 2)).abs().mean()
    with pytest.raises(ValueError, match="pure frame selection"):
        sample(base, noise, sampling_angles(2), observation=obs, settings=SamplerSettings(method="replacement"))


def test_observation_is_frozen_and_checked():
    y = torch.zeros(1, 1, 2, 2, 2)
    obs = select_frames(y, (0, 1), 3)
    with pytest.raises(Exception):
        obs.num_frames = 4
    with pytest.raises(ValueError):
        Observation(y=y, operator=lambda x: x, num_frames=0)


# ---------------------------------------------------------------- validation

def test_sample_rejects_observations_that_do_not_fit():
    model = CorrelatedGaussian(4, 0.5)
    noise = torch.randn(2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="5 frames"):
        sample(model, noise, sampling_angles(2), observation=select_frames(torch.zeros(2, 1, 1, 4, 4), [0], 5),
               settings=SamplerSettings(method="both", guidance_weight=16.0))
    with pytest.raises(ValueError, match="batch 3"):
        sample(model, noise, sampling_angles(2), observation=select_frames(torch.zeros(3, 1, 1, 4, 4), [0], 4),
               settings=SamplerSettings(method="both", guidance_weight=16.0))
    with pytest.raises(ValueError, match="does not match y"):
        sample(model, noise, sampling_angles(2), observation=select_frames(torch.zeros(2, 1, 1, 2, 2), [0], 4),
               settings=SamplerSettings(method="both", guidance_weight=16.0))
    with pytest.raises(ValueError, match="divisible"):
        sample(model, torch.randn(2, 1, 4, 6, 6), sampling_angles(2), SamplerSettings(method="both", guidance_weight=16.0),
               observation=downsample(torch.zeros(2, 1, 4, 3, 3), 4))
    with pytest.raises(ValueError, match="does not match y"):
        sample(model, noise, sampling_angles(2), observation=downsample(torch.zeros(2, 1, 4, 1, 1), 2),
               settings=SamplerSettings(method="both", guidance_weight=16.0))
    ok = select_frames(torch.zeros(2, 1, 1, 4, 4), [0], 4)
    with pytest.raises(ValueError, match="guidance_weight"):
        sample(model, noise, sampling_angles(2), observation=ok, settings=SamplerSettings(method="both", guidance_weight=-1))
    with pytest.raises(ValueError, match="method"):
        sample(model, noise, sampling_angles(2), observation=ok,
               settings=SamplerSettings(method="inpaint", guidance_weight=16.0))
    low = downsample(torch.zeros(2, 1, 4, 2, 2), 2)
    composed = select_frames(downsample(torch.zeros(2, 1, 1, 2, 2), 2), [0], 4)
    for obs in (low, composed):
        with pytest.raises(ValueError, match="frame selection.*'both' or 'reconstruction'"):
            sample(model, noise, sampling_angles(2), observation=obs, settings=SamplerSettings(method="replacement"))
        # nothing is known exactly, so "both" has nothing to replace: it is reconstruction guidance whose
        # final prediction is projected onto the clips that agree with y
        both = sample(model, noise, sampling_angles(2), observation=obs,
                      settings=SamplerSettings(method="both", guidance_weight=2.0))
        rec = sample(model, noise, sampling_angles(2), observation=obs,
                     settings=SamplerSettings(method="reconstruction", guidance_weight=2.0))
        torch.testing.assert_close(both, obs.project(rec))
        torch.testing.assert_close(obs.operator(both), obs.y.expand(2, -1, -1, -1, -1))


# ---------------------------------------------------------------- the guidance gradient

@pytest.mark.parametrize("phi", [0.3, 1.1])
def test_guidance_gradient_matches_finite_differences(phi):
    """x̃ − x̂ = −(w_r α/2)·∂/∂z ‖y − A(x̂(z))‖² (sum), for a linear model v̂ = W z and a composed A."""
    shape = (2, 1, 3, 2, 2)
    n = 12
    w_mat = torch.randn(n, n, generator=_gen(6), dtype=D) / n**0.5

    def model(z, phi_b):
        return (z.flatten(1) @ w_mat.T).reshape(z.shape)

    a, s = math.cos(phi), math.sin(phi)
    keys = [0, 2]
    y = torch.randn(2, 1, 2, 1, 1, generator=_gen(7), dtype=D)
    obs = select_frames(downsample(y, 2), keys, 3)
    z = torch.randn(shape, generator=_gen(8), dtype=D)
    weight = 3.0

    def loss(zz):
        return ((y - obs.operator(a * zz - s * model(zz, None))) ** 2).sum()

    h = 1e-6
    fd = torch.zeros_like(z)
    for i in range(z.numel()):
        dz = torch.zeros(z.numel(), dtype=D)
        dz[i] = h
        dz = dz.reshape(shape)
        fd.view(-1)[i] = (loss(z + dz) - loss(z - dz)) / (2 * h)
    x_hat = a * z - s * model(z, None)
    x_tilde = guided(predict_x(model), obs, weight)(z, phi)
    assert x_tilde.dtype == D and not x_tilde.requires_grad
    torch.testing.assert_close(x_tilde - x_hat, -(weight * a / 2) * fd, rtol=1e-6, atol=1e-8)
    with torch.inference_mode():
        torch.testing.assert_close(guided(predict_x(model), obs, weight)(z.clone(), phi), x_tilde)


def test_zero_weight_reconstruction_is_unguided_sampling():
    model = CorrelatedGaussian(4, 0.8)
    noise = torch.randn(3, 1, 4, 2, 2, generator=_gen(9))
    obs = select_frames(torch.zeros(3, 1, 2, 2, 2), [0, 1], 4)
    plain = sample(model, noise, sampling_angles(6), clip=False)
    got = sample(model, noise, sampling_angles(6), clip=False, observation=obs,
                 settings=SamplerSettings(method="reconstruction", guidance_weight=0))
    torch.testing.assert_close(got, plain)


def test_each_guided_step_differentiates_a_fresh_leaf():
    base = CorrelatedGaussian(4, 0.8)
    inputs = []

    def model(z, phi):
        inputs.append((z.requires_grad, z.grad_fn is None, torch.is_grad_enabled()))
        return base(z, phi)

    seen = []
    out = sample(model, torch.randn(2, 1, 4, 2, 2, generator=_gen(10)), sampling_angles(4),
                 observation=select_frames(torch.zeros(2, 1, 1, 2, 2), [0], 4),
                 callback=lambda i, n, x: seen.append(x.requires_grad), settings=SamplerSettings(method="both", guidance_weight=16.0))
    assert inputs == [(True, True, True)] * 4  # a new leaf each step: the graph never spans steps
    assert seen == [False] * 4 and not out.requires_grad


# ---------------------------------------------------------------- replacement

def test_replacement_uses_fresh_noise_every_step_and_keeps_observed_frames():
    base = CorrelatedGaussian(5, 0.9)
    y = base.draw(64, 4, 4, seed=11)[:, :, :2]
    seen = []

    def model(z, phi):
        seen.append((phi[0].item(), z[:, :, :2].clone()))
        return base(z, phi)

    noise = torch.randn(64, 1, 5, 4, 4, generator=_gen(12))
    out = sample(model, noise, sampling_angles(6), observation=select_frames(y, [0, 1], 5),
                 generator=_gen(13), clip=False, settings=SamplerSettings(method="replacement"))
    assert torch.equal(out[:, :, :2], y)
    phis = sampling_angles(6).tolist()
    xis = []
    for (phi, za), want_phi in zip(seen, phis):
        assert phi == pytest.approx(want_phi, abs=1e-6)
        xi = (za - math.cos(phi) * y) / math.sin(phi)  # z^a_t = α_t y + σ_t ξ_t
        assert xi.std().item() == pytest.approx(1.0, abs=0.05)
        xis.append(xi.flatten())
    assert not torch.allclose(seen[0][1], noise[:, :, :2])  # even the first step is replaced
    corr = torch.corrcoef(torch.stack(xis))
    off = corr[~torch.eye(6, dtype=torch.bool)]
    assert off.abs().max() < 0.1  # independent draws, not one fixed ξ


def test_replacement_broadcasts_a_single_observation_over_the_batch():
    y = torch.rand(1, 1, 1, 2, 2, generator=_gen(14)) * 2 - 1
    out = sample(CorrelatedGaussian(3, 0.9), torch.randn(4, 1, 3, 2, 2, generator=_gen(15)), sampling_angles(3),
                 SamplerSettings(method="both", guidance_weight=2.0), observation=select_frames(y, [2], 3), generator=_gen(16))
    assert torch.equal(out[:, :, 2:], y.expand(4, -1, -1, -1, -1))
    assert not torch.allclose(out[0], out[1])


# ---------------------------------------------------------------- against the exact conditional

def test_oracle_samples_the_prior_unconditionally():
    model = CorrelatedGaussian(5, 0.9)
    out = sample(model, torch.randn(2048, 1, 5, 1, 1, generator=_gen(17)), sampling_angles(100), clip=False)
    emp = torch.cov(out.reshape(2048, 5).double().T)
    assert (emp - model.cov).abs().max() < 0.1


def test_separable_oracle_is_the_exact_denoiser_of_its_prior():
    """SeparableGaussian (AR(1) in time × a periodic Gaussian kernel in space) against the dense formulas: x̂ =
    α Σ (α² Σ + σ² I)⁻¹ z with Σ = Σ_t ⊗ Σ_s, and draws whose covariance is Σ."""
    n, f = 4, 3
    model = SeparableGaussian(f, 0.8, 0.5, n, 1.0)
    k = SeparableGaussian.kernel(n, 1.0)
    i = torch.arange(n)
    axis = k[(i[:, None] - i[None, :]) % n] / k[0]
    sigma_s = torch.kron(axis, axis)  # pixel (row, column)
    sigma = torch.kron(model.cov, sigma_s)  # index (frame, row, column), as z.reshape(F·H·W)
    z = torch.randn(2, 1, f, n, n, generator=_gen(40))
    phi = 0.7
    a, s = math.cos(phi), math.sin(phi)
    want = a * sigma @ torch.linalg.solve(a * a * sigma + s * s * torch.eye(f * n * n, dtype=torch.float64),
                                          z.reshape(2, -1).double().T)
    got = model.mean(z, phi).reshape(2, -1).double().T
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    x = model.draw(4000, n, n, seed=41).reshape(4000, -1).double()
    assert (torch.cov(x.T) - sigma).abs().max() < 0.06


def test_reconstruction_guidance_gets_the_conditional_mean_better_than_replacement():
    model = CorrelatedGaussian(5, 0.9)
    known, unknown = [0, 4], [1, 2, 3]  # interpolation: keyframes at both ends
    x_true = model.draw(512, 1, 1, seed=18)
    y = x_true[:, :, known]
    obs = select_frames(y, known, 5)
    noise = torch.randn(512, 1, 5, 1, 1, generator=_gen(19))
    err = {}
    for method, w in [("replacement", 0.0), ("reconstruction", 2.0), ("reconstruction", 8.0), ("both", 8.0)]:
        out = sample(model, noise, sampling_angles(20), observation=obs,
                     generator=_gen(20), clip=False, settings=SamplerSettings(method=method, guidance_weight=w))
        err[method, w] = regression_error(out, y, unknown, known, model.cov)
    # over 4 other seeds: replacement 0.66-0.75; w_r = 2: 0.51-0.54 of it; w_r = 8: 0.11-0.15; both: 0.33-0.40
    repl = err["replacement", 0.0]
    assert repl > 0.4, err  # replacement really misses the conditional mean (VDM §3.1)
    assert err["reconstruction", 2.0] < 0.7 * repl, err
    assert err["reconstruction", 8.0] < 0.5 * repl, err
    assert err["both", 8.0] < 0.5 * repl, err


def test_observation_error_falls_as_the_guidance_weight_grows():
    """Upscaling ×2 of the exact model, η = 0. (The gain on the observed values is w_r/s², here at most 2;
    far above 2 the last steps overshoot and the error grows again: see sample()'s docstring.)"""
    model = CorrelatedGaussian(5, 0.9)
    x_true = model.draw(64, 4, 4, seed=21)
    y = area_downsample(x_true, 2)
    noise = torch.randn(64, 1, 5, 4, 4, generator=_gen(22))
    errs = []
    for w in [0.0, 0.5, 2.0, 8.0]:
        out = sample(model, noise, sampling_angles(50), observation=downsample(y, 2), clip=False,
                     settings=SamplerSettings(method="reconstruction", guidance_weight=w))
        errs.append((area_downsample(out, 2) - y).pow(2).sum().sqrt().item())
    assert errs == sorted(errs, reverse=True), errs
    assert errs[-1] < 0.01 * errs[0], errs


# ---------------------------------------------------------------- plumbing with the real network

def _guided(net, noise, method="both"):
    obs = select_frames(torch.rand(1, 3, 2, 8, 8, generator=_gen(23)) * 2 - 1, [0, 1], 4)
    return sample(net, noise, sampling_angles(3), SamplerSettings(eta=0.5, guidance_weight=4.0, method=method),
                  generator=_gen(24), observation=obs)


def test_guided_sampling_is_deterministic_for_a_seed():
    net = tiny_unet()
    noise = torch.randn(1, 3, 4, 8, 8, generator=_gen(25))
    for method in ("reconstruction", "both"):
        a, b = _guided(net, noise, method=method), _guided(net, noise, method=method)
        assert torch.equal(a, b)
    obs = select_frames(torch.zeros(1, 3, 2, 8, 8), [0, 1], 4)
    c = sample(net, noise, sampling_angles(3), generator=_gen(99), observation=obs,
               settings=SamplerSettings(eta=0.5, method="both", guidance_weight=16.0))
    assert not torch.allclose(c, _guided(net, noise, method="both"))


def test_guided_sampling_under_inference_mode():
    net = tiny_unet()
    noise = torch.randn(1, 3, 4, 8, 8, generator=_gen(26))
    want = _guided(net, noise, method="both")
    with torch.inference_mode():
        inf_noise = noise.clone()
        got = _guided(net, inf_noise, method="both")
        got_rec = _guided(net, inf_noise, method="reconstruction")
    assert torch.equal(inf_noise, noise)  # input untouched
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_rec, _guided(net, noise, method="reconstruction"))
    with torch.inference_mode():
        bad = tiny_unet()  # weights are inference tensors
        with pytest.raises(RuntimeError, match=r"outside torch.inference_mode\(\)"):
            _guided(bad, noise)


def test_guidance_works_with_gradient_checkpointing(monkeypatch):
    net = tiny_unet()
    noise = torch.randn(1, 3, 4, 8, 8, generator=_gen(27))
    want = _guided(net, noise)
    calls = []
    real = unet3d.checkpoint

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(unet3d, "checkpoint", counting)
    net.gradient_checkpointing = True
    got = _guided(net, noise)
    assert calls  # the blocks really ran checkpointed
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
