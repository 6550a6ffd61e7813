"""The truncated cosine schedule in angle form and the x̂ / ε̂ / v identities (VDM eq. 1; Salimans & Ho 2022, §4)."""
import math

import pytest
import torch

from vdm_core import schedule as S

D = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _angles(b, seed=1):
    u = torch.rand(b, generator=torch.Generator().manual_seed(seed), dtype=D)
    return S.phi_of_t(u)


def test_endpoints_are_logsnr_plus_minus_20():
    assert S.logsnr_of_phi(torch.tensor(S.PHI_MIN, dtype=D)).item() == pytest.approx(20.0, abs=1e-9)
    assert S.logsnr_of_phi(torch.tensor(S.PHI_MAX, dtype=D)).item() == pytest.approx(-20.0, abs=1e-9)
    assert S.PHI_MIN == pytest.approx(math.atan(math.exp(-10)), rel=1e-12)
    assert S.PHI_MAX == pytest.approx(math.pi / 2 - S.PHI_MIN, abs=1e-12)
    assert S.phi_of_t(torch.tensor(0.0, dtype=D)).item() == S.PHI_MIN
    assert S.phi_of_t(torch.tensor(1.0, dtype=D)).item() == pytest.approx(S.PHI_MAX, abs=1e-15)


def test_phi_of_t_is_linear_and_t_of_phi_inverts_it():
    t = torch.linspace(0, 1, 11, dtype=D)
    phi = S.phi_of_t(t)
    d = phi.diff()
    torch.testing.assert_close(d, torch.full_like(d, (S.PHI_MAX - S.PHI_MIN) / 10), rtol=0, atol=1e-14)
    u = torch.rand(100, generator=torch.Generator().manual_seed(3), dtype=D)
    torch.testing.assert_close(S.t_of_phi(S.phi_of_t(u)), u, rtol=0, atol=1e-14)
    # logSNR decreases with t
    assert (S.logsnr_of_phi(phi).diff() < 0).all()


def test_logsnr_and_phi_are_inverse():
    lam = torch.empty(200, dtype=D).uniform_(-20, 20, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(S.logsnr_of_phi(S.phi_of_logsnr(lam)), lam, rtol=0, atol=1e-10)
    phi = _angles(200)
    torch.testing.assert_close(S.phi_of_logsnr(S.logsnr_of_phi(phi)), phi, rtol=1e-12, atol=1e-15)
    # λ = log(α²/σ²) with α = sqrt(sigmoid(λ)), σ = sqrt(sigmoid(−λ))
    a, s = S.alpha_sigma(phi, phi)
    torch.testing.assert_close(S.logsnr_of_phi(phi), torch.log(a**2 / s**2))
    torch.testing.assert_close(a, torch.sigmoid(S.logsnr_of_phi(phi)).sqrt())


def test_sampling_angles_uniform_from_noise_to_clean():
    phis = S.sampling_angles(7)
    assert phis.shape == (8,) and phis.dtype == D
    assert phis[0].item() == pytest.approx(S.PHI_MAX) and phis[-1].item() == pytest.approx(S.PHI_MIN)
    torch.testing.assert_close(phis.diff(), torch.full((7,), -(S.PHI_MAX - S.PHI_MIN) / 7, dtype=D))
    with pytest.raises(ValueError, match="steps"):
        S.sampling_angles(0)


def _shifted(k, shift=8.0):
    """Wan's grid as angles (flow, σ = shift·t/(1 + (shift − 1)·t) at t uniform, φ = atan(σ/(1 − σ))), the last
    angle half the one before, as ``external.SigmaModel.angles`` gives it."""
    t = [1 - i / k for i in range(k)]
    phis = [math.atan2(shift * u, 1 - u) for u in t]  # σ/(1 − σ) = shift·t/(1 − t)
    return phis + [phis[-1] / 2]


def test_filled_keeps_every_angle_and_steps_down_by_the_ratio_to_the_floor():
    host = _shifted(32)[:-1]
    fine = S.filled(host)
    assert set(host) <= set(fine) and fine[0] == host[0]
    ratios = [b / a for a, b in zip(fine, fine[1:])]
    assert all(S.LOW_NOISE_RATIO - 1e-12 <= r < 1 for r in ratios)
    assert fine[-1] == pytest.approx(S.LOW_NOISE_FLOOR) and host[-1] > 20 * S.LOW_NOISE_FLOOR
    low = 0.5 * S.LOW_NOISE_FLOOR  # a host grid that already ends below the floor keeps its end
    assert S.filled([low]) == [low] and S.filled([1.0, low])[-1] == low
    assert min(b / a for a, b in zip(S.filled([1.0, low]), S.filled([1.0, low])[1:])) >= S.LOW_NOISE_RATIO - 1e-12


def test_filled_within_costs_no_more_steps_than_the_host_grid():
    for steps in (20, 32, 50, 100):
        grid = S.filled_within(_shifted, steps)
        evaluated = grid[:-1]
        assert len(evaluated) <= steps and steps - len(evaluated) < 8
        assert evaluated[0] == pytest.approx(math.pi / 2) and evaluated[-1] == pytest.approx(S.LOW_NOISE_FLOOR)
        assert grid[-1] == evaluated[-1] / 2
        # the host's grid at fewer steps, with its low-noise gaps filled
        k = next(k for k in range(steps, 0, -1) if S.filled(_shifted(k)[:-1]) == evaluated)
        assert k < steps and len(S.filled(_shifted(k + 1)[:-1])) > steps
    assert S.filled_within(_shifted, 8) == _shifted(8)  # too few steps to fill: the host's own grid


def test_round_trips_x_eps_v():
    x, eps = _rand(6, 2, 3, 4, 4, seed=5), _rand(6, 2, 3, 4, 4, seed=6)
    phi = _angles(6)
    a, s = S.alpha_sigma(phi, x)
    assert a.shape == (6, 1, 1, 1, 1)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a))
    z = S.q_sample(x, phi, eps)
    torch.testing.assert_close(z, a * x + s * eps)
    v = S.v_target(x, eps, phi)
    torch.testing.assert_close(v, a * eps - s * x)
    torch.testing.assert_close(S.x_from_v(z, v, phi), x)
    torch.testing.assert_close(S.eps_from_v(z, v, phi), eps)
    torch.testing.assert_close(S.eps_from_x(z, x, phi), eps)
    # v from x̂: (α z − x̂)/σ
    torch.testing.assert_close((a * z - x) / s, v)


def test_round_trips_at_the_schedule_ends():
    x, eps = _rand(2, 1, 2, 3, 3, seed=7), _rand(2, 1, 2, 3, 3, seed=8)
    phi = torch.tensor([S.PHI_MIN, S.PHI_MAX], dtype=D)
    z = S.q_sample(x, phi, eps)
    v = S.v_target(x, eps, phi)
    torch.testing.assert_close(S.x_from_v(z, v, phi), x)
    torch.testing.assert_close(S.eps_from_v(z, v, phi), eps)
    torch.testing.assert_close(S.eps_from_x(z, x, phi), eps, rtol=1e-6, atol=1e-6)  # divides by σ ≈ 4.5e-5


def test_v_is_dz_dphi():
    x, eps = _rand(3, 1, 2, 2, 2, seed=9), _rand(3, 1, 2, 2, 2, seed=10)
    phi = _angles(3)
    # each element of clip b depends on φ_b only, so the JVP with tangent 1 is dz/dφ elementwise
    _, dz = torch.autograd.functional.jvp(lambda p: S.q_sample(x, p, eps), phi, torch.ones_like(phi))
    torch.testing.assert_close(dz, S.v_target(x, eps, phi))


def test_broadcast_scalar_and_batch():
    like = torch.zeros(4, 3, 2, 5, 5, dtype=torch.float32)
    assert S.broadcast(torch.tensor(0.3), like).shape == ()
    p = S.broadcast(torch.arange(4, dtype=D), like)
    assert p.shape == (4, 1, 1, 1, 1) and p.dtype == torch.float32
