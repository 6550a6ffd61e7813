"""DDIM-v sampler: one-step identities, η = 1 vs VDM's ancestral step, analytic-oracle sampling, plumbing."""
import math

import pytest
import torch

from vdm_core import schedule as S
from vdm_core.sampling import ddim, ddim_coefficients, ddim_step, predict_x, sample
from vdm_core.settings import SamplerSettings
from vdm_core.schedule import sampling_angles

D = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _ab(phi, like):
    """cos φ, sin φ of a [B] angle, broadcast against ``like``."""
    p = phi.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return torch.cos(p), torch.sin(p)


def point_mass_model(mu):
    """Exact v̂ when the data is the single point ``mu``: x̂ = μ, so v̂ = (cos φ·z − μ)/sin φ."""
    def model(z, phi):
        a, s = _ab(phi, z)
        return (a * z - mu.to(z.dtype)) / s
    return model


def gaussian_model(m, s2):
    """Exact v̂ for data x ~ N(m, s2) per element: E[x|z] = m + α s2/(α² s2 + σ²)·(z − α m)."""
    def model(z, phi):
        a, s = _ab(phi, z)
        mean = m + a * s2 / (a * a * s2 + s * s) * (z - a * m)
        return (a * z - mean) / s
    return model


PAIRS = [(S.PHI_MAX, 1.2), (1.2, 0.7), (0.7, 0.05), (0.05, S.PHI_MIN), (S.PHI_MAX, S.PHI_MIN)]


@pytest.mark.parametrize("phi_t,phi_s", PAIRS)
def test_one_step_with_oracle_v_lands_on_the_forward_sample(phi_t, phi_s):
    x, eps = torch.randn(2, 3, 4, 5, 5, generator=_gen(0), dtype=D), torch.randn(2, 3, 4, 5, 5, generator=_gen(1), dtype=D)
    a_t, s_t = math.cos(phi_t), math.sin(phi_t)
    z_t = a_t * x + s_t * eps
    v = a_t * eps - s_t * x  # oracle v̂ = α ε − σ x
    want = math.cos(phi_s) * x + math.sin(phi_s) * eps
    # the seed's angle form lands there; the wrong sign (sin(φ_t − φ_s)) walks away from it
    d = phi_s - phi_t
    torch.testing.assert_close(math.cos(d) * z_t + math.sin(d) * v, want, rtol=0, atol=1e-12)
    assert (math.cos(d) * z_t - math.sin(d) * v - want).abs().max() > 1e-3
    # the loop's step (η = 0) from the oracle's x̂ is the same step
    x_hat = S.x_from_v(z_t, v, torch.tensor(phi_t, dtype=D))
    torch.testing.assert_close(ddim_step(z_t, x_hat, phi_t, phi_s, eta=0.0), want, rtol=0, atol=1e-10)
    out = ddim(lambda z, phi: S.x_from_v(z, v, torch.tensor(phi, dtype=D)), z_t, [phi_t, phi_s])
    torch.testing.assert_close(out, x, rtol=0, atol=1e-9)  # the oracle's x̂ is x


def test_ddim_eta0_is_the_seeds_angle_form_for_any_prediction():
    z, v = torch.randn(3, 1, 2, 4, 4, generator=_gen(2), dtype=D), torch.randn(3, 1, 2, 4, 4, generator=_gen(3), dtype=D)
    for phi_t, phi_s in PAIRS:
        x_hat = S.x_from_v(z, v, torch.tensor(phi_t, dtype=D))
        d = phi_s - phi_t
        torch.testing.assert_close(ddim_step(z, x_hat, phi_t, phi_s), math.cos(d) * z + math.sin(d) * v,
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("phi_t,phi_s", PAIRS[:4] + [(0.9, 0.88)])
def test_ddim_eta1_is_vdm_ancestral_gamma0(phi_t, phi_s):
    a_s, e, c = ddim_coefficients(phi_t, phi_s, eta=1.0)
    a_t, s_t, s_s = math.cos(phi_t), math.sin(phi_t), math.sin(phi_s)
    lam_t = S.logsnr_of_phi(torch.tensor(phi_t, dtype=D)).item()
    lam_s = S.logsnr_of_phi(torch.tensor(phi_s, dtype=D)).item()
    r = math.exp(lam_t - lam_s)
    # VDM posterior q(z_s | z_t, x): μ̃ = r (α_s/α_t) z_t + (1 − r) α_s x,  σ̃² = (1 − r) σ_s²
    z = torch.randn(4, 2, 3, 3, 3, generator=_gen(4), dtype=D)
    x = torch.randn(4, 2, 3, 3, 3, generator=_gen(5), dtype=D)
    mu_vdm = r * (a_s / a_t) * z + (1 - r) * a_s * x
    mu_ddim = a_s * x + e * (z - a_t * x) / s_t
    torch.testing.assert_close(mu_ddim, mu_vdm, rtol=1e-9, atol=1e-9)
    assert c * c == pytest.approx((1 - r) * s_s**2, rel=1e-9, abs=1e-15)
    assert c * c == pytest.approx(s_s**2 * (a_s**2 - a_t**2) / (s_t**2 * a_s**2), rel=1e-9, abs=1e-15)
    # and ddim_step really is mean + c·ξ with ξ the generator's next N(0, I) draw
    xi = torch.randn(z.shape, generator=_gen(6), dtype=torch.float32).to(D)
    torch.testing.assert_close(ddim_step(z, x, phi_t, phi_s, eta=1.0, generator=_gen(6)), mu_ddim + c * xi,
                               rtol=0, atol=1e-10)


def test_eta_above_one_adds_at_most_sigma_s_noise():
    a_s, e, c = ddim_coefficients(1.0, 0.5, eta=5.0)
    assert c == pytest.approx(math.sin(0.5)) and e == 0.0 and a_s == pytest.approx(math.cos(0.5))
    assert ddim_coefficients(1.0, 0.5, eta=0.0)[2] == 0.0


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("clip_x", [False, True])
def test_point_mass_data_is_recovered_exactly(steps, clip_x):
    mu = torch.rand(2, 3, 4, 6, 6, generator=_gen(7)) * 2 - 1
    noise = torch.randn(2, 3, 4, 6, 6, generator=_gen(8))
    out = sample(point_mass_model(mu), noise, sampling_angles(steps), clip=clip_x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mu, rtol=0, atol=2e-6)


def test_point_mass_recovered_with_eta():
    mu = torch.rand(2, 1, 3, 4, 4, generator=_gen(9)) * 2 - 1
    out = sample(point_mass_model(mu), torch.randn(2, 1, 3, 4, 4, generator=_gen(10)), sampling_angles(9),
                 generator=_gen(11), settings=SamplerSettings(eta=1.0))
    torch.testing.assert_close(out, mu, rtol=0, atol=2e-6)


@pytest.mark.parametrize("eta,steps", [(0.0, 1000), (1.0, 2000)])
def test_gaussian_data_has_the_right_mean_and_std(eta, steps):
    # DDIM is first order: at 50 (η=0) / 100 (η=1) steps the std is 3-4 % low for this data, so many steps
    # are used to bring the discretization error (≈0.2 % here) below the sampling error
    m, sd = 0.3, 0.5
    noise = torch.randn(16, 1, 4, 16, 16, generator=_gen(12))  # 16384 elements
    out = sample(gaussian_model(m, sd**2), noise, sampling_angles(steps), generator=_gen(13), clip=False,
                 settings=SamplerSettings(eta=eta))
    n = out.numel()
    assert abs(out.mean().item() - m) < 4 * sd / math.sqrt(n)
    assert abs(out.std().item() - sd) < 4 * sd / math.sqrt(2 * n) + 0.005 * sd


def _flow_error(second_order, steps):
    """Relative max error of :func:`ddim` on Gaussian data (std 0.25, exact denoiser) against the exact
    probability-flow ODE on a grid uniform in ``λ = −log tan φ`` from −4 to 4: the flow scales ``z`` by
    ``sqrt((α²s² + σ²)/(α_0²s² + σ_0²))``, and the returned ``x̂`` at the last evaluated angle is ``α s²/(α²s² + σ²)``
    times that."""
    s2 = 0.25 ** 2
    z0 = torch.linspace(-2, 2, 64).reshape(1, 1, 4, 4, 4)
    phis = [math.atan(math.exp(-lam / 2)) for lam in torch.linspace(-4, 4, steps + 1, dtype=D).tolist()]
    out = ddim(predict_x(gaussian_model(0.0, s2)), z0, phis, second_order=second_order)
    a0, g0, a, g = math.cos(phis[0]), math.sin(phis[0]), math.cos(phis[-2]), math.sin(phis[-2])
    exact = z0 * math.sqrt((a * a * s2 + g * g) / (a0 * a0 * s2 + g0 * g0)) * a * s2 / (a * a * s2 + g * g)
    return ((out - exact).abs().max() / exact.abs().max()).item()


def test_second_order_sampling_converges_at_second_order():
    """DDIM (η = 0) is the first-order exponential integrator of the probability-flow ODE: doubling the steps halves
    its error. ``second_order`` (DPM-Solver++(2M), the sampler of method posterior) at least quarters it (measured
    6.4–6.9× from 16 to 64 steps; DDIM 1.8–1.9×), and at 32 steps its error is below a twentieth of DDIM's
    (measured 1/55)."""
    first = [_flow_error(False, n) for n in (16, 32, 64)]
    second = [_flow_error(True, n) for n in (16, 32, 64)]
    assert all(1.5 < a / b < 2.5 for a, b in zip(first, first[1:])), first
    assert all(a / b > 4 for a, b in zip(second, second[1:])), second
    assert second[1] < first[1] / 20, (first, second)


def test_second_order_sampling_needs_eta_zero():
    with pytest.raises(ValueError, match="eta 0"):
        ddim(lambda z, phi: z, torch.zeros(1, 1, 1, 2, 2), sampling_angles(4), eta=1.0, second_order=True)


def test_clipped_and_unclipped_paths_agree_when_nothing_is_clipped():
    noise = torch.randn(2, 1, 3, 8, 8, generator=_gen(14))
    model = gaussian_model(0.0, 0.1**2)  # x̂ stays well inside [-1, 1]
    a = sample(model, noise, sampling_angles(20), clip=False)
    b = sample(model, noise, sampling_angles(20), clip=True)
    assert a.abs().max() < 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_same_seed_same_result_different_seed_different():
    model = gaussian_model(0.0, 0.25)
    noise = torch.randn(2, 1, 3, 4, 4, generator=_gen(15))
    r1 = sample(model, noise, sampling_angles(10), generator=_gen(16), settings=SamplerSettings(eta=0.7))
    r2 = sample(model, noise, sampling_angles(10), generator=_gen(16), settings=SamplerSettings(eta=0.7))
    r3 = sample(model, noise, sampling_angles(10), generator=_gen(17), settings=SamplerSettings(eta=0.7))
    assert torch.equal(r1, r2)
    assert not torch.allclose(r1, r3)


def test_callback_every_step_and_exception_stops_sampling():
    mu = torch.zeros(1, 1, 2, 3, 3)
    seen = []
    out = sample(point_mass_model(mu), torch.randn(1, 1, 2, 3, 3, generator=_gen(18)), sampling_angles(5),
                 callback=lambda i, n, x: seen.append((i, n, x.clone())))
    assert [(i, n) for i, n, _ in seen] == [(i, 5) for i in range(1, 6)]
    assert all(x.shape == (1, 1, 2, 3, 3) for _, _, x in seen)
    assert torch.equal(seen[-1][2], out)

    calls = []

    def model(z, phi):
        calls.append(1)
        return point_mass_model(mu)(z, phi)

    def stop(i, n, x):
        if i == 2:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        sample(model, torch.randn(1, 1, 2, 3, 3), sampling_angles(10), callback=stop)
    assert len(calls) == 2


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_model_keeps_float32_state(dtype, tol):
    mu = torch.rand(2, 1, 3, 4, 4, generator=_gen(19)) * 2 - 1
    exact = point_mass_model(mu)
    seen = []

    def model(z, phi):
        seen.append(z.dtype)
        return exact(z.to(dtype), phi.to(dtype))  # computes and answers in half

    out = sample(model, torch.randn(2, 1, 3, 4, 4, generator=_gen(20)), sampling_angles(8), generator=_gen(21),
                 settings=SamplerSettings(eta=0.5))
    assert set(seen) == {torch.float32}
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mu, rtol=0, atol=tol)


def test_nan_from_model_raises_clearly():
    with pytest.raises(FloatingPointError, match="NaN"):
        sample(lambda z, phi: torch.full_like(z, float("nan")), torch.randn(1, 1, 2, 2, 2), sampling_angles(3))


def test_clip_true_clips_and_clip_false_leaves_latents_alone():
    mu = torch.rand(2, 1, 3, 6, 6, generator=_gen(22)) * 6 - 3  # far outside [-1, 1], like a latent
    noise = torch.randn(2, 1, 3, 6, 6, generator=_gen(23))
    clipped = sample(point_mass_model(mu), noise, sampling_angles(6), clip=True)
    torch.testing.assert_close(clipped, mu.clamp(-1, 1), rtol=0, atol=2e-6)
    free = sample(point_mass_model(mu), noise, sampling_angles(6), clip=False)
    torch.testing.assert_close(free, mu, rtol=0, atol=1e-5)


def test_bad_arguments():
    model = point_mass_model(torch.zeros(1))
    z = torch.randn(1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="steps"):
        sampling_angles(0)
    for eta in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eta"):
            sample(model, z, sampling_angles(2), settings=SamplerSettings(eta=eta))
    for angles in ([1.0], [0.5, 1.0], [1.0, 0.5, 0.5], [2.0, 1.0], [1.0, 0.0]):  # not a decreasing grid in (0, π/2]
        with pytest.raises(ValueError, match="angles"):
            sample(model, z, angles)


def test_tiny_unet_samples_a_finite_float32_clip():
    from vdm_core.unet3d import UNet3D, UNet3DConfig

    torch.manual_seed(0)
    net = UNet3D(UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2)).eval()
    out = sample(net, torch.randn(1, 3, 4, 8, 8, generator=_gen(25)), sampling_angles(3), generator=_gen(26),
                 settings=SamplerSettings(eta=1.0))
    assert out.shape == (1, 3, 4, 8, 8) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() <= 1
