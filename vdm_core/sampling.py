"""DDIM sampling of a v-prediction model in angle form, in the shape of k-diffusion's samplers.

The loop, :func:`ddim`, steps a *denoiser* ``D(z, φ) → x̃`` (float32 ``[B, C, F, H, W]`` in and out)
over an angle grid ``φ_0 > φ_1 > … > φ_N`` that the caller passes in (``schedule.sampling_angles`` for
this pack's models; another model's own schedule converted to angles). One step from ``φ_t`` to ``φ_s``
(DDIM, Song et al. 2021, eq. 12 with σ_t(η) of eq. 16, in α/σ form):

    ε̃ = (z_t − α_t x̃)/σ_t,   z_s = α_s x̃ + sqrt(σ_s² − c²)·ε̃ + c·ξ,   c = η·(σ_s/σ_t)·sqrt(1 − α_t²/α_s²)

With η = 0 and ``x̃ = x̂ = α_t z_t − σ_t v̂`` this is the seed's ``z_s = cos(φ_s − φ_t)·z_t +
sin(φ_s − φ_t)·v̂``; η = 1 is ancestral sampling (VDM's γ = 0 step). With η = 0 the step is the first-order
exponential integrator of the probability-flow ODE in ``λ = log(α/σ) = −log tan φ``; :func:`ddim`'s
``second_order`` makes it DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2), which method ``posterior``
samples with (:func:`sample`).

Conditioning on an observation ``y = A(x)`` (:mod:`vdm_core.guidance`) is a wrapper around the
denoiser, each defined once here and composed by ``method`` in :func:`conditioned`:

* :func:`guided` — reconstruction guidance, ``x̃ = x̂ − (w_r·α_t/2)·∇_{z_t}‖y − A(x̂(z_t))‖²`` (VDM eq. 7/8);
* ``posterior.posterior`` — posterior guidance, ``x̃ = x̂ + J Aᵀ (A J Aᵀ)⁻¹ (y − A(x̂))``, ``J = ∂x̂/∂z_t``;
* ``posterior.consistent`` — data consistency, ``x̃ = x̂ + Aᵀ (A Aᵀ)⁻¹ (y − A(x̂))`` (no backward through the model);
* :func:`replaced` — replacement (VDM §3.1): known frames of ``z_t`` ← ``α_t y + σ_t ξ``, of ``x̃`` ← ``y``;
* :func:`projected` — from a given angle on, ``x̃`` ← the nearest clip with ``A(x̃) = y``
  (``Observation.project``: block means for upscaling);
* :func:`clipped` — ``x̃`` clamped to [-1, 1] (leave it out for latents, which are not in [-1, 1]).

The model is any callable ``model(z, phi) -> v̂`` (``phi``: ``[B]`` angles); :func:`predict_x` turns it
into a denoiser. All sampler arithmetic is float32 whatever dtype the model computes in.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .guidance import Observation, check_observation
from .posterior import consistent, posterior, products_per_step
from .schedule import PHI_MAX, eps_from_x, logsnr_of_phi, x_from_v
from .settings import DEFAULT_ITERATIONS, METHODS, SamplerSettings, resolved_method

Denoiser = Callable[[Tensor, float], Tensor]
"""``D(z, φ) → x̃``: the clean clip predicted from ``z`` at angle ``φ`` (float32, ``z``'s shape)."""
StepCallback = Callable[[int, int, Tensor], None]
"""``callback(step, steps, x̃)`` after every step; an exception raised there stops sampling."""
NON_FINITE = ("the prediction became NaN/inf at step {step}/{steps}; run the model in float32 or bfloat16, or "
              "lower the guidance weight")


def _randn(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``N(0, I)`` float32 noise drawn on the generator's device (CPU by default), moved to ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=device).to(like.device)


def ddim_coefficients(phi_t: float, phi_s: float, eta: float = 0.0) -> tuple[float, float, float]:
    """``(α_s, sqrt(σ_s² − c²), c)`` of the step ``z_s = α_s x̃ + sqrt(σ_s² − c²)·ε̃ + c·ξ``;
    ``c`` is capped at ``σ_s`` (η > 1 cannot add more noise than that)."""
    a_s, s_s = math.cos(phi_s), math.sin(phi_s)
    a_t, s_t = math.cos(phi_t), math.sin(phi_t)
    c = eta * (s_s / s_t) * math.sqrt(max(0.0, 1.0 - (a_t / a_s) ** 2)) if eta > 0 else 0.0
    c = min(c, s_s)
    return a_s, math.sqrt(max(0.0, s_s * s_s - c * c)), c


def ddim_step(z: Tensor, x: Tensor, phi_t: float, phi_s: float, eta: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    """``z_s = α_s x̃ + sqrt(σ_s² − c²)·ε̃ + c·ξ`` with ``ε̃ = (z_t − α_t x̃)/σ_t`` (``schedule.eps_from_x``)."""
    eps = eps_from_x(z, x, torch.tensor(phi_t, dtype=torch.float64))
    a_s, e, c = ddim_coefficients(phi_t, phi_s, eta)
    z_s = a_s * x + e * eps
    return z_s + c * _randn(z.shape, z, generator).to(z.dtype) if c > 0 else z_s


def ddim(denoiser: Denoiser, z: Tensor, angles, *, eta: float = 0.0, generator: torch.Generator | None = None,
         callback: StepCallback | None = None, second_order: bool = False) -> Tensor:
    """Step ``z`` (the state at ``angles[0]``) down the grid ``angles`` (decreasing, ≥ 2 entries) with
    :func:`ddim_step`; returns the last ``x̃``. ``generator`` draws the η-noise ``ξ``.

    ``second_order`` (η = 0 only): DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2) — every step after
    the first takes, in place of ``x̃_i``, the prediction extrapolated linearly in ``λ = −log tan φ`` from the
    step before, with no further model evaluation:

        D_i = x̃_i + c_i·(x̃_i − x̃_{i−1}),   c_i = min(1/(2 r_i), 1/2),   r_i = (λ_i − λ_{i−1})/(λ_{i+1} − λ_i).

    ``c_i = 1/(2 r_i)`` is 2M's own weight; where the steps grow (``r_i < 1``, as on ``schedule.POSTERIOR_POWER``'s
    grid toward the clean end) it is capped at the equal-step value ½. On Gaussian oracles at 32 steps on that grid
    the new frames keep 0.74–0.92 of the exact conditional variance with DDIM, 0.98–1.19 with 2M's own weight
    (content of std 0.02–0.05 overshoots) and 0.87–1.08 capped (docs/benchmarks.md, "Second-order steps for
    posterior")."""
    phis = [float(p) for p in angles]
    if len(phis) < 2 or any(b >= a for a, b in zip(phis, phis[1:])) or not 0 < phis[-1] < phis[0] <= math.pi / 2:
        raise ValueError("angles must decrease from at most π/2 to above 0, with at least 2 entries "
                         "(one step); e.g. schedule.sampling_angles(steps)")
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a number >= 0, got {eta}")
    if second_order and eta > 0:
        raise ValueError(f"second_order sampling is deterministic: it needs eta 0, got {eta}")
    steps = len(phis) - 1
    lam = logsnr_of_phi(torch.tensor(phis, dtype=torch.float64)).tolist()  # r_i is a ratio: log-SNR = 2λ will do
    x_prev = None
    for i, (phi_t, phi_s) in enumerate(zip(phis, phis[1:])):
        try:
            x = denoiser(z, phi_t)
        except NonFinitePrediction:
            raise FloatingPointError(NON_FINITE.format(step=i + 1, steps=steps)) from None
        if not torch.isfinite(x).all():
            raise FloatingPointError(NON_FINITE.format(step=i + 1, steps=steps))
        d = x
        if second_order and x_prev is not None:
            r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            d = x + min(1 / (2 * r), 0.5) * (x - x_prev)
        x_prev = x
        z = ddim_step(z, d, phi_t, phi_s, eta, generator)
        if callback is not None:
            callback(i + 1, steps, x)
    return x


# ---------------------------------------------------------------------------------------------- denoisers


class NonFinitePrediction(FloatingPointError):
    """The model returned NaN or ±inf (e.g. a float16 overflow); :func:`ddim` reports the step."""


def predict_x(model) -> Denoiser:
    """The denoiser of a v-model: ``x̂ = cos φ·z − sin φ·v̂(z, φ)`` (``schedule.x_from_v``). A ``v̂`` that is
    not finite raises :class:`NonFinitePrediction` before anything (a clamp) can hide it."""

    def denoise(z: Tensor, phi: float) -> Tensor:
        v = model(z, torch.full((z.shape[0],), phi, device=z.device)).to(z.dtype)
        if not torch.isfinite(v).all():
            raise NonFinitePrediction("the model returned NaN/inf")
        return x_from_v(z, v, torch.tensor(phi, dtype=torch.float64))

    return denoise


def clipped(denoiser: Denoiser) -> Denoiser:
    """``x̃`` clamped to [-1, 1] (pixel-space models; ε̃ is then recomputed from it by the step)."""
    return lambda z, phi: denoiser(z, phi).clamp(-1, 1)


def guided(denoiser: Denoiser, observation: Observation, weight: float) -> Denoiser:
    """Reconstruction guidance (VDM eq. 7/8): ``x̃ = x̂ − (w_r·α/2)·∇_z ‖y − A(x̂(z))‖²``, the squared
    error SUMMED over observed elements (a mean would divide ``w_r`` by their count), the gradient taken
    through the denoiser by one backward pass on a fresh leaf every call (the graph never spans steps).
    Works when called under ``torch.inference_mode()`` if the model's weights were made outside it."""

    def denoise(z: Tensor, phi: float) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            zz = z.clone().requires_grad_(True)
            y = observation.y.to(device=z.device, dtype=z.dtype).clone()
            try:
                x = denoiser(zz, phi)
                (grad,) = torch.autograd.grad((y - observation.operator(x)).pow(2).sum(), zz)
            except RuntimeError as e:
                if "Inference tensors cannot be saved for backward" in str(e):
                    raise RuntimeError(
                        "reconstruction guidance needs gradients through the model, but the model's weights are "
                        "inference tensors: build/load the model outside torch.inference_mode() "
                        "(sampling itself may run inside it)") from e
                raise
        return x.detach() - (weight * math.cos(phi) / 2) * grad

    return denoise


def replaced(denoiser: Denoiser, known: Observation, generator: torch.Generator | None = None) -> Denoiser:
    """Replacement (VDM §3.1) of the frames ``known`` selects (``known.frame_indices``): before the
    denoiser, ``z``'s known frames ← a fresh forward sample ``α·y + σ·ξ`` (new ``ξ`` from ``generator``
    every call); after it, ``x̃``'s known frames ← ``y``."""
    if known.frame_indices is None:
        raise ValueError("replaced: the observation must be a frame selection (select_frames of known frames)")

    def denoise(z: Tensor, phi: float) -> Tensor:
        idx = torch.tensor(known.frame_indices, device=z.device)
        shape = (z.shape[0], *known.y.shape[1:])
        y = known.y.to(device=z.device, dtype=z.dtype).expand(shape)
        z = z.index_copy(2, idx, math.cos(phi) * y + math.sin(phi) * _randn(shape, z, generator))
        return denoiser(z, phi).index_copy(2, idx, y)

    return denoise


def projected(denoiser: Denoiser, observation: Observation, below: float) -> Denoiser:
    """For ``φ ≤ below``: ``x̃`` ← ``observation.project(x̃)``, the nearest clip (L2) that agrees with
    ``y`` — an orthogonal projection for linear ``A``, so never farther from the truth. With ``below`` the
    last step's angle it moves only the final prediction."""
    if observation.project is None:
        raise ValueError("projected: the observation has no projection (its operator has no pseudo-inverse)")

    def denoise(z: Tensor, phi: float) -> Tensor:
        x = denoiser(z, phi)
        return observation.project(x) if phi <= below else x

    return denoise


def conditioned(model, observation: Observation | None = None, *, method: str = "both",
                guidance_weight: float = 0.0, clip: bool = True, generator: torch.Generator | None = None,
                final_angle: float | None = None, iterations: int | Callable[[float], int] = DEFAULT_ITERATIONS
                ) -> Denoiser:
    """The denoiser of v-model ``model`` conditioned on ``observation`` by ``method``:

    * ``"reconstruction"``: ``guided`` with the full ``∇_{z_t}``; observed frames are the model's own
      (their error falls as ``w_r`` grows). Near the data end ``∂x̂/∂z ≈ I``, so on the observed values
      ``A(x̃) − y ≈ (1 − g)·(A(x̂) − y)`` with gain ``g = w_r·‖A Aᵀ‖`` (1 for a frame selection, ``1/s²``
      for area downsampling by ``s``): ``g > 2`` overshoots in the last steps.
    * ``"replacement"``: ``replaced`` only; needs a pure frame selection.
    * ``"both"`` (VDM): ``replaced`` on the frames known exactly (``observation.selection``, if any) around
      ``guided`` of everything, so the guidance acts on the generated frames as VDM's ``∇_{z^b_t}``;
      then, where the observation has a projection, ``projected`` at ``final_angle`` (the last step's
      angle): upscaled frames end with the input's block means exactly. An observation with neither (pixels
      seen through a VAE decoder) cannot be replaced in ``z``; there ``posterior.consistent`` follows
      ``guided`` at every step, ``x̃`` ← the clip nearest ``x̂`` that agrees with ``y``: replacement's
      counterpart through a decoder (trained tiny Wan of tests/harness/models, docs/benchmarks.md: every job
      then beats its baseline on the v1 set).
    * ``"posterior"``: as ``both`` with ``posterior.posterior`` in place of ``guided``: ``x̃ = x̂ + J Aᵀ (A J Aᵀ)⁻¹
      (y − A(x̂))``, ``J = ∂x̂/∂z_t`` (Tweedie's posterior covariance up to ``σ²/α``; Boys et al. 2023), by
      ``iterations`` conjugate-gradient steps of one backward pass each (per step, or ``iterations(φ)``:
      :func:`sample` spreads them over its grid by ``posterior.products_per_step``). ``guidance_weight`` is not
      used.
    * ``"consistency"``: as ``both`` with ``posterior.consistent`` in place of ``guided``: ``x̃`` ← the clip
      nearest ``x̂`` that agrees with ``y`` (``iterations`` conjugate-gradient steps through ``A`` only; no backward through the
      model). ``guidance_weight`` is not used.

    ``guidance_weight`` is ``w_r`` (≥ 0; 0 turns guidance off), ``clip`` clamps ``x̃`` to [-1, 1] (after the
    guidance, whose gradient needs the unclipped ``x̂``). ``generator`` draws the replacement noise.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (math.isfinite(guidance_weight) and guidance_weight >= 0):
        raise ValueError(f"guidance_weight must be a number >= 0, got {guidance_weight}")
    den = predict_x(model)
    if observation is not None:
        known = observation.selection if method != "reconstruction" else None
        if method == "replacement" and observation.frame_indices is None:
            raise ValueError("method 'replacement' needs an observation that is a pure frame selection (frames "
                             "known exactly); this one is not (e.g. upscaling): use 'both' or 'reconstruction'")
        if method == "posterior":
            den = posterior(den, observation, iterations)
        elif method == "consistency":
            den = consistent(den, observation, iterations)
        elif method != "replacement" and guidance_weight > 0:
            den = guided(den, observation, guidance_weight)
        if method == "both" and observation.frame_indices is None and observation.project is None:
            den = consistent(den, observation, iterations)  # neither replaced nor projected: through a decoder
        if known is not None:
            den = replaced(den, known, generator)
    if clip:
        den = clipped(den)
    if (observation is not None and method in ("both", "posterior", "consistency") and observation.project is not None
            and final_angle is not None):
        den = projected(den, observation, final_angle)
    return den


def sample(model, noise: Tensor, angles, settings: SamplerSettings = SamplerSettings(), *,
           observation: Observation | None = None, clip: bool = True, generator: torch.Generator | None = None,
           callback: StepCallback | None = None) -> Tensor:
    """Sample ``x`` (float32 ``[B, C, F, H, W]``) from ``noise`` (``ε``, that shape) with v-model ``model``
    down the angle grid ``angles``: :func:`ddim` from ``z = sin φ_0·ε`` with the :func:`conditioned`
    denoiser ``D``. A grid that starts short of pure noise (``φ_0`` below the pack's own noise end
    ``schedule.PHI_MAX``; ComfyUI's discrete schedules start at σ_max 14.6, ``cos φ_0`` = 0.068) starts from
    ``z = sin φ_0·ε + cos φ_0·D(sin φ_0·ε, φ_0)`` instead: a DDIM step from pure noise to ``φ_0`` with the
    prediction at ``φ_0``, so the start holds the signal ``α_0·x`` the model expects, given what is observed
    (from noise alone, as ComfyUI's KSampler starts, an extension's far frames undershoot the conditional mean
    by 0.054 on the Gaussian oracle; tests/test_comfy_model.py). ``settings`` gives η, the method and ``w_r``
    (resolved: ``SamplerSettings.for_job``; a method still auto is ``settings.resolved_method``'s: ``posterior``
    with an observation, ``both`` without; its ``steps`` and ``seed`` are the caller's, who made ``angles`` and
    ``generator`` from them).
    ``generator`` drives every random draw (η-noise, replacement noise)."""
    phis = [float(p) for p in angles]
    method = resolved_method(settings.method, observation is not None)
    weight = 0.0
    iterations = settings.iterations
    if observation is not None:
        check_observation(observation, noise)
        weight = settings.weight if method in ("reconstruction", "both") else 0.0
        if method == "posterior":  # a closed-form A (frame selection, area average) settles near the data end
            settles = observation.project is not None or observation.frame_indices is not None
            iterations = products_per_step(phis, iterations, settles)
    den = conditioned(model, observation, method=method, guidance_weight=weight, clip=clip,
                      generator=generator, final_angle=phis[-2] if len(phis) > 1 else None, iterations=iterations)
    z = math.sin(phis[0]) * noise.float()
    if phis[0] < PHI_MAX - 1e-6:  # short of pure noise (beyond float32 rounding): the signal the model expects
        z = z + math.cos(phis[0]) * den(z, phis[0])
    second_order = method == "posterior" and observation is not None and settings.eta == 0
    return ddim(den, z, phis, eta=settings.eta, generator=generator, callback=callback, second_order=second_order)
