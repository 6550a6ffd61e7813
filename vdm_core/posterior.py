"""Posterior guidance (the denoiser's Jacobian as the posterior covariance) and data consistency.

For ``z_t = α_t x + σ_t ε`` (``α = cos φ``, ``σ = sin φ``, ``vdm_core.schedule``) the denoiser
``x̂(z_t) = E[x | z_t]`` also gives the posterior covariance (Tweedie's second-order identity; Boys et al.
2023, "Tweedie Moment Projected Diffusions for Inverse Problems", arXiv 2310.06721):

    C = Cov[x | z_t] = (σ_t²/α_t)·J,   J = ∂x̂/∂z_t.

Conditioning the Gaussian ``N(x̂, C)`` on a noise-free observation ``y = A(x)`` (``vdm_core.guidance``; ``A``
linearised at ``x̂`` when it is not linear) gives the prediction :func:`posterior` returns:

    x̃ = E[x | z_t, y] ≈ x̂ + C Aᵀ (A C Aᵀ)⁻¹ (y − A(x̂)) = x̂ + J Aᵀ u,   (A J Aᵀ) u = y − A(x̂),

exact for Gaussian data (``J`` is then symmetric positive definite); the scale ``σ²/α`` cancels. Reconstruction
guidance (``sampling.guided``, VDM eq. 7/8) takes ``C`` isotropic instead. :func:`consistent` takes ``J = I``:
``x̃ = x̂ + Aᵀ (A Aᵀ)⁻¹ (y − A(x̂))``, the clip nearest to ``x̂`` that agrees with ``y`` (data consistency on
x̂, as DDNM, Wang et al. 2023, does for a linear ``A``) — no pass through the denoiser beyond its forward.

``u`` is found by conjugate gradients on ``M = A J Aᵀ`` from ``u = 0`` (:func:`posterior_update`), for a nonlinear
``A`` (a decoder) with ``A`` linearised again where its linearisation no longer predicts the error (Gauss–Newton).
Each iteration costs one product ``J w`` (a vector–Jacobian product, VJP, through the denoiser: ``Jᵀ w``, which
equals ``J w`` for an exact denoiser, whose Jacobian is symmetric), one VJP through ``A`` and two or three
evaluations of ``A`` (:func:`linearized`, and the true error where products are left).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .guidance import Observation

FD_STEP = 1e-2
"""Relative step of the central difference that gives ``J_A v`` (:func:`linearized`)."""
SETTLED_ANGLE = 0.3
"""At or below this angle (``α²/σ²`` above 10) posterior's solve settles in a few products for an observation with
a closed-form projection: :func:`products_per_step` gives it three quarters of the products there."""
FAINT_ANGLE = 1.45
"""Above this angle (``α`` below 0.12) :func:`products_per_step` gives posterior's solve half the products."""


def products_per_step(angles, iterations: int, settles: bool = True) -> Callable[[float], int]:
    """The products (VJPs) of posterior's solve at each angle a grid evaluates (``angles[:-1]``, as
    ``sampling.ddim`` steps), ``iterations`` per step on average: steps above :data:`FAINT_ANGLE` get half (at least
    1), those at or below :data:`SETTLED_ANGLE` three quarters (rounded up) where the solve ``settles`` there; the
    steps between share the rest evenly (the noisiest one more where it does not divide). A DDIM step carries ``x̃``
    into ``z`` with the weight ``sin(φ_t − φ_s)/sin φ_t``, small where ``α`` is (near pure noise); near the data end
    ``J ≈ I/α``, so ``M = A J Aᵀ ≈ A Aᵀ/α`` is nearly a multiple of the identity for a frame selection or an area
    average (not through a decoder: ``settles`` False); between them ``J`` has the data's spread spectrum and CG
    needs many products. On a spatially smooth Gaussian oracle (``oracle.SeparableGaussian``, length 2) on Wan's
    grid, 4 products at every step miss the extension's conditional mean by 0.068, spread so by 0.020 at the same
    cost (converged: 0.023; docs/benchmarks.md, "Posterior's products where they are needed"); half near the data
    end cost the new frames' spread up to 0.03 on independent pixels. Angles off the grid get ``iterations``."""
    _check(iterations)
    evaluated = sorted({float(a) for a in list(angles)[:-1]}, reverse=True)
    low = SETTLED_ANGLE if settles else 0.0
    middle = [a for a in evaluated if low < a <= FAINT_ANGLE]
    if not middle or len(middle) == len(evaluated):
        return lambda phi: iterations
    faint = {a: max(1, iterations // 2) for a in evaluated if a > FAINT_ANGLE}
    settled = {a: iterations - iterations // 4 for a in evaluated if a <= low}
    budget = iterations * len(evaluated) - sum(faint.values()) - sum(settled.values())
    base, extra = divmod(budget, len(middle))
    counts = {**faint, **settled}
    counts.update({a: base + (i < extra) for i, a in enumerate(middle)})
    return lambda phi: counts.get(float(phi), iterations)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per batch element ``Σ a·b`` over every other dimension: ``[B, ...] × [B, ...] → [B]``."""
    return (a * b).flatten(1).sum(1)


def _per(batch: Tensor, like: Tensor) -> Tensor:
    """``[B]`` reshaped to broadcast against ``like`` (``[B, ...]``)."""
    return batch.reshape(-1, *([1] * (like.ndim - 1)))


def linearized(operator: Callable[[Tensor], Tensor], x: Tensor
               ) -> tuple[Tensor, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``A`` linearised at ``x``: ``(A(x), v ↦ J_A v, u ↦ J_Aᵀ u)`` with ``J_A = ∂A/∂x`` at ``x``
    (``x``: ``[B, C, F, H, W]``; ``u``: ``A(x)``'s shape). ``J_Aᵀ u`` is a VJP through ``A``; ``J_A v`` the
    central difference ``(A(x + h v) − A(x − h v))/2h`` per batch element, ``h·RMS(v) = FD_STEP·max(RMS(x), 1)``
    — two evaluations of ``A`` without a graph, so an operator autograd can differentiate only once works (a
    decoder with fused attention has no double backward); exact up to rounding for a linear ``A`` (frame
    selection, area averaging, their compositions, ``guidance.combine``), error ``O(h²)`` otherwise.
    Call with gradients enabled."""
    xl = x.detach().requires_grad_(True)
    a = operator(xl)
    base = FD_STEP * x.flatten(1).pow(2).mean(1).sqrt().clamp(min=1.0)

    def forward(v: Tensor) -> Tensor:
        norm = v.flatten(1).pow(2).mean(1).sqrt()
        h = base / torch.where(norm > 0, norm, torch.ones_like(norm))
        with torch.no_grad():
            d = operator(x + _per(h, v) * v) - operator(x - _per(h, v) * v)
        return d / (2 * _per(h, d))

    def adjoint(u: Tensor) -> Tensor:
        (out,) = torch.autograd.grad(a, xl, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(xl) if out is None else out

    return a.detach(), forward, adjoint


def _guarded_step(ok: Tensor, step: Tensor, res: Tensor, mp: Tensor, jp: Tensor, correction: Tensor,
                  bound: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One solver step ``u += step·p`` per batch element (``[B]`` ``ok`` and ``step``; ``mp = M p``,
    ``jp = J Aᵀ p``), taken only where ``ok`` and where the new residual's squared norm is at most ``bound``.
    Returns ``(ok, correction + step·jp, residual, the new residual's squared norm)``."""
    new_res = res - _per(step, mp) * mp
    rr_new = _dot(new_res, new_res)
    ok = ok & (rr_new <= bound)
    step = torch.where(ok, step, torch.zeros_like(step))
    correction = correction + torch.where(_per(ok, jp), _per(step, jp) * jp, torch.zeros_like(jp))
    return ok, correction, torch.where(_per(ok, res), new_res, res), rr_new


def posterior_update(x_hat: Tensor, jacobian_product: Callable[[Tensor], Tensor], operator: Callable[[Tensor], Tensor],
                     y: Tensor, iterations: int) -> tuple[Tensor, int]:
    """``(x̃, products used)``: ``x̃ = x̂ + J Aᵀ u`` with ``(A J Aᵀ) u = r = y − A(x̂)`` solved by at most
    ``iterations`` steps from ``u = 0`` per batch element, conjugate-gradient (CG) steps as long as they do not raise
    the error, then conjugate-residual ones. ``x_hat``: ``[B, C, F, H, W]``;
    ``jacobian_product(w)``: ``J w`` (or the ``Jᵀ w`` a VJP gives) for ``w`` of that shape; ``operator``: ``A``
    (:func:`linearized`); ``y``: ``A``'s output shape, batch ``B`` or 1.

    A nonlinear ``A`` is linearised at ``x̂``; where a step leaves the true error ``y − A(x̃)`` further from the
    linearised one than half the latter's norm, the linearisation no longer holds, and the products left go on from
    ``A`` linearised again at ``x̃`` (Gauss–Newton), CG afresh. Through the nonlinear decoder of
    tests/test_posterior.py, one linearisation solved to convergence misses the conditional mean's slope by 0.080,
    linearised again by 0.022.

    A CG step is taken where the curvature ``pᵀ M p`` is positive and the step leaves the linearised observation
    error ``‖y − A(x̃)‖`` at most where it started. Elsewhere the step is the minimal-residual one along the same
    ``M p`` (``s = rᵀ M p / ‖M p‖²``, which lowers the error whenever ``rᵀ M p > 0``), and the element goes on by
    conjugate residuals (Saad, "Iterative Methods for Sparse Linear Systems", 2003, Alg. 6.20), whose error never
    grows; it stops when no step lowers the error or its residual is below ``100 ε`` of the first. Each step is
    one product ``J Aᵀ w``. For Gaussian data (``J`` symmetric positive definite, well conditioned) every step is
    CG's. A trained network's ``J`` need be neither symmetric nor positive definite, and at high noise ``M`` is far
    from well conditioned: on the bundled model CG's first step would have raised the error at 70–92% of the calls
    at angles 0.6–1.5, and refused, it left the guidance standing still there (docs/benchmarks.md, "Posterior
    guidance that stood still"). ``M = A J Aᵀ`` is also singular when ``A`` has more outputs than inputs (a decoder: more pixels than
    latents), and with real pixels, rarely exactly decodable, ``r`` is not in its range and plain CG would diverge.
    ``x̃`` is finite whenever ``x̂`` is."""
    x, used, solved = x_hat, 0, None
    while used < iterations:
        a0, forward, adjoint = linearized(operator, x)
        res = (y.to(a0) - a0).expand_as(a0).clone()
        if solved is None:
            solved = (100 * torch.finfo(res.dtype).eps) ** 2 * _dot(res, res)
        x, n, depart = _solve(x, res, solved, jacobian_product, operator, y, forward, adjoint, iterations - used)
        used += n
        if n == 0 or not bool(depart.any()):
            break
    return x, used


def _solve(x: Tensor, res: Tensor, solved: Tensor, jacobian_product, operator, y: Tensor, forward, adjoint,
           iterations: int) -> tuple[Tensor, int, Tensor]:
    """The steps of :func:`posterior_update` on one linearisation of ``A`` (at ``x``, its residual ``res``):
    ``(x + J Aᵀ u, products used, departed)``. An element departs, and stops, where a step leaves the true
    error ``y − A(x + J Aᵀ u)`` further from the linearised one than half the latter's norm."""
    rr = _dot(res, res)
    rr0 = rr.clone()
    active = torch.isfinite(rr) & (rr > solved)
    correction = torch.zeros_like(x)
    depart = torch.zeros_like(active)
    used = 0
    cr = torch.zeros_like(active)  # batch elements that went on by conjugate residuals
    p, jp, mp, rmr = res.clone(), torch.zeros_like(x), torch.zeros_like(res), torch.ones_like(rr)
    for _ in range(iterations):
        if not bool(active.any()):
            break
        jq = jacobian_product(adjoint(torch.where(_per(cr, res), res, p)))  # J Aᵀ p (CG), J Aᵀ r (CR)
        used += 1
        mq = forward(jq)  # A J Aᵀ of the same
        fine = active & torch.isfinite(jq).flatten(1).all(1) & torch.isfinite(mq).flatten(1).all(1)
        # conjugate gradients: the step along p
        curv = _dot(p, mq)
        cg = fine & ~cr & (curv > 0)
        step = torch.where(cg, rr / torch.where(cg, curv, torch.ones_like(curv)), torch.zeros_like(curv))
        trial = res - _per(step, mq) * mq
        cg = cg & (_dot(trial, trial) <= rr0)
        # conjugate residuals: p ← r + β p, M p ← M r + β M p, step rᵀ M r / ‖M p‖²; an element whose CG step
        # failed takes the minimal-residual step along the p it has (β = 0) and goes on by them
        switch = fine & ~cr & ~cg
        rmr_new = _dot(res, mq)
        beta = torch.where(cr, rmr_new / torch.where(cr, rmr, torch.ones_like(rmr)), torch.zeros_like(rmr))
        jp = torch.where(_per(cr | switch, jq), jq + _per(beta, jp) * jp, jp)
        mp = torch.where(_per(cr | switch, mq), mq + _per(beta, mp) * mp, mp)
        rmr = torch.where(cr | switch, rmr_new, rmr)
        mpmp = _dot(mp, mp)
        mr = fine & (cr | switch) & (rmr > 0) & (mpmp > 0)
        mr_step = rmr / torch.where(mr, mpmp, torch.ones_like(mpmp))
        step = torch.where(cg, step, torch.where(mr, mr_step, torch.zeros_like(step)))
        m_moved = torch.where(_per(cg, mq), mq, mp)  # M of the direction stepped along
        new_res = res - _per(step, m_moved) * m_moved
        rr_new = _dot(new_res, new_res)
        mr = mr & (rr_new <= rr)
        ok = cg | mr
        moved = torch.where(_per(cg, jq), jq, jp)
        correction = torch.where(_per(ok, moved), correction + _per(step, moved) * moved, correction)
        res = torch.where(_per(ok, res), new_res, res)
        beta_cg = torch.where(cg, rr_new / torch.where(cg, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = torch.where(_per(cg, p), res + _per(beta_cg, p) * p, p)
        rr = torch.where(ok, rr_new, rr)
        cr = cr | switch
        if used < iterations:  # products left to go on with: is the linearisation still right?
            with torch.no_grad():
                true = y.to(res) - operator(x + correction)
            depart = ok & (_dot(true - res, true - res) > rr / 4)
        active = ok & (rr > solved) & ~depart
    return x + correction, used, depart


def consistent_update(x_hat: Tensor, operator: Callable[[Tensor], Tensor], y: Tensor,
                      iterations: int) -> tuple[Tensor, int]:
    """``(x̃, products used)``: ``x̃ = x̂ + J_Aᵀ u`` minimising the linearised observation error
    ``‖y − A(x̂) − J_A J_Aᵀ u‖`` by at most ``iterations`` conjugate-residual steps from ``u = 0`` per batch element
    (Saad, "Iterative Methods for Sparse Linear Systems", 2003, Alg. 6.20, on ``M = J_A J_Aᵀ``): the least-squares
    fit nearest ``x̂`` (``δ = J_Aᵀ u`` is the minimum-norm correction), also when ``M`` is singular and ``y`` not
    exactly reachable, as for real pixels through a decoder. The error never grows from one step to the next; a
    batch element stops when it would, or at non-positive or non-finite ``rᵀ M r``. Arguments as
    :func:`posterior_update`; each product is one VJP through ``A`` and two evaluations of it."""
    a0, forward, adjoint = linearized(operator, x_hat)
    res = (y.to(a0) - a0).expand_as(a0).clone()
    rr = _dot(res, res)
    solved = (100 * torch.finfo(res.dtype).eps) ** 2 * rr
    active = torch.isfinite(rr) & (rr > 0)
    correction = torch.zeros_like(x_hat)
    if not bool(active.any()):
        return x_hat, 0
    jp = adjoint(res)  # p = r: J_Aᵀ p and M p
    mp = forward(jp)
    used = 1
    rmr = _dot(res, mp)
    for _ in range(iterations):
        mpmp = _dot(mp, mp)
        ok = active & torch.isfinite(rmr) & (rmr > 0) & (mpmp > 0)
        step = torch.where(ok, rmr / torch.where(ok, mpmp, torch.ones_like(mpmp)), torch.zeros_like(mpmp))
        ok, correction, res, rr_new = _guarded_step(ok, step, res, mp, jp, correction, rr)
        rr = torch.where(ok, rr_new, rr)
        active = ok & (rr > solved)
        if used == iterations or not bool(active.any()):
            break
        jr = adjoint(res)
        mr = forward(jr)
        used += 1
        rmr_new = _dot(res, mr)
        beta = torch.where(active, rmr_new / torch.where(active, rmr, torch.ones_like(rmr)), torch.zeros_like(rmr))
        jp = jr + _per(beta, jp) * jp
        mp = mr + _per(beta, mp) * mp
        rmr = rmr_new
    return x_hat + correction, used


def _check(iterations) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")


def posterior(denoiser: Callable[[Tensor, float], Tensor], observation: Observation,
              iterations: int | Callable[[float], int]) -> Callable[[Tensor, float], Tensor]:
    """Posterior guidance of ``denoiser`` (``D(z, φ) → x̂``, float32 ``[B, C, F, H, W]``) by ``observation``:
    ``x̃ = x̂ + J Aᵀ (A J Aᵀ)⁻¹ (y − A(x̂))``, ``J = ∂x̂/∂z`` (module docstring), the inverse by ``iterations``
    conjugate-gradient steps (≥ 1; or ``iterations(φ)`` at angle φ, :func:`products_per_step`), each one VJP
    through the denoiser on a fresh leaf (the graph never spans steps). Works under ``torch.inference_mode()``
    when the model's weights were made outside it (as ``sampling.guided``)."""
    if callable(iterations):
        count = iterations
    else:
        _check(iterations)

        def count(phi: float) -> int:
            return iterations

    def denoise(z: Tensor, phi: float) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            zz = z.detach().clone().float().requires_grad_(True)
            y = observation.y.to(device=z.device, dtype=torch.float32).clone()
            try:
                x = denoiser(zz, phi).float()
            except RuntimeError as e:
                _reraise(e)
            if not x.requires_grad:
                raise RuntimeError("posterior guidance needs x̂ to depend on z through autograd; the denoiser "
                                   "returned a tensor without a graph")

            def jacobian_product(w: Tensor) -> Tensor:
                try:
                    (g,) = torch.autograd.grad(x, zz, w, retain_graph=True)
                except RuntimeError as e:
                    _reraise(e)
                return g

            out, _ = posterior_update(x.detach(), jacobian_product, observation.operator, y, count(phi))
        return out.detach()

    return denoise


def consistent(denoiser: Callable[[Tensor, float], Tensor], observation: Observation,
               iterations: int) -> Callable[[Tensor, float], Tensor]:
    """Data consistency on x̂: ``x̃ = x̂ + J_Aᵀ (J_A J_Aᵀ)⁻¹ (y − A(x̂))`` (the update with ``J = I``; least squares
    where ``y`` is out of reach) by ``iterations`` conjugate-residual steps through ``A`` alone
    (:func:`consistent_update`) — the denoiser runs forward only (no graph, no backward), so
    the step costs what an unguided one does plus ``A``'s passes (for a latent model: the decoder's). For a
    frame selection or area averaging (``A Aᵀ`` a multiple of ``I``) one step gives the orthogonal projection
    ``Observation.project``."""
    _check(iterations)

    def denoise(z: Tensor, phi: float) -> Tensor:
        x = denoiser(z, phi)
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().float()
            y = observation.y.to(device=z.device, dtype=torch.float32).clone()
            out, _ = consistent_update(x, observation.operator, y, iterations)
        return out.detach()

    return denoise


def _reraise(e: RuntimeError):
    """Raise ``e``, or say what to do when the model's weights are inference tensors."""
    if "Inference tensors cannot be saved for backward" in str(e):
        raise RuntimeError("posterior guidance needs gradients through the model, but the model's weights are "
                           "inference tensors: build/load the model outside torch.inference_mode() "
                           "(sampling itself may run inside it)") from e
    raise e
