"""Test doubles of ComfyUI's ``model_sampling`` objects and of ``calculate_sigmas(…, "simple", …)``, and an
exact Gaussian oracle wrapped as a ComfyUI model of each prediction type.

Written from the formulas below (our own code; ComfyUI's definitions live in comfy/model_sampling.py and
comfy/samplers.py, not copied). σ_data is 1 throughout.

Prediction types — the sampler state ``x`` at noise level σ, what the network is given, and how its
output becomes x̂0:

=========  =======================  =====================================  ============================
type       ``noise_scaling``        ``calculate_input``                    ``calculate_denoised``
=========  =======================  =====================================  ============================
EPS        x0 + σ·ε                 x / √(σ² + 1)                          x − σ·out
V          x0 + σ·ε                 x / √(σ² + 1)                          x/(σ²+1) − out·σ/√(σ²+1)
V_DDPM     x0 + σ·ε                 x (unscaled)                           x/√(σ²+1) − out·σ/√(σ²+1)
X0         x0 + σ·ε                 x / √(σ² + 1)                          out
CONST      (1 − σ)·x0 + σ·ε         x                                      x − σ·out
=========  =======================  =====================================  ============================

Schedules — the table of 1000 (Flux: 10000) noise levels ``sigmas`` and ``timestep(σ)``:

* ``Discrete``: σ = √((1 − ᾱ)/ᾱ), β = linspace(√0.00085, √0.012, 1000)²; timestep = index of the nearest
  σ in log space (an integer: the network cannot tell σ from it exactly);
* ``ContinuousEDM``: log-uniform from σ_min to σ_max (SVD: 0.002 … 700); timestep = ¼·log σ;
* ``DiscreteFlow(shift)``: σ_i = shift·t/(1 + (shift − 1)·t), t = (i + 1)/1000; timestep = 1000·σ;
* ``Flux(mu)`` (LTX-Video, μ = 2.37): σ_i = e^μ/(e^μ + 1/t − 1), t = (i + 1)/10000; timestep = σ.

``simple`` scheduler: ``steps`` entries of the table read backwards at stride ``len/steps``, then 0.
"""
from __future__ import annotations

import math

import torch


def _col(sigma, x):
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    return sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1))


# ---------------------------------------------------------------------------------------------- predictions


class EPS:
    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        s = _col(sigma, noise)
        return latent_image + (torch.sqrt(1 + s * s) if max_denoise else s) * noise

    def calculate_input(self, sigma, x):
        s = _col(sigma, x)
        return x / torch.sqrt(s * s + 1)

    def uncalculate_input(self, sigma, xc):
        s = _col(sigma, xc)
        return xc * torch.sqrt(s * s + 1)

    def calculate_denoised(self, sigma, out, x):
        return x - _col(sigma, x) * out

    def network_output(self, sigma, x0, x):  # the output calculate_denoised maps to x0
        return (x - x0) / _col(sigma, x)


class V(EPS):
    def calculate_denoised(self, sigma, out, x):
        s = _col(sigma, x)
        return x / (s * s + 1) - out * s / torch.sqrt(s * s + 1)

    def network_output(self, sigma, x0, x):
        s = _col(sigma, x)
        return (x / (s * s + 1) - x0) * torch.sqrt(s * s + 1) / s


class VDDPM(EPS):
    def calculate_input(self, sigma, x):
        return x

    def uncalculate_input(self, sigma, xc):
        return xc

    def calculate_denoised(self, sigma, out, x):
        s = _col(sigma, x)
        return (x - out * s) / torch.sqrt(s * s + 1)

    def network_output(self, sigma, x0, x):
        s = _col(sigma, x)
        return (x - x0 * torch.sqrt(s * s + 1)) / s


class X0(EPS):
    def calculate_denoised(self, sigma, out, x):
        return out

    def network_output(self, sigma, x0, x):
        return x0


class CONST(EPS):
    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        s = _col(sigma, noise)
        return s * noise + (1 - s) * latent_image

    def calculate_input(self, sigma, x):
        return x

    def uncalculate_input(self, sigma, xc):
        return xc

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1 - _col(sigma, latent))


# ---------------------------------------------------------------------------------------------- schedules


class Discrete:
    def __init__(self):
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        abar = torch.cumprod(1 - betas, 0)
        self.sigmas = ((1 - abar) / abar).sqrt().float()
        self.sigma_min, self.sigma_max = self.sigmas[0], self.sigmas[-1]

    def timestep(self, sigma):
        d = (torch.as_tensor(sigma).reshape(-1, 1).float().log() - self.sigmas.log()[None]).abs()
        return d.argmin(1).float()


class ContinuousEDM:
    def __init__(self, sigma_min=0.002, sigma_max=700.0):
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000, dtype=torch.float64).exp().float()
        self.sigma_min, self.sigma_max = self.sigmas[0], self.sigmas[-1]

    def timestep(self, sigma):
        return 0.25 * torch.as_tensor(sigma).log()


class DiscreteFlow:
    def __init__(self, shift=1.0, multiplier=1000):
        self.shift, self.multiplier = float(shift), multiplier
        t = torch.arange(1, 1001, dtype=torch.float64) / 1000
        self.sigmas = (self.shift * t / (1 + (self.shift - 1) * t)).float()
        self.sigma_min, self.sigma_max = self.sigmas[0], self.sigmas[-1]

    def timestep(self, sigma):
        return torch.as_tensor(sigma) * self.multiplier


class Flux:
    def __init__(self, mu=2.37):
        self.mu = float(mu)
        t = torch.arange(1, 10001, dtype=torch.float64) / 10000
        self.sigmas = (math.exp(self.mu) / (math.exp(self.mu) + 1 / t - 1)).float()
        self.sigma_min, self.sigma_max = self.sigmas[0], self.sigmas[-1]

    def timestep(self, sigma):
        return torch.as_tensor(sigma)


def model_sampling(schedule, prediction):
    """An object with both halves, like ComfyUI's ``class ModelSampling(schedule, prediction)``."""
    cls = type(f"ModelSampling{type(schedule).__name__}{prediction.__name__}", (prediction,), {})
    obj = cls()
    obj.__dict__.update(schedule.__dict__)
    obj.timestep = schedule.timestep
    return obj


KINDS = {
    "eps": lambda: model_sampling(Discrete(), EPS),
    "v": lambda: model_sampling(Discrete(), V),
    "v_edm": lambda: model_sampling(ContinuousEDM(), V),
    "v_ddpm": lambda: model_sampling(Discrete(), VDDPM),
    "x0": lambda: model_sampling(Discrete(), X0),
    "flow": lambda: model_sampling(DiscreteFlow(1.0), CONST),
    "flow_shift8": lambda: model_sampling(DiscreteFlow(8.0), CONST),
    "ltxv": lambda: model_sampling(Flux(2.37), CONST),
}
"""The prediction types and schedules of ComfyUI's video models (Wan: flow shift 8; LTX-Video: Flux μ 2.37;
SVD: V on the EDM schedule; CogVideoX: V_DDPM)."""


def calculate_sigmas(ms, scheduler_name: str, steps: int) -> torch.Tensor:
    """``comfy.samplers.calculate_sigmas`` for the ``simple`` scheduler."""
    if scheduler_name != "simple":
        raise ValueError(f"only the simple scheduler is modelled here, got {scheduler_name}")
    n = len(ms.sigmas)
    stride = n / steps
    return torch.tensor([float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)] + [0.0])


# ---------------------------------------------------------------------------------------------- the oracle


class GaussianOracle(torch.nn.Module):
    """The exact denoiser of clips ``x0 ~ N(mean, std²)`` (independent elements) as the network of a ComfyUI
    model: it is given ``calculate_input(σ, x)`` and σ (ComfyUI's oracle read σ from the transformer
    options: integer timesteps lose it), undoes ``calculate_input``, forms ``E[x0 | x]`` for
    ``x = a·x0 + b·ε`` and returns the output ``calculate_denoised`` maps to it. Its input first passes a
    ``blocks`` list like a transformer's: linear layers over the last axis with identity weights (exact in
    float32), so a backward pass needs the weights as autograd can use them."""

    def __init__(self, ms, mean: torch.Tensor, std: torch.Tensor, blocks: int = 3):
        super().__init__()
        self.ms = ms
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        width = mean.shape[-1]
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(blocks))
        with torch.no_grad():
            for block in self.blocks:
                block.weight.copy_(torch.eye(width))
                block.bias.zero_()
        self.calls = 0

    def posterior_mean(self, sigma, x):
        one = torch.ones(x.shape[0], 1, 1, 1, 1, dtype=x.dtype, device=x.device)
        a = self.ms.noise_scaling(sigma, torch.zeros_like(one), one)
        b = self.ms.noise_scaling(sigma, one, torch.zeros_like(one))
        var = self.std ** 2
        return self.mean + a * var * (x - a * self.mean) / (a * a * var + b * b)

    def forward(self, xc, sigma):
        self.calls += 1
        for block in self.blocks:
            xc = block(xc)
        x = self.ms.uncalculate_input(sigma, xc)
        return self.ms.network_output(sigma, self.posterior_mean(sigma, x), x)


class LatentFormat:
    """Wan-like per-channel normalisation: ``process_in(z) = (z − mean)/std``."""

    def __init__(self, channels: int):
        self.latent_channels = channels
        self.mean = torch.linspace(-0.5, 0.5, channels).reshape(1, channels, 1, 1, 1)
        self.std = torch.linspace(0.5, 2.0, channels).reshape(1, channels, 1, 1, 1)

    def process_in(self, z):
        return (z - self.mean.to(z)) / self.std.to(z)

    def process_out(self, z):
        return z * self.std.to(z) + self.mean.to(z)


class OracleModel(torch.nn.Module):
    """A stand-in ``comfy.model_base.BaseModel``: ``apply_model(x, σ, cond)`` as ``BaseModel._apply_model``
    (input scaling, the network, ``calculate_denoised``), the latent format, a memory estimate."""

    def __init__(self, ms, mean, std, text_dim: int = 8):
        super().__init__()
        self.model_sampling = ms
        self.diffusion_model = GaussianOracle(ms, mean, std)
        self.diffusion_model.text_dim = text_dim
        self.latent_format = LatentFormat(mean.shape[1])
        self.conds_seen = []

    def apply_model(self, x, sigma, cond=None):
        self.conds_seen.append(cond)
        xc = self.model_sampling.calculate_input(sigma, x)
        out = self.diffusion_model(xc, sigma)
        return self.model_sampling.calculate_denoised(sigma, out, x)

    def process_latent_in(self, z):
        return self.latent_format.process_in(z)

    def process_latent_out(self, z):
        return self.latent_format.process_out(z)

    def memory_required(self, input_shape, cond_shapes={}):
        return 1000 * math.prod(input_shape)


WAN21 = type("WAN21", (OracleModel,), {})
"""The oracle under the name of Wan 2.1's ``comfy.model_base`` class (zero conditioning, native window)."""
