"""Jobs of a model that samples in a VAE's latent space (``contract.LatentModel``: ``external.LatentSpace``).

The model samples latents; the job's known pixels are observed through the decoder. Extension by a causal
encoder goes window by window in pixels: each window is a clip of its own whose context, the last ``1 + time·k``
frames made so far, is encoded and known exactly as ``k + 1`` latents (replaced and guided like frames); every
other known frame — the rest of a short input, the keyframes of interpolation, the low-resolution frames of
upscaling — is observed in pixels, ``A(x) = degrade(decode(x))``. Interpolation and upscaling have time windows
in latent frames (``vdm_core.planning``); there are no spatial tiles (the decoder needs the whole frame).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from . import guidance
from .contract import Capabilities
from .execution import Progress, sample_plan
from .external import LatentSpace
from .planning import Job, Plan, Window, assign_frames, extend_windows, grid_windows
from .settings import SamplerSettings, auto_guidance_weight, whole


@dataclass(frozen=True)
class PixelsKnown:
    """Pixel frames a latent job knows: ``frames`` (output frame indices) with values ``values``
    (``[3, len(frames), H/s, W/s]``, at ``1/s`` of the output's resolution)."""

    frames: tuple[int, ...]
    values: Tensor
    factor: int = 1


def latent_plan(caps: Capabilities, space: LatentSpace, shape: tuple[int, int, int, int], *, window: int | None,
                context: int | None = None, overlap: int | None = None, made: int = 0,
                grid: bool = False) -> tuple[Tensor, Plan]:
    """Latent buffer and time windows (in latent frames) for an output clip of pixel ``shape``: windows of
    the model's native latent frame count (or ``window`` pixel frames), extension-style (``made`` latents
    known first, ``context`` pixel frames of context) or, with ``grid``, overlapping (``overlap`` pixel
    frames) like interpolation and upscaling. No spatial tiles: the decoder needs the whole frame."""
    _, f, h, w = shape
    s = space.scale
    if h % s or w % s:
        raise ValueError(f"the output frames are {w}×{h} pixels; this model's VAE needs width and height that are "
                         f"multiples of {s} (e.g. {w // s * s or s}×{h // s * s or s}): resize the input first")
    total = space.latent_frames(f)
    win = space.latent_frames(whole("window", window, 1)) if window is not None else (caps.frames or total)
    if grid:
        ov = win // 4 if overlap is None else space.latent_frames(overlap) - 1
        wins = grid_windows(total, 1, win, min(ov, win - 1) if win > 1 else 0)
    else:
        ctx = win // 2 if context is None else space.latent_frames(context)
        if total > win and not 1 <= ctx < win:
            raise ValueError(f"context must be smaller than the window ({space.pixel_frames(win)} frames for this "
                             f"model), got {context}")
        wins = extend_windows(made, total, win, ctx)
    lat = torch.zeros((space.channels, total, h // s, w // s))
    cols = ((0, w // s),)
    return lat, Plan(tuple(lat.shape), assign_frames(wins, total, set(range(made)), set()), ((0, h // s),), cols)


def latent_observation(win: Window, lat: Tensor, space: LatentSpace, known: PixelsKnown | None, device,
                       auto_weight: float) -> guidance.Observation | None:
    """What latent window ``win`` knows: latents known exactly (encoded input frames, or made by earlier
    windows) selected, and the known pixel frames whose latent is new here through the decoder,
    ``A(x) = degrade(decode(x))[frames]`` (``degrade``: area averaging by ``known.factor``). The window is
    decoded on its own: its local frame ``j`` is output frame ``j + time·start``. A causal decoder's first
    frames depend on the first latents only, so it decodes the latents up to the last known frame's, no more
    (exact: extension's known frames lead the window, and the rest is never decoded for the gradient).

    Pixels cannot be replaced in latent space, so their guidance must stay stable by itself (gain
    ``w_r·‖J‖² < 2``, ``sampling.conditioned``), and a decoder's gain ``‖J‖²`` is nothing like a frame
    selection's 1. The pixel term is therefore scaled by ``1/(auto_weight·‖J‖²)`` (``guidance.operator_gain``
    at a unit-normal latent, what normalised latents look like: a VAE decoder's gain at the zero latent can be
    far larger, ~45× for Wan 2.1's): at the job's auto weight its gain is 1, and it grows in proportion to
    ``w_r``."""
    n, exact, pixels = win.stop - win.start, None, None
    if win.exact:
        y = lat[:, list(win.exact)].unsqueeze(0).to(device)
        exact = guidance.select_frames(y, tuple(i - win.start for i in win.exact), n)
    if known is not None:
        first = space.time * win.start
        new = set(win.new)
        idx = [i for i, f in enumerate(known.frames) if space.latent_of(f) in new and f >= first]
        if idx:
            local = [known.frames[i] - first for i in idx]
            factor = known.factor
            needed = space.latent_of(max(local)) + 1 if space.causal else n

            def operator(x: Tensor) -> Tensor:
                img = space.decode(x[:, :, :needed])[:, :, local]
                return guidance.area_downsample(img, factor) if factor > 1 else img

            pixels = guidance.Observation(y=known.values[:, idx].unsqueeze(0).to(device), operator=operator,
                                          num_frames=n)
            typical = torch.randn((1, *lat.shape[:1], n, *lat.shape[2:]), generator=torch.Generator().manual_seed(0))
            gain = guidance.operator_gain(operator, typical.to(device))
            if gain > 0:
                pixels = guidance.scaled(pixels, 1.0 / (auto_weight * gain))
    if exact is not None and pixels is not None:
        return guidance.combine(exact, pixels)
    return exact if exact is not None else pixels


def decoded(space: LatentSpace, lat: Tensor, frames: int) -> Tensor:
    """The finished latents decoded (``space.decode_final``) to ``[3, frames, H, W]`` in [-1, 1], on the CPU."""
    with torch.no_grad():
        clip = space.decode_final(lat.unsqueeze(0))[0]
    return clip[:, :frames].detach().float().cpu().clamp(-1, 1)


def held_block_means(clip: Tensor, low: Tensor, factor: int, rounds: int = 8) -> Tensor:
    """The decoded ``clip`` ``[3, F, H, W]`` in [-1, 1] moved onto the clips in [-1, 1] whose area averages by
    ``factor`` are ``low`` ``[3, F, H/f, W/f]``, by a smooth correction: ``rounds`` of back-projection
    ``x ← clamp(x + U(y − D x))`` (``D = guidance.area_downsample``, ``U`` bicubic upsampling; ``D U`` is a mild
    blur, so the block-mean error shrinks geometrically), then 4 alternations of the orthogonal projection
    ``guidance.match_block_means`` and the clamp, which remove what is left exactly. Without the clamp the
    back-projection's limit is ``x + U (D U)⁻¹ (y − D x)``: the oblique projection that changes ``x`` by a field
    in the range of ``U``, smooth across blocks, where the orthogonal one shifts every block by a constant and
    leaves a block pattern wherever the decoder's error varies smoothly (a decoder cannot make every clip: its
    reconstruction error stays in its output whatever the sampler does). From ``x = 0`` it is a bicubic
    upsampling whose block means are exact. The bundled path's sampler ends with the orthogonal projection
    (``sampling.projected``) of a sample that already holds them."""
    x, y = clip.unsqueeze(0), low.unsqueeze(0).to(clip)
    for _ in range(rounds):
        x = (x + _bicubic_upsample(y - guidance.area_downsample(x, factor), factor)).clamp(-1, 1)
    for _ in range(4):
        x = guidance.match_block_means(x, y, factor).clamp(-1, 1)
    return x[0]


def _bicubic_upsample(x: Tensor, factor: int) -> Tensor:
    """``[B, C, F, h, w] -> [B, C, F, h·f, w·f]``, every frame by bicubic interpolation (``align_corners=False``,
    which reproduces constants)."""
    b, c, f, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    up = torch.nn.functional.interpolate(frames, scale_factor=factor, mode="bicubic", align_corners=False)
    return up.reshape(b, f, c, h * factor, w * factor).permute(0, 2, 1, 3, 4)


def with_keyframes(sample: Tensor, keys: Tensor, k: int) -> Tensor:
    """The decoded ``sample`` ``[3, (N − 1)·k + 1, H, W]`` of an interpolation with its keyframes ``keys``
    ``[3, N, H, W]`` (frames 0, k, 2k, …) put back, and their residual ``r = keys − sample[::k]`` carried to the
    frames between, linearly in time: frame ``a + j`` between keys ``a`` and ``a + k`` gets
    ``sample + (1 − j/k)·r_a + (j/k)·r_{a+k}`` (pasting the keys is the case ``j = 0``). A decoder's error on a
    frame is close to its error on the neighbouring frames of the same scene; pasted alone, the keys would be a
    different layer from the frames between, flickering every ``k`` frames (trained tiny Wan of
    tests/harness/models, interpolation ×2, docs/benchmarks.md: the frames between 23.25 → 23.91 dB, brightness
    jumps 1.66 → 0.47/255). Clamped to [-1, 1]."""
    r = keys.to(sample) - sample[:, ::k]
    w = torch.arange(k, dtype=sample.dtype) / k  # position between two keys
    between = (1 - w)[None, None, :, None, None] * r[:, :-1, None] + w[None, None, :, None, None] * r[:, 1:, None]
    correction = torch.cat([between.flatten(1, 2), r[:, -1:]], 1)
    return (sample + correction).clamp(-1, 1).index_copy(1, torch.arange(0, sample.shape[1], k), keys.to(sample))


def with_context(sample: Tensor, known: Tensor) -> Tensor:
    """The decoded ``sample`` ``[3, F + n, H, W]`` of an extension with its known frames ``known`` ``[3, F, H, W]``
    put back, and the last known frame's residual ``r = known[F − 1] − sample[F − 1]`` carried into the new frames,
    fading linearly: new frame ``F − 1 + j`` gets ``sample + (1 − j/(n + 1))·r``. This is :func:`with_keyframes`'s
    line towards a residual of 0 one frame past the window, where no frame is known. Pasted alone, the known
    frames would meet the new ones in a jump of the decoder's error at every window boundary (trained tiny Wan
    of tests/harness/models, extension, 6 clips per set, docs/benchmarks.md: the new frames +1.07 → +1.25 dB
    over repeating the last frame on v1, −3.31 → −1.68 dB on the independent scenes). Clamped to [-1, 1]."""
    f, n = known.shape[1], sample.shape[1] - known.shape[1]
    r = known[:, -1].to(sample) - sample[:, f - 1]
    fade = 1 - torch.arange(1, n + 1, dtype=sample.dtype) / (n + 1)
    new = (sample[:, f:] + fade[None, :, None, None] * r[:, None]).clamp(-1, 1)
    return torch.cat([known.to(sample), new], 1)


def window_chain(space: LatentSpace, caps: Capabilities, made: int, total: int, window: int | None,
                 context: int | None) -> list[tuple[int, int]]:
    """(context frames, new frames) of each window of an extension from ``made`` to ``total`` pixel frames by a
    causal VAE's model (:func:`extend_in_windows`), as ``planning.extend_windows`` in latents: windows of
    ``window`` pixel frames' latents (default: the model's window; a model without one makes the whole clip
    in one window, every frame made its context), ``context`` frames' latents of new frames' context (default
    half the window); a short start gives the window more new frames, the last window more context. A
    window's context is ``1 + time·k`` frames (all known exactly as latents) unless it is all that is made."""
    if window is None and not caps.frames:
        return [(made, total - made)] if made < total else []
    win = space.latent_frames(whole("window", window, 1)) if window is not None else caps.frames
    ctx = win // 2 if context is None else space.latent_frames(whole("context", context, 1))
    span, keep = space.pixel_frames(win), space.pixel_frames(ctx)
    if total > span and not 1 <= ctx < win:
        raise ValueError(f"context must be smaller than the window ({span} frames for this model), got {context}")
    chain = []
    while made < total:
        new = min(total - made, span - min(keep, made))
        room = span - new
        m = made if made <= room else 1 + space.time * ((room - 1) // space.time)
        chain.append((m, new))
        made += new
    return chain


def counted(progress: Progress | None, first: int, count: int, steps: int) -> Progress | None:
    """``progress`` of one window's sampling reported as window ``first`` of ``count``, each ``steps`` units wide:
    the window's own ``done`` of ``total`` (its grids' steps, which may differ from ``steps``: posterior's filled grid
    on a host) scaled to them, so each window ends where the next begins and the last at ``count·steps``."""
    if progress is None:
        return None

    def report(done, total, preview):
        progress(first * steps + done * steps / max(total, 1), count * steps, preview)

    return report


def extend_in_windows(model, caps: Capabilities, clip: Tensor, chain: list[tuple[int, int]],
                      settings: SamplerSettings, *, progress: Progress | None, device, first: int = 0,
                      count: int | None = None) -> Tensor:
    """``clip`` ``[3, F, H, W]`` extended window after window of ``chain`` (:func:`window_chain`), each window a
    clip of its own: the last frames made so far, encoded (known exactly as latents; frames past the last
    ``1 + time·k`` observed in pixels), and its new frames. A causal VAE makes latent 0 of a clip from its first
    frame alone, and its models learnt clips that begin so; a window placed inside one latent buffer would begin
    with a latent of ``time`` frames instead (on the trained tiny Wan of tests/harness/models the colour then
    drifted 113/255 in the second window, 15/255 chained in pixels). Window ``i`` draws its noise from
    ``seed + first + i``; progress counts ``count`` windows in all, this chain's from ``first``."""
    count = len(chain) if count is None else count
    out = clip
    for i, (m, new) in enumerate(chain):
        piece = run_window(model, caps, Job(out[:, out.shape[1] - m:], new_frames=new),
                           dataclasses.replace(settings, seed=settings.seed + first + i),
                           progress=counted(progress, first + i, count, settings.steps), device=device)
        out = torch.cat([out, piece[:, m:]], 1)
    return out


def run_latent(model, caps: Capabilities, job: Job, settings: SamplerSettings, *, progress: Progress | None,
               device) -> Tensor:
    """``tasks.run`` for a latent model (the module docstring says what is known how); ``settings`` with auto
    unresolved or not. The output keeps the input frames unchanged where they are known at full resolution, and
    the block means of frames known at low resolution are the input's (:func:`held_block_means`). Extension by a
    causal VAE's model goes window by window in pixels (:func:`extend_in_windows`)."""
    space = caps.space
    if job.new_frames and space.causal and space.encode is not None:
        clip = job.clip.detach().float().cpu()
        chain = window_chain(space, caps, clip.shape[1], clip.shape[1] + job.new_frames, job.window, job.context)
        return extend_in_windows(model, caps, clip, chain, settings, progress=progress, device=device)
    return run_window(model, caps, job, settings, progress=progress, device=device)


def run_window(model, caps: Capabilities, job: Job, settings: SamplerSettings, *, progress: Progress | None,
               device) -> Tensor:
    """:func:`run_latent` in one latent buffer (interpolation, upscaling, one extension window or a model
    without a causal encoder)."""
    space = caps.space
    clip = job.clip.detach().float().cpu()
    c, f, h, w = clip.shape
    shape = job.output_shape()
    k, s = job.multiplier, job.factor
    made = 0
    if job.new_frames:
        if space.causal and space.encode is not None:
            made = (f - 1) // space.time + 1
        rest = tuple(range(space.pixel_frames(made), f)) if made else tuple(range(f))
        known = PixelsKnown(rest, clip[:, list(rest)]) if rest else None
    else:
        keys = tuple(range(0, shape[1], k))
        known = PixelsKnown(keys, clip, s)
    lat, p = latent_plan(caps, space, shape, window=job.window, context=job.context, overlap=job.overlap,
                         made=made, grid=not job.new_frames)
    if made:
        with torch.no_grad():
            prefix = clip[:, :space.pixel_frames(made)].unsqueeze(0).to(device)
            lat[:, :made] = space.encode(prefix)[0, :, :made].detach().float().cpu()
    extend = bool(job.new_frames)
    auto = auto_guidance_weight(s, extend)
    lat = sample_plan(model, caps, p, lat, lambda win: latent_observation(win, lat, space, known, device, auto),
                      settings.for_job(s, extend), progress=progress, device=device)
    out = decoded(space, lat, shape[1])
    if extend:
        return with_context(out, clip)
    keys = clip if s == 1 else held_block_means(out[:, ::k], clip, s)
    return with_keyframes(out, keys, k)


def generate_latent(model, caps: Capabilities, frames: int, height: int, width: int, *, window: int | None,
                    context: int | None, settings: SamplerSettings, progress: Progress | None, device) -> Tensor:
    """``tasks.generate`` for a latent model: ``[3, frames, height, width]`` decoded, windows extending the first
    (by a causal VAE's model in pixels, :func:`extend_in_windows`)."""
    frames, height, width = (whole(n, v, 1) for n, v in (("frames", frames), ("height", height), ("width", width)))
    settings, space = settings.for_job(extend=True, new_clip=True), caps.space
    chained = space.causal and space.encode is not None
    first, chain = frames, []
    if chained:
        first = window_chain(space, caps, 0, frames, window, context)[0][1]  # one window from nothing
        chain = window_chain(space, caps, first, frames, window, context)
    report = counted(progress, 0, 1 + len(chain), settings.steps) if chain else progress
    lat, p = latent_plan(caps, space, (3, first, height, width), window=window, context=context, made=0)
    out = sample_plan(model, caps, p, lat, lambda win: latent_observation(win, lat, space, None, device,
                                                                          settings.weight),
                      settings, progress=report, device=device)
    clip = decoded(space, out, first)
    if not chain:
        return clip
    return extend_in_windows(model, caps, clip, chain, settings, progress=progress, device=device, first=1,
                             count=1 + len(chain))
