"""Exact Gaussian oracles, other models' coordinates to wrap them in, the jobs with closed-form conditionals, and
what the oracle tests and benchmarks measure (tests/test_guidance.py, tests/test_external.py, tests/test_posterior.py,
tests/test_comfy_model.py, benchmarks/posterior_oracles.py, benchmarks/comfy_grid_oracles.py)."""
import math

import torch

from vdm_core import guidance
from vdm_core.external import SigmaModel

D = torch.float64


class CorrelatedGaussian:
    """Exact v̂ for data x ~ N(0, Σ) over frames, Σ_ij = std²·ρ^|i−j| (a stationary AR(1) series), every
    (channel, pixel) independent.

    E[x|z] = α Σ (α² Σ + σ² I)⁻¹ z, computed in Σ's eigenbasis; v̂ = (α z − E[x|z])/σ. Differentiable.
    """

    def __init__(self, frames, rho, std=1.0):
        i = torch.arange(frames, dtype=D)
        self.cov = std * std * rho ** (i[:, None] - i[None, :]).abs()
        lam, u = torch.linalg.eigh(self.cov)
        self.lam, self.u = lam.float(), u.float()

    def __call__(self, z, phi):
        p = phi.to(z.dtype).reshape(-1, 1, 1, 1, 1)
        a, s = torch.cos(p), torch.sin(p)
        zf = z.movedim(2, -1)  # frames last
        x = ((zf @ self.u) * (a * self.lam / (a * a * self.lam + s * s))) @ self.u.T
        return ((a * zf - x) / s).movedim(-1, 2)

    def mean(self, z, phi):
        """E[x | z] at the angle ``phi`` (a float)."""
        return math.cos(phi) * z - math.sin(phi) * self(z, torch.full((z.shape[0],), phi))

    def draw(self, b, h, w, seed, channels=1):
        """Clips [b, channels, F, h, w] from the prior."""
        f = self.cov.shape[0]
        e = torch.randn(b, channels, h, w, f, generator=torch.Generator().manual_seed(seed), dtype=D)
        return (e @ torch.linalg.cholesky(self.cov).T).float().permute(0, 1, 4, 2, 3)


class SeparableGaussian(CorrelatedGaussian):
    """:class:`CorrelatedGaussian` in time × a smooth stationary field in space: Σ = Σ_t ⊗ Σ_s over ``size``²
    pixels, Σ_s the periodic Gaussian kernel of length ``length`` in each axis, k(d) = Σₘ exp(−(d + m·size)²/2ℓ²)
    (:meth:`kernel`, positive definite), per axis and scaled to unit variance, so each pixel is still the AR(1)
    series of Σ_t and the extension and interpolation conditionals per pixel are :func:`job`'s. Σ_s is circulant,
    diagonal in the 2-D Fourier basis: E[x|z] = α Σ (α² Σ + σ² I)⁻¹ z is computed there, with the eigenvalues
    λ_t·λ_s. Differentiable; clips must be ``size``² (``H = W = size``)."""

    def __init__(self, frames, rho, std, size, length):
        super().__init__(frames, rho, std)
        k = self.kernel(size, length)
        lam = (torch.fft.fft(k).real / k[0]).clamp(min=0)  # one axis's eigenvalues, unit variance (from ℓ ≈ 3 on
        # 32 pixels the smallest are below rounding, some of them negative)
        self.lam_s = (lam[:, None] * lam[None, :]).float()

    @staticmethod
    def kernel(size, length):
        """``[size]`` k(d), d = 0 … size − 1: the Gaussian of length ``length`` summed over its periodic copies."""
        d = torch.arange(size, dtype=D)[:, None] + size * torch.arange(-3, 4, dtype=D)[None, :]
        return torch.exp(-d * d / (2 * length * length)).sum(1)

    def __call__(self, z, phi):
        if tuple(z.shape[-2:]) != tuple(self.lam_s.shape):
            raise ValueError(f"SeparableGaussian of {tuple(self.lam_s.shape)} pixels, got clips of {tuple(z.shape[-2:])}")
        p = phi.to(z.dtype).reshape(-1, 1, 1, 1, 1)
        a, s = torch.cos(p), torch.sin(p)
        zf = torch.fft.fft2(z).movedim(2, -1)  # [B, C, H, W, F]: Fourier in space, frames last
        zt = torch.complex(zf.real @ self.u, zf.imag @ self.u)  # Σ_t's eigenbasis
        lam = self.lam_s[:, :, None] * self.lam
        xt = zt * (a * lam / (a * a * lam + s * s))
        x = torch.fft.ifft2(torch.complex(xt.real @ self.u.T, xt.imag @ self.u.T).movedim(-1, 2)).real
        return (a * z - x) / s

    def draw(self, b, h, w, seed, channels=1):
        e = torch.randn(b, channels, self.cov.shape[0], h, w, generator=torch.Generator().manual_seed(seed), dtype=D)
        e = torch.fft.ifft2(torch.fft.fft2(e) * self.lam_s.double().sqrt()).real
        return torch.einsum("ij,bcjhw->bcihw", torch.linalg.cholesky(self.cov), e).float()


def flow(shift=3.0):
    """A flow model's coordinates x = (1 − σ)·x0 + σ·ε and its shifted 'simple' grid (ComfyUI:
    comfy/model_sampling.py)."""
    def sigmas(steps):
        t = torch.linspace(1, 0, steps + 1, dtype=D)
        return (shift * t / (1 + (shift - 1) * t)).tolist()
    return dict(scaling=lambda s: (1 - s, s), sigma_min=shift * 1e-3 / (1 + (shift - 1) * 1e-3), sigma_max=1.0,
                sigmas=sigmas)


def ve():
    """A variance-exploding model's coordinates x = x0 + σ·ε and a log-uniform grid."""
    def sigmas(steps):
        return torch.logspace(math.log10(80), math.log10(0.002), steps).tolist() + [0.0]
    return dict(scaling=lambda s: (1.0, s), sigma_min=0.002, sigma_max=80.0, sigmas=sigmas)


def denoiser_of(prior, kind):
    """The prior's exact x̂0 in the model's own coordinates: x → z = x/√(a²+b²) at φ = atan2(b, a)."""
    scaling = kind["scaling"]

    def denoise(x, sigma):
        a, b = scaling(float(sigma[0]))
        return prior.mean(x / math.hypot(a, b), math.atan2(b, a))
    return denoise


def hosted(prior, scaling, sigma_min, sigma_max, sigmas):
    """The prior's exact denoiser as a one-channel host model (``external.SigmaModel``) in the coordinates
    ``scaling`` with noise levels ``sigma_min`` … ``sigma_max`` and grid ``sigmas``: the entries of :func:`flow` /
    :func:`ve`, or what the node's ``sampling_functions`` reads off a ComfyUI model."""
    return SigmaModel(scaling, sigma_min, sigma_max, sigmas, channels=1,
                      denoise=denoiser_of(prior, dict(scaling=scaling)))


def regression_error(out, y, unknown, known, cov):
    """‖K̂ − K‖_F: K̂ regresses the sampled unknown frames ``out[:, :, unknown]`` on the known ``y``;
    K = Σ_ba Σ_aa⁻¹ is the exact conditional mean's map, E[x^b | x^a] = K x^a (a: known, b: unknown)."""
    b = out.shape[0]
    xb = out[:, :, unknown].reshape(b, -1).double()
    ya = y.reshape(b, -1).double()
    k_hat = torch.linalg.lstsq(ya, xb).solution.T
    k = cov[unknown][:, known] @ torch.linalg.inv(cov[known][:, known])
    return torch.linalg.norm(k_hat - k).item()


def conditional(cov, known):
    """(K, C): E[x^b | x^a] = K x^a and C = Cov[x^b | x^a] of the frames not in ``known`` (a: ``known``, b: the
    others, in order) for frames x ~ N(0, cov)."""
    f = cov.shape[0]
    unknown = [i for i in range(f) if i not in known]
    k = cov[unknown][:, known] @ torch.linalg.inv(cov[known][:, known])
    return k, cov[unknown][:, unknown] - k @ cov[known][:, unknown]


def gaussian_conditional(cov, known):
    """(K, var): :func:`conditional` with only the variances diag(Cov[x^b | x^a])."""
    k, c = conditional(cov, known)
    return k, torch.diag(c)


def job(name: str, prior: CorrelatedGaussian, x: torch.Tensor):
    """(observation, unknown frames, exact conditional mean of those frames, their conditional variances) of job
    ``name`` on clips ``x`` ``[B, C, F, H, W]`` of ``prior``: ``extend``, the first half of the frames known (frame
    7+k of 16 has mean ρᵏ·x₇); ``interpolate``, keyframes 0, 4, 8, …; ``upscale2``, every frame's 2×2 block means
    (E[x | y] = y upsampled, variance ¾·std²)."""
    f = x.shape[2]
    if name in ("extend", "interpolate"):
        known = list(range(f // 2)) if name == "extend" else list(range(0, f, 4))
        k, var = gaussian_conditional(prior.cov, known)
        mean = torch.einsum("uk,bckhw->bcuhw", k.float(), x[:, :, known])
        return guidance.select_frames(x[:, :, known], known, f), [i for i in range(f) if i not in known], mean, var
    y = guidance.area_downsample(x, 2)
    return (guidance.downsample(y, 2), list(range(f)), y.repeat_interleave(2, 3).repeat_interleave(2, 4),
            0.75 * torch.diag(prior.cov))


def variance_at(cond, phi):
    """diag Cov[E[x^b | z_φ, y]] = diag(C − (C⁻¹ + α²/σ²·I)⁻¹) for the conditional covariance ``cond`` = C: the
    spread an exact sampler gives new frames when its last step returns x̂ at angle ``phi`` (a grid that ends
    short of σ = 0)."""
    snr = math.cos(phi) ** 2 / math.sin(phi) ** 2
    eye = torch.eye(cond.shape[0], dtype=cond.dtype)
    return torch.diag(cond - torch.linalg.inv(torch.linalg.inv(cond) + snr * eye))


def frame_fit(out, mean, var):
    """Per frame j of ``out`` ([B, C, F', H, W], samples of x^b): the regression slope of ``out[:, :, j]`` on the
    exact conditional mean ``mean[:, :, j]`` (1 when the sampler's conditional mean is right), and the variance
    ratio E[(out − mean)²]/var[j] (1 when its spread is right). Returns two lists of F' floats."""
    slopes, ratios = [], []
    for j in range(out.shape[2]):
        o, m = out[:, :, j].double().flatten(), mean[:, :, j].double().flatten()
        mc = m - m.mean()
        slopes.append(float(((o - o.mean()) * mc).sum() / (mc * mc).sum()))
        ratios.append(float((o - m).pow(2).mean() / var[j]))
    return slopes, ratios
