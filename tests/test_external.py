"""Models with their own noise schedule (vdm_core.external.SigmaModel) and models that sample latents
(LatentSpace) through the jobs of vdm_core.tasks: exact Gaussian oracles, a toy causal video VAE."""
import dataclasses
import math

import pytest
import torch

from vdm_core import guidance, latent_jobs, sampling, tasks
from vdm_core.contract import capabilities
from vdm_core.planning import Job
from vdm_core.data import sprite_batch
from vdm_core.settings import SamplerSettings, auto_guidance_weight
from vdm_core.external import LatentSpace, SigmaModel
from vdm_core.schedule import sampling_angles

from oracle import CorrelatedGaussian as Prior, flow, hosted, regression_error, ve

D = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", [flow(1.0), flow(8.0), ve()], ids=["flow", "flow-shift-8", "ve"])
def test_sigma_model_is_the_exact_v_of_its_denoiser(kind):
    prior = Prior(4, 0.9)
    model = hosted(prior, **kind)
    angles = model.angles(12)
    assert angles[0] == pytest.approx(model.phi_of(kind["sigma_max"]))  # starts at σ_max's angle
    assert all(b < a for a, b in zip(angles, angles[1:])) and angles[-1] > 0
    z = torch.randn(2, 1, 4, 3, 3, generator=_gen(0))
    for phi in angles[:-1] + [0.5 * (angles[3] + angles[4])]:  # on the grid and off it
        v = model(z, torch.full((2,), phi))
        x_hat = math.cos(phi) * z - math.sin(phi) * v
        torch.testing.assert_close(x_hat, prior.mean(z, phi), rtol=1e-4, atol=1e-5)


def test_shift_moves_the_grid_towards_noise():
    plain, shifted = SigmaModel(**flow(1.0), channels=1), SigmaModel(**flow(8.0), channels=1)
    assert shifted.angles(8)[0] == plain.angles(8)[0] == pytest.approx(math.pi / 2)
    assert all(s > p for s, p in zip(shifted.angles(8)[1:-1], plain.angles(8)[1:-1]))


def test_sigma_model_refuses_a_model_without_noise_and_a_missing_session():
    with pytest.raises(ValueError, match="adds no noise"):
        SigmaModel(scaling=lambda s: (1.0, 0.0), sigma_min=0.0, sigma_max=1.0, sigmas=lambda n: [1.0, 0.0], channels=1)
    with pytest.raises(RuntimeError, match="session"):
        SigmaModel(**flow(), channels=1)(torch.zeros(1, 1, 2, 2, 2), torch.tensor([1.0]))


@pytest.mark.parametrize("kind, as_close", [(flow(1.0), True), (ve(), True), (flow(8.0), False)],
                         ids=["flow", "ve", "flow-shift-8"])
def test_guidance_through_its_own_schedule_reaches_the_conditional_mean(kind, as_close):
    """Interpolation of the exact prior through a model with its own schedule: guided ('both') samples regress on
    the keyframes as E[x^b | x^a] does, as closely as on the pack's own angle grid (flow, VE), and far closer than
    replacement alone (VDM §3.1). Measured over seeds 1 and 5: replacement 0.71–0.79; 'both' w_r 8: 0.24–0.26 on
    flow and VE, 0.244 on the pack's grid; with shift 8 0.40 (the shift spends its 20 steps at high noise, where
    guidance is weak: α is small)."""
    prior = Prior(5, 0.9)
    model = hosted(prior, **kind)
    known, unknown = [0, 4], [1, 2, 3]
    x = prior.draw(512, 1, 1, seed=1)
    obs = guidance.select_frames(x[:, :, known], known, 5)
    noise = torch.randn(512, 1, 5, 1, 1, generator=_gen(2))
    err = {}
    for method, w in (("replacement", 0.0), ("both", 8.0)):
        out = sampling.sample(model, noise, model.angles(20), SamplerSettings(method=method, guidance_weight=w),
                              observation=obs, clip=False, generator=_gen(3))
        err[method] = regression_error(out, x[:, :, known], unknown, known, prior.cov)

    def own_grid(z, phi):
        p = float(phi[0])
        return (math.cos(p) * z - prior.mean(z, p)) / math.sin(p)
    out = sampling.sample(own_grid, noise, sampling_angles(20), SamplerSettings(method="both", guidance_weight=8.0),
                          observation=obs, clip=False, generator=_gen(3))
    pack = regression_error(out, x[:, :, known], unknown, known, prior.cov)
    assert err["replacement"] > 0.6, err
    assert err["both"] < 0.65 * err["replacement"], err
    if as_close:
        assert abs(err["both"] - pack) < 0.05, (err, pack)


# ---------------------------------------------------------------------------------------------- latent space


class ToyVAE:
    """A causal video 'VAE' for tests: latent 0 is frame 0, latent i (i ≥ 1) the mean of frames 4(i−1)+1 … 4i,
    at half the resolution (area average); decoding repeats each latent over its frames and upsamples (nearest).
    Linear, differentiable and exactly causal, with 2 latent channels (the first two RGB channels' mix)."""

    time, scale = 4, 2
    mix = torch.tensor([[0.5, 0.3, 0.2], [0.2, -0.4, 0.4]])

    def encode(self, x):
        groups = [x[:, :, :1]] + [x[:, :, 4 * (i - 1) + 1:4 * i + 1].mean(2, keepdim=True)
                                  for i in range(1, (x.shape[2] - 1) // 4 + 1)]
        lat = guidance.area_downsample(torch.cat(groups, 2), 2)
        return torch.einsum("kc,bcfhw->bkfhw", self.mix.to(x), lat)

    def decode(self, lat):
        rgb = torch.einsum("kc,bkfhw->bcfhw", self.mix.to(lat), lat)  # the mix's transpose: back to 3 channels
        frames = torch.cat([rgb[:, :, :1], rgb[:, :, 1:].repeat_interleave(4, 2)], 2)
        return frames.repeat_interleave(2, 3).repeat_interleave(2, 4)

    def space(self):
        return LatentSpace(decode=self.decode, decode_final=self.decode, encode=self.encode, channels=2,
                           time=4, scale=2, causal=True)


def latent_model(frames=None, seed=0, log=None, shift=3.0):
    """A SigmaModel of the latent prior N(0, Σ) over latent frames (flow coordinates with ``shift``), in ToyVAE's
    space; ``log`` collects each session's latent shape and noise levels; the session hands the window its
    denoiser."""
    kind = flow(shift)

    def denoise(x, sigma):
        a, b = kind["scaling"](float(sigma[0]))
        return Prior(x.shape[2], rho=0.8).mean(x / math.hypot(a, b), math.atan2(b, a))

    def session(window, shape, sigmas):
        if log is not None:
            log.append((tuple(shape), sigmas))
        return window(denoise)

    return SigmaModel(**kind, channels=2, session=session, space=ToyVAE().space(), frames=frames)


def sampled_clips(model) -> list:
    """What ``model``'s jobs decode at the end (``decode_final``'s outputs), before a job puts the known pixels
    back into its output: the sampler's own agreement with the observation."""
    seen, decode = [], model.space.decode_final
    model.space = dataclasses.replace(model.space, decode_final=lambda x: seen.append(decode(x)[0]) or decode(x))
    return seen


def clip_of(frames, h=8, w=8, seed=0):
    return (torch.rand(3, frames, h, w, generator=_gen(seed)) * 1.6 - 0.8)


def test_latent_extension_of_1_plus_4k_frames_knows_its_latents_exactly():
    sessions = []
    model = latent_model(frames=4, log=sessions)  # a window of 4 latents = 13 frames
    clip = clip_of(9)  # 1 + 4·2 frames → latents 0..2 known exactly
    out = tasks.extend(model, clip, 16, steps=4, seed=1)
    assert out.shape == (3, 25, 8, 8)
    assert torch.equal(out[:, :9], clip)  # the input frames come back unchanged
    # 25 frames = 7 latents: windows [1, 5) and [3, 7) of 4 latents, each sampled in the host's session, which
    # is given the levels the loop evaluates (the model's own grid) and then 0
    grid = [s for s in flow(3.0)["sigmas"](4) if s > 0] + [0.0]
    assert [shape for shape, _ in sessions] == [(1, 2, 4, 4, 4)] * 2
    assert all(levels == pytest.approx(grid, rel=1e-12, abs=1e-12) for _, levels in sessions)
    lat = ToyVAE().encode(out[None])[0]
    # the first new latents are conditioned on the known ones: not the prior's mean (zero)
    assert lat[:, 3].abs().mean() > 0.01


def test_latent_extension_observes_a_partial_group_in_pixels():
    model = latent_model()
    decoded_lengths, decode = [], model.space.decode
    model.space = dataclasses.replace(model.space, decode=lambda x: decoded_lengths.append(x.shape[2]) or decode(x))
    clip = clip_of(7)  # 1 + 4 frames known as latents, frames 5 and 6 only in pixels
    seen = []
    real = latent_jobs.latent_observation

    def spy(win, lat, space, known, device, auto):
        obs = real(win, lat, space, known, device, auto)
        seen.append(obs)
        return obs

    tasks_mp = pytest.MonkeyPatch()
    tasks_mp.setattr(latent_jobs, "latent_observation", spy)
    try:
        out = tasks.extend(model, clip, 6, steps=4, seed=2)
    finally:
        tasks_mp.undo()
    assert out.shape == (3, 13, 8, 8) and torch.equal(out[:, :7], clip)
    obs = seen[0]
    assert obs.selection.frame_indices == (0, 1)  # latents 0 and 1: frames 0..4
    assert obs.y.shape[1] == 2 * 2 * 4 * 4 + 3 * 2 * 8 * 8  # those latents, then frames 5, 6 in pixels (flattened)
    # the window has 4 latents (13 frames), but frames 5 and 6 are in latent 2: the causal decoder is given 3
    assert decoded_lengths and set(decoded_lengths) == {3}


@pytest.mark.parametrize("job", ["interpolate", "upscale"])
def test_latent_pixel_observations_fall_as_the_weight_rises(job):
    model = latent_model()
    sampled = sampled_clips(model)
    truth = ToyVAE().decode(ToyVAE().encode(clip_of(17, 16, 16, seed=3)[None]))[0]  # a clip the VAE can make
    if job == "interpolate":
        clip = truth[:, ::4]  # 5 keyframes → 17 frames
        run = lambda w: tasks.interpolate(model, clip, 4, steps=8, guidance_weight=w, method="reconstruction",  # noqa: E731
                                          seed=4)
        err = lambda out: (out - truth).pow(2).mean().sqrt()  # noqa: E731
    else:
        clip = guidance.area_downsample(truth[None], 2)[0]
        run = lambda w: tasks.upscale(model, clip, 2, steps=8, guidance_weight=w, method="reconstruction",  # noqa: E731
                                      seed=4)
        err = lambda out: (guidance.area_downsample(out[None], 2)[0] - clip).pow(2).mean().sqrt()  # noqa: E731
    auto = auto_guidance_weight(1 if job == "interpolate" else 2)
    for w in (0.0, auto / 4, auto):  # gains 0, 1/4 and 1 on the observed pixels
        assert run(w).shape == (3, 17, 16, 16)
    errs = [err(x).item() for x in sampled]  # the samples as decoded, before the job restores what it knows
    assert errs[0] > errs[1] > errs[2], errs


def test_latent_generate_and_sizes_the_vae_cannot_make():
    model = latent_model(frames=3)
    out = tasks.generate(model, 10, 8, 12, steps=3, seed=5)  # 10 frames need 4 latents (13 frames), cut to 10
    assert out.shape == (3, 10, 8, 12) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="multiples of 2"):
        tasks.extend(model, clip_of(5, 7, 8), 4, steps=2)
    with pytest.raises(ValueError, match="pure frame selection"):
        tasks.upscale(model, clip_of(5, 4, 4), 2, steps=2, method="replacement")


@pytest.mark.parametrize("job", ["interpolate", "upscale"])
def test_latent_observations_hold_with_both_posterior_and_consistency(job):
    """Through the VAE, the known pixels hold within 2/255 RMS with methods both (its data consistency through
    the decoder), posterior and consistency, where reconstruction guidance alone at the auto weight misses them
    (measured at 16 steps, RMS /255: interpolation reconstruction 11.8, both 0.00, posterior 0.02, consistency
    0.00; upscaling's block means 18.1, 0.00, 0.52, 0.00)."""
    model = latent_model()
    sampled = sampled_clips(model)
    truth = ToyVAE().decode(ToyVAE().encode(clip_of(17, 16, 16, seed=3)[None]))[0]  # a clip the VAE can make
    if job == "interpolate":
        clip = truth[:, ::4]
        run = lambda m: tasks.interpolate(model, clip, 4, steps=16, method=m, seed=4)  # noqa: E731
        err = lambda out: (out - truth).pow(2).mean().sqrt()  # noqa: E731 (the prior knows the rest from the keys)
    else:
        clip = guidance.area_downsample(truth[None], 2)[0]
        run = lambda m: tasks.upscale(model, clip, 2, steps=16, method=m, seed=4)  # noqa: E731
        err = lambda out: (guidance.area_downsample(out[None], 2)[0] - clip).pow(2).mean().sqrt()  # noqa: E731
    methods = ("reconstruction", "both", "posterior", "consistency")
    for m in methods:
        run(m)
    errs = {m: 255 * err(x).item() for m, x in zip(methods, sampled)}  # as sampled, before the job's own hold
    assert max(errs[m] for m in methods[1:]) < 2 and errs["reconstruction"] > 4, errs


@pytest.mark.parametrize("method", ["both", "posterior", "consistency"])
def test_latent_upscale_output_keeps_the_block_means_a_vae_cannot_make(method):
    """The decoder of ToyVAE mixes 2 latent channels into RGB, so a clip with independent colour channels is out
    of its reach, whatever the sampler does; the output of an upscale (also composed with interpolation) still
    has the input's block means within 2/255 RMS, and is no farther from the truth than the sample decoded."""
    model = latent_model()
    sampled = sampled_clips(model)
    truth = clip_of(17, 16, 16, seed=6)
    clip = guidance.area_downsample(truth[None], 2)[0]
    out = tasks.upscale(model, clip, 2, steps=8, method=method, seed=7)
    means = guidance.area_downsample(out[None], 2)[0]
    before = guidance.area_downsample(sampled[0][None], 2)[0]
    assert 255 * (before - clip).pow(2).mean().sqrt() > 20  # the decoder alone cannot make them
    assert 255 * (means - clip).pow(2).mean().sqrt() < 2
    assert (out - truth).norm() <= (sampled[0].clamp(-1, 1) - truth).norm()
    keys = clip[:, ::4]  # the same with interpolation ×4 composed: 5 frames known at half resolution
    both = tasks.run(model, Job(keys, multiplier=4, factor=2), SamplerSettings(steps=8, method=method, seed=7))
    assert both.shape == (3, 17, 16, 16)
    assert 255 * (guidance.area_downsample(both[None, :, ::4], 2)[0] - keys).pow(2).mean().sqrt() < 2


def test_latent_upscale_corrects_a_smooth_decoder_error_smoothly():
    """A decoder's error that varies smoothly across the frame (ramps, a slow wave) is taken out by a smooth
    correction: the held clip has the input's block means and is 3× nearer the truth than after the orthogonal
    projection, which shifts each block by a constant and leaves a block pattern of the error's slope."""
    truth = sprite_batch("test", range(1), size=16, frames=3)[0] * 0.9
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    error = 0.12 * torch.stack([xx, yy, torch.sin(math.pi * (xx + yy) / 2)])[:, None]  # ~20/255 RMS
    decoded = (truth + error).clamp(-1, 1)
    low = guidance.area_downsample(truth[None], 2)[0]
    held = latent_jobs.held_block_means(decoded, low, 2)
    orthogonal = decoded[None]
    for _ in range(4):
        orthogonal = guidance.match_block_means(orthogonal, low[None], 2).clamp(-1, 1)
    rms = lambda a: 255 * a.pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(guidance.area_downsample(held[None], 2)[0] - low) < 0.5
    assert rms(held - truth) < rms(orthogonal[0] - truth) / 3, (rms(held - truth), rms(orthogonal[0] - truth))


def test_latent_upscale_with_interpolation_carries_the_held_keys_residual_between_them():
    """Upscaling composed with interpolation: the keyframes, known at half resolution, are held to their block
    means and the correction is carried to the frames between, so a decoder with a constant colour error gives
    the same clip as an exact one (before, the frames between kept the error)."""
    keys = guidance.area_downsample(clip_of(3, 16, 16, seed=8)[None] * 0.7, 2)[0]
    outs = []
    for bias in (0.0, 0.1):
        model = latent_model()
        final = model.space.decode_final
        model.space = dataclasses.replace(model.space, decode_final=lambda x, b=bias: final(x) + b)
        outs.append(tasks.run(model, Job(keys, multiplier=4, factor=2), SamplerSettings(steps=6, seed=9)))
    assert outs[0].shape == (3, 9, 16, 16)
    assert (outs[1] - outs[0]).abs().max() < 1e-4


def test_latent_extension_goes_window_by_window_from_encoded_frames():
    """A causal VAE's latent 0 is a clip's first frame alone: every window of a long extension is a clip of its
    own whose context is the last 1 + 4k frames made so far, encoded (never a latent of 4 frames placed first)."""
    model = latent_model(frames=4)  # windows of 4 latents = 13 frames, context 2 latents = 5 frames
    encoded, encode = [], model.space.encode
    model.space = dataclasses.replace(model.space, encode=lambda x: encoded.append(x[0].clone()) or encode(x))
    clip = clip_of(9)
    steps, seen = [], []
    out = tasks.extend(model, clip, 24, steps=3, seed=1, callback=lambda i, n, _x: steps.append((i, n)))
    assert out.shape == (3, 33, 8, 8) and torch.equal(out[:, :9], clip)
    assert [e.shape[1] for e in encoded] == [5, 5, 5]  # 3 windows of 8 new frames after 5 of context
    for w, e in enumerate(encoded):
        assert torch.equal(e, out[:, 4 + 8 * w:9 + 8 * w])  # the last 5 frames made before window w
    assert steps[-1] == (9, 9) and all(n == 9 for _, n in steps)
    assert [i for i, _ in steps] == sorted(i for i, _ in steps)
    new = out[:, 9:].unflatten(1, (3, 8))
    assert not torch.allclose(new[:, 1] - new[:, 1].mean(), new[:, 2] - new[:, 2].mean())  # own noise per window


def test_progress_of_a_latent_window_chain_reaches_its_end():
    """Each window of a latent extension samples on its method's grid, and posterior's, filled at low noise on a host,
    may take fewer steps than asked: every window's progress is scaled to its share, so the reports never go back, keep
    one total and the last reaches it (before, each window stopped short of its share and the bar of the job ended
    short of its total)."""
    model = latent_model(frames=4, shift=8.0)  # Wan's shift: 33 steps asked, its filled grid takes 32
    grid = len(capabilities(model).angles(33, "posterior")) - 1
    assert grid == 32
    reports = []
    out = tasks.extend(model, clip_of(9), 24, steps=33, seed=1, iterations=1,
                       callback=lambda d, t, _x: reports.append((d, t)))
    assert out.shape == (3, 33, 8, 8)
    assert len(reports) == 3 * grid and {t for _, t in reports} == {3 * 33}
    assert [d for d, _ in reports] == sorted(d for d, _ in reports) and reports[-1][0] == 3 * 33
    assert [d for d, _ in reports][grid - 1::grid] == [33, 66, 99]  # each window ends at its share


def test_latent_generation_longer_than_a_window_extends_its_first_window():
    model = latent_model(frames=3)  # 3 latents = 9 frames
    encoded, encode = [], model.space.encode
    model.space = dataclasses.replace(model.space, encode=lambda x: encoded.append(x.shape[2]) or encode(x))
    steps = []
    out = tasks.generate(model, 20, 8, 8, steps=2, seed=3, callback=lambda i, n, _x: steps.append((i, n)))
    assert out.shape == (3, 20, 8, 8) and out.abs().max() <= 1
    # the first window makes 9 frames from nothing; then 8 new after 1 frame of context (half the window: 1
    # latent), and the last 3 after as much context as the window holds in whole latents (5 frames)
    assert encoded == [1, 5]
    assert steps[-1] == (6, 6) and all(n == 6 for _, n in steps)


def test_latent_interpolation_carries_the_keyframes_residual_between_them():
    """A decoder with a constant colour error (decode_final + 0.1: its error on every frame the same) gives the
    same interpolation as an exact one: the keyframes' residual is carried to the frames between, so they are
    not a different layer from the pasted keys."""
    clip = clip_of(5, 8, 8, seed=8) * 0.8
    outs = []
    for bias in (0.0, 0.1):
        model = latent_model()
        final = model.space.decode_final
        model.space = dataclasses.replace(model.space, decode_final=lambda x, b=bias: final(x) + b)
        outs.append(tasks.interpolate(model, clip, 4, steps=6, seed=9))
    assert torch.equal(outs[1][:, ::4], clip)
    assert (outs[1] - outs[0]).abs().max() < 1e-5
    # and the residual is linear in time between two keys: with a ramp of errors the frames between follow it
    sample = torch.zeros(3, 9, 2, 2)
    keys = torch.stack([torch.full((3, 2, 2), v) for v in (0.0, 0.4, 0.8)], 1)
    out = latent_jobs.with_keyframes(sample, keys, 4)
    assert torch.allclose(out.mean((0, 2, 3)), torch.arange(9) * 0.1, atol=1e-6)


def test_latent_extension_carries_the_last_known_frames_residual_into_the_new_frames():
    """A decoder with a constant colour error (decode_final + 0.1) changes an extension only by that error fading
    in over the new frames: the first new frame meets the known frames without the decoder's jump, and the
    residual goes linearly to 0 one frame past the window (latent_jobs.with_context)."""
    clip = clip_of(9, 8, 8, seed=8) * 0.8
    outs = []
    for bias in (0.0, 0.1):
        model = latent_model()  # one window: 9 known frames (3 latents) and 8 new
        final = model.space.decode_final
        model.space = dataclasses.replace(model.space, decode_final=lambda x, b=bias: final(x) + b)
        outs.append(tasks.extend(model, clip, 8, steps=6, seed=9))
    assert torch.equal(outs[1][:, :9], clip)
    diff = (outs[1] - outs[0])[:, 9:].transpose(0, 1).flatten(1)  # per new frame (the median: clamped pixels aside)
    assert torch.allclose(diff.median(1).values, 0.1 * torch.arange(1, 9) / 9, atol=1e-5)
    out = latent_jobs.with_context(torch.zeros(3, 6, 2, 2), torch.full((3, 2, 2, 2), 0.6))
    assert torch.allclose(out.mean((0, 2, 3)), torch.tensor([0.6, 0.6, 0.48, 0.36, 0.24, 0.12]), atol=1e-6)
