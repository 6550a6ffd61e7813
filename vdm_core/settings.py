"""How to sample: one settings object from the front ends' widgets to ``sampling.sample`` (no torch here).

``guidance_weight`` None is "auto": the weight tuned for the job, resolved in one place,
:meth:`SamplerSettings.for_job`. Front ends show auto as −1 (``vdm_app.spec.AUTO_WEIGHT``) and convert
it when they make the settings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from numbers import Integral

METHODS = ("reconstruction", "replacement", "both", "posterior", "consistency")
"""How an observation conditions sampling (``sampling.conditioned``)."""
AUTO_METHOD = "auto"
"""The default method: ``posterior`` for every job (known frames or pixels; :meth:`SamplerSettings.for_job`) and for
a long new clip's later windows, ``both`` for a new clip's first window (:func:`resolved_method`). On the exact
Gaussian oracles at the nodes' 32 steps ``both`` at its auto weight misses the conditional mean of every extension
and interpolation: on the pack's own grid by 0.12–0.24 (slope error; slowly changing clips, ρ 0.97: spread
0.46–0.73, contrast climbing to 1.22 over 8 windows), on ComfyUI's by 0.15–0.68 (spread up to 7×, contrast to
1.17–2.27). ``posterior`` meets every one (≤ 0.05, spread 0.87–1.10 with its second-order steps, contrast
0.98–1.10), at about three times ``both``'s time; on the bundled model it trails ``both`` on interpolation and
long-extension colour, on the trained tiny Wan it leads on interpolation and upscaling of the v1 clips and is within
0.1 dB on extension (docs/benchmarks.md, "The default for every job: posterior" and "Second-order steps for
posterior")."""
CHOICES = (AUTO_METHOD, *METHODS)
"""What the front ends offer for ``method``."""
DEFAULT_ITERATIONS = 4
"""Solver iterations per step of methods ``posterior`` (conjugate gradients, conjugate residuals where a CG step
fails; each one backward pass through the model; per step on average, spread over the grid by
``posterior.products_per_step``) and ``consistency`` (conjugate residuals, each one through the observation only):
``vdm_core.posterior``."""
DEFAULT_STEPS = 32
"""Steps per window of every front end and of the library's job functions."""
AUTO_WEIGHT_EXACT = 16.0
"""Auto ``w_r`` for frames known exactly between new ones (interpolation). VDM used 9 (Kinetics) and 50 (BAIR)
with a summed loss; on the bundled model interpolation did best at 16 (docs/benchmarks.md, "w_r grid" and
"The auto weight of extension")."""
AUTO_WEIGHT_EXTEND = 8.0
"""Auto ``w_r`` for extension: frames known exactly before new ones, also the later windows of a long new clip.
Extrapolating, reconstruction guidance at 16 overshoots the exact conditional of Gaussian clips and every
window adds contrast (1.13 rising to 1.26 over 8 windows at ρ 0.9, to 2.2 at ρ 0.95); at 8 it stays within
0.92–1.05 for ρ 0.8–0.95 (not for ρ 0.97: 1.22, where only method posterior holds), and the bundled model's
colour drift over 8 windows falls from 9.6 to 6.9 (v1) and 40.7 to 10.4/255 (independent clips),
docs/benchmarks.md "The auto weight of extension"."""


def resolved_method(method: str, observed: bool) -> str:
    """``method`` for one window: :data:`AUTO_METHOD` is ``posterior`` where the window knows something
    (``observed``) and ``both`` where it knows nothing — the first window of a new clip, where the method only
    picks the step grid, and a model's own grid (``both``'s) is the one it was made for."""
    if method != AUTO_METHOD:
        return method
    return "posterior" if observed else "both"


def auto_guidance_weight(factor: int = 1, extend: bool = False) -> float:
    """The auto ``w_r``: :data:`AUTO_WEIGHT_EXTEND` (8) for extension, :data:`AUTO_WEIGHT_EXACT` (16) for other
    frames known exactly, ``4·s²`` when frames are known at ``1/s`` resolution. Area averaging by ``s`` has gain
    ``‖AAᵀ‖ = 1/s²``, so the same pull on low-resolution pixels needs ``s²`` times the weight; on the bundled
    model ×2 was best at 16 among 4/16 and ×4 at 48 among 16/48 (docs/benchmarks.md)."""
    if factor != 1:
        return 4.0 * factor * factor
    return AUTO_WEIGHT_EXTEND if extend else AUTO_WEIGHT_EXACT


def whole(name: str, value, minimum: int, hint: str = "") -> int:
    """``value`` as an int, or a ValueError naming ``name`` unless it is an integer ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}" + (f"; {hint}" if hint else ""))
    return int(value)


@dataclass(frozen=True)
class SamplerSettings:
    """``steps`` DDIM steps per window; ``eta`` fresh noise per step (0: deterministic DDIM, second-order for method
    posterior, ``sampling.sample``; 1: ancestral); ``guidance_weight`` ``w_r`` of reconstruction guidance (≥ 0;
    None: auto, :func:`auto_guidance_weight`); ``method`` one of :data:`CHOICES` (auto: :data:`AUTO_METHOD`); ``seed`` of all noise (window ``i`` draws from
    ``seed + i``); ``iterations`` of methods ``posterior`` and ``consistency``, and of ``both``'s data consistency
    through a decoder (≥ 1)."""

    steps: int = DEFAULT_STEPS
    eta: float = 0.0
    guidance_weight: float | None = None
    method: str = AUTO_METHOD
    seed: int = 0
    iterations: int = DEFAULT_ITERATIONS

    def __post_init__(self):
        object.__setattr__(self, "steps", whole("steps", self.steps, 1))
        object.__setattr__(self, "iterations", whole("iterations", self.iterations, 1))
        object.__setattr__(self, "seed", whole("seed", self.seed, 0))
        eta = float(self.eta)
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a number >= 0, got {self.eta}")
        object.__setattr__(self, "eta", eta)
        if self.guidance_weight is not None:
            w = float(self.guidance_weight)
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"guidance_weight must be a number >= 0 (or None for auto), got {self.guidance_weight}")
            object.__setattr__(self, "guidance_weight", w)
        if self.method not in CHOICES:
            raise ValueError(f"method must be one of {', '.join(CHOICES)}, got {self.method!r}")

    def for_job(self, factor: int = 1, extend: bool = False, new_clip: bool = False) -> SamplerSettings:
        """These settings with auto resolved for a job whose frames are known at ``1/factor`` resolution, or
        for an extension (``extend``): the weight by :func:`auto_guidance_weight`, the method (:data:`AUTO_METHOD`)
        to ``posterior``. For a ``new_clip`` (its later windows extend the first) an auto method stays auto, to be
        resolved per window by :func:`resolved_method`."""
        method = self.method if new_clip or self.method != AUTO_METHOD else "posterior"
        weight = auto_guidance_weight(factor, extend) if self.guidance_weight is None else self.guidance_weight
        return replace(self, method=method, guidance_weight=weight)

    @property
    def weight(self) -> float:
        """The resolved ``w_r``; raises if it is still auto (call :meth:`for_job` first)."""
        if self.guidance_weight is None:
            raise ValueError("guidance_weight is auto: resolve it for the job with SamplerSettings.for_job")
        return self.guidance_weight
