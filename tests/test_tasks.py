"""vdm_core.tasks: windows, tiles, jobs and their observations, with analytic models (and a tiny U-Net)."""
import math
from types import SimpleNamespace

import pytest
import torch

from vdm_core import sampling, tasks, tiling
from vdm_core.contract import capabilities
from vdm_core.guidance import area_downsample
from vdm_core.planning import generate_plan, plan, spans
from vdm_core.schedule import sampling_angles
from vdm_core.settings import SamplerSettings
from vdm_core.tasks import Job
from vdm_core.unet3d import UNet3D, UNet3DConfig

from oracle import CorrelatedGaussian


class Gaussian:
    """Exact denoiser of pixels x ~ N(0, c²) i.i.d.: ``x̂ = g·z`` with ``g = α c² / (α² c² + σ²)``."""

    def __init__(self, c=0.25, frames=4, resolution=8):
        self.c, self.calls = c, 0
        self.config = SimpleNamespace(frames=frames, resolution=resolution, channels=3)

    def __call__(self, z, phi):
        self.calls += 1
        a = torch.cos(phi).view(-1, 1, 1, 1, 1).to(z)
        s = torch.sin(phi).view(-1, 1, 1, 1, 1).to(z)
        x = a * self.c ** 2 * z / (a * a * self.c ** 2 + s * s)
        return (a * z - x) / s


def exact_weight(c, s, steps):
    """w_r that makes the last step's guidance land on the observed block means exactly for
    :class:`Gaussian`: the correction of block means there is ``w·α·g/s²`` of the residual."""
    phi = sampling_angles(steps)[-2].item()
    a, sg = math.cos(phi), math.sin(phi)
    g = a * c * c / (a * a * c * c + sg * sg)
    return s * s / (a * g)


def rand_clip(c=3, f=5, h=15, w=13, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(c, f, h, w, generator=g) * 2 - 1) * scale


# ---------------------------------------------------------------------------------------------- plans


@pytest.mark.parametrize("f, new, window, context", [
    (5, 6, 4, 2), (5, 1, 4, 2), (1, 9, 4, 2), (2, 20, 16, 8), (8, 3, 16, 8), (3, 7, 5, 4), (16, 40, 16, 1),
])
def test_extend_windows_write_every_new_frame_once(f, new, window, context):
    p = plan(capabilities(Gaussian(frames=window)), Job(rand_clip(f=f, h=4, w=4), new_frames=new, context=context))
    written = [i for w in p.windows for i in w.new]
    assert sorted(written) == list(range(f, f + new))  # each new frame exactly once, no input frame
    made = f
    for w in p.windows:
        assert w.stop - w.start <= window and w.stop <= f + new
        assert w.exact == tuple(range(w.start, made))  # known: everything before the new frames
        assert w.new == tuple(range(made, w.stop)) and not w.low
        assert len(w.exact) >= min(context, made)
        made = w.stop
    # a full window is used whenever enough frames exist
    assert all(w.stop - w.start == window for w in p.windows if w.stop >= window)


@pytest.mark.parametrize("f, k, window, overlap", [
    (5, 2, 4, None), (9, 2, 16, None), (9, 4, 16, None), (20, 2, 16, None), (20, 3, 16, 1), (20, 2, 16, 0),
    (7, 8, 16, None), (30, 2, 9, 5), (2, 15, 16, None),
])
def test_interpolate_windows_start_and_end_on_keyframes_and_write_each_frame_once(f, k, window, overlap):
    job = Job(rand_clip(f=f, h=4, w=4), multiplier=k, overlap=overlap)
    p = plan(capabilities(Gaussian(frames=window)), job)
    total = (f - 1) * k + 1
    keys = set(range(0, total, k))
    written = [i for w in p.windows for i in w.new]
    assert sorted(written) == sorted(set(range(total)) - keys)
    assert p.windows[0].start == 0 and p.windows[-1].stop == total
    made = set(keys)
    for prev, w in zip((None,) + p.windows, p.windows):
        assert w.start % k == 0 and (w.stop - 1) % k == 0 and w.stop - w.start <= window
        assert set(w.exact) == made & set(range(w.start, w.stop))
        assert set(w.new) == set(range(w.start, w.stop)) - made
        if prev is not None and overlap:
            assert prev.stop - w.start >= overlap  # shares at least `overlap` frames
        made |= set(w.new)


def test_upscale_windows_know_every_frame_at_low_resolution_and_overlap():
    p = plan(capabilities(Gaussian(frames=4)), Job(rand_clip(f=11, h=3, w=3), factor=2, overlap=2))
    assert sorted(i for w in p.windows for i in w.new) == list(range(11))
    for prev, w in zip(p.windows, p.windows[1:]):
        assert prev.stop - w.start >= 2
        assert w.exact == tuple(range(w.start, prev.stop))  # the overlap is known exactly
    assert all(w.low == w.new for w in p.windows)


def test_composition_knows_keyframes_at_low_resolution():
    p = plan(capabilities(Gaussian(frames=16)), Job(rand_clip(f=4, h=3, w=3), multiplier=3, factor=2))
    assert p.shape == (3, 10, 6, 6)
    assert [w.low for w in p.windows] == [(0, 3, 6, 9)] and p.windows[0].new == tuple(range(10))


@pytest.mark.parametrize("length, tile, overlap", [(13, 8, 2), (30, 16, 4), (8, 8, 2), (5, 8, 2), (33, 8, 3)])
def test_spans_cover_with_overlap_and_blend_with_raised_cosine_ramps(length, tile, overlap):
    """Each span weighs 1 where it is alone and crosses over to its neighbour along a raised cosine
    (cos² ↓, sin² ↑ of π/2·(i + ½)/overlap), so neighbouring tiles hand over smoothly and the weights sum to
    one without normalisation changing the ramp."""
    sp = spans(length, tile, overlap)
    assert sp[0][0] == 0 and sp[-1][1] == length
    assert all(b - a == min(tile, length) for a, b in sp)
    assert all(p[1] - q[0] >= overlap for p, q in zip(sp, sp[1:]))
    weights = tiling.blend_weights(sp)
    covered = torch.zeros(length)
    for (a, b), w in zip(sp, weights):
        covered[a:b] += 1
    total = torch.zeros(length)
    for i, ((a, b), w) in enumerate(zip(sp, weights)):
        full = torch.zeros(length)
        full[a:b] = w
        total += full
        alone = (covered == 1)[a:b]
        assert torch.equal(w[alone], torch.ones(int(alone.sum())))
        for other, sign in ((i + 1, -1), (i - 1, 1)):  # the ramp into the next span falls, from the previous rises
            if 0 <= other < len(sp) and max(a, sp[other][0]) < min(b, sp[other][1]):
                lo, hi = max(a, sp[other][0]), min(b, sp[other][1])
                t = (torch.arange(hi - lo, dtype=torch.float64) + 0.5) / (hi - lo)
                want = (torch.cos(0.5 * math.pi * t) ** 2 if sign < 0 else torch.sin(0.5 * math.pi * t) ** 2).float()
                pair = covered[lo:hi] == 2  # where a third span overlaps too, the three are normalised together
                assert pair.any()
                torch.testing.assert_close(full[lo:hi][pair], want[pair])
    torch.testing.assert_close(total, torch.ones(length))


def test_tiled_model_equals_whole_frame_for_a_pixelwise_model_with_gradients():
    """Blend weights sum to one, so a pixelwise model gives the whole-frame result exactly; a tile
    placed or weighted wrongly would not (each tile's input is its own slice of z)."""
    def model(z, phi):
        return torch.tanh(z) * phi.view(-1, 1, 1, 1, 1) + z ** 2

    tiled = tiling.TiledModel(model, spans(17, 8, 2), spans(14, 8, 3))
    z = torch.randn(2, 3, 4, 17, 14, requires_grad=True)
    phi = torch.tensor([0.3, 1.2])
    v = tiled(z, phi)
    torch.testing.assert_close(v, model(z, phi))
    (g_tiled,) = torch.autograd.grad((v ** 3).sum(), z)  # checkpointed tiles are recomputed here
    (g_whole,) = torch.autograd.grad((model(z, phi) ** 3).sum(), z)
    torch.testing.assert_close(g_tiled, g_whole)


# ---------------------------------------------------------------------------------------------- jobs


def test_extend_odd_size_keeps_input_frames_and_adds_new_ones():
    clip = rand_clip(f=5, h=15, w=13)
    before = clip.clone()
    for method in ("reconstruction", "replacement", "both"):
        out = tasks.extend(Gaussian(), clip, 6, steps=3, method=method)
        assert out.shape == (3, 11, 15, 13) and out.dtype == torch.float32 and out.device.type == "cpu"
        assert torch.equal(out[:, :5], clip)  # copied exactly
        assert out[:, 5:].abs().amax(dim=(0, 2, 3)).min() > 0 and out.abs().max() <= 1
    assert torch.equal(clip, before)


def test_interpolate_odd_size_copies_keyframes():
    clip = rand_clip(f=5, h=15, w=13)
    out = tasks.interpolate(Gaussian(), clip, 3, steps=3)
    assert out.shape == (3, 13, 15, 13)
    assert torch.equal(out[:, ::3], clip)
    assert out[:, 1::3].abs().max() > 0


@pytest.mark.parametrize("s", [2, 3])
def test_upscale_output_matches_low_res_input(s):
    """Several windows and 2×2 spatial tiles; with the weight that makes the Gaussian model's final
    step an exact projection, the block means of the output equal the input."""
    c, steps = 0.25, 6
    clip = rand_clip(f=5, h=7, w=5, scale=c)
    w = exact_weight(c, s, steps)
    out = tasks.upscale(Gaussian(c), clip, s, steps=steps, guidance_weight=w, method="reconstruction")
    assert out.shape == (3, 5, 7 * s, 5 * s) and out.abs().max() < 1  # no clipping interfered
    torch.testing.assert_close(area_downsample(out[None], s)[0], clip, atol=1e-4, rtol=0)
    unguided = tasks.upscale(Gaussian(c), clip, s, steps=steps, guidance_weight=0, method="reconstruction")
    assert (area_downsample(unguided[None], s)[0] - clip).abs().max() > 0.1  # the guidance did it


def test_upscale_both_sets_block_means_and_only_gets_closer_to_the_truth():
    """Method 'both' ends with ``match_block_means``: the output's block means are the input's at any
    weight, and the output is never farther from the true clip than the guided sample alone."""
    c, s, steps = 0.25, 2, 6
    truth = rand_clip(f=6, h=8, w=6, scale=c, seed=4)
    clip = area_downsample(truth[None], s)[0]
    for w in (0.0, 4.0):
        guided = tasks.upscale(Gaussian(c), clip, s, steps=steps, guidance_weight=w, method="reconstruction", window=4)
        both = tasks.upscale(Gaussian(c), clip, s, steps=steps, guidance_weight=w, method="both", window=4)
        torch.testing.assert_close(area_downsample(both[None], s)[0], clip, atol=1e-5, rtol=0)
        assert (both - truth).norm() < (guided - truth).norm()


def test_interpolate_and_upscale_in_one_job():
    c, steps = 0.25, 6
    clip = rand_clip(f=3, h=5, w=3, scale=c)
    job = Job(clip, multiplier=2, factor=2, window=3)
    assert job.output_shape() == (3, 5, 10, 6)
    out = tasks.run(Gaussian(c), job, SamplerSettings(steps=steps, guidance_weight=exact_weight(c, 2, steps)))
    assert out.shape == (3, 5, 10, 6)
    torch.testing.assert_close(area_downsample(out[None, :, ::2], 2)[0], clip, atol=1e-4, rtol=0)


def test_each_window_observes_input_and_earlier_windows(monkeypatch):
    """Record every window's observation: it must hold the final output's values of its known frames
    (input keyframes and frames earlier windows made) at the right positions."""
    seen = []
    real = sampling.sample

    def recording(model, noise, angles, settings, **kw):
        seen.append(kw["observation"])
        return real(model, noise, angles, settings, **kw)

    monkeypatch.setattr(sampling, "sample", recording)
    clip = rand_clip(f=9, h=5, w=4)
    job = Job(clip, multiplier=2, window=7, overlap=3)
    p = plan(capabilities(Gaussian()), job)
    out = tasks.run(Gaussian(), job, SamplerSettings(steps=2, method="replacement"))
    assert len(seen) == len(p.windows) > 2
    for w, obs in zip(p.windows, seen):
        assert obs.num_frames == w.stop - w.start
        assert obs.frame_indices == tuple(i - w.start for i in w.exact)
        assert torch.equal(obs.y[0], out[:, list(w.exact)])


def test_upscale_windows_replace_the_overlap_they_know_and_stay_on_the_input(monkeypatch):
    """A later upscale window knows its overlap with the previous one exactly and the rest at low
    resolution (``guidance.combine``): method 'both' replaces the overlap frames, so at the default
    weight (4·s², strong for frames known exactly) later windows fit the input as well as the first."""
    seen = []
    real = sampling.sample

    def recording(model, noise, angles, settings, **kw):
        x = real(model, noise, angles, settings, **kw)
        seen.append((kw["observation"], x))
        return x

    monkeypatch.setattr(sampling, "sample", recording)
    c, s = 0.25, 2
    clip = rand_clip(f=10, h=4, w=4, scale=c)
    job = Job(clip, factor=s, window=4, overlap=2)
    p = plan(capabilities(Gaussian(c)), job)
    out = tasks.run(Gaussian(c), job, SamplerSettings(steps=8, seed=3))
    assert len(seen) == len(p.windows) >= 3
    for w, (obs, x) in zip(p.windows[1:], seen[1:]):
        assert w.exact and w.low and obs.selection.frame_indices == tuple(i - w.start for i in w.exact)
        torch.testing.assert_close(x[0][:, [i - w.start for i in w.exact]], out[:, list(w.exact)])
    err = (area_downsample(out[None], s)[0] - clip).pow(2).mean(dim=(0, 2, 3)).sqrt()
    first = err[list(p.windows[0].new)].max()
    assert err[list(p.windows[-1].new)].max() < 1.5 * first + 1e-3


def test_seeds_are_deterministic_and_differ_between_seeds():
    clip = rand_clip(f=3, h=6, w=5)
    for eta in (0.0, 0.7):
        a = tasks.extend(Gaussian(), clip, 5, steps=3, eta=eta, seed=7)
        b = tasks.extend(Gaussian(), clip, 5, steps=3, eta=eta, seed=7)
        c = tasks.extend(Gaussian(), clip, 5, steps=3, eta=eta, seed=8)
        assert torch.equal(a, b) and not torch.equal(a[:, 3:], c[:, 3:])


def test_auto_weight_is_the_jobs_own():
    """Auto w_r resolves per job: 8 for an extension and a long new clip's later windows, 16 for interpolation
    (settings.auto_guidance_weight); a weight given explicitly is used as it is. (Frames correlated in time,
    so that guidance moves the new frames.)"""
    clip = rand_clip(f=3, h=6, w=5)
    model = CorrelatedGaussian(4, 0.9, 0.25)
    kw = dict(window=4, steps=3, seed=1, method="both")  # the method that has a weight
    ext = {w: tasks.extend(model, clip, 3, guidance_weight=w, **kw) for w in (None, 8.0, 16.0)}
    assert torch.equal(ext[None], ext[8.0]) and not torch.equal(ext[None], ext[16.0])
    gen = {w: tasks.generate(model, 7, 6, 5, guidance_weight=w, **kw) for w in (None, 8.0, 16.0)}
    assert torch.equal(gen[None], gen[8.0]) and not torch.equal(gen[None], gen[16.0])
    mid = {w: tasks.interpolate(model, clip[:, :2], 3, guidance_weight=w, **kw) for w in (None, 8.0, 16.0)}
    assert torch.equal(mid[None], mid[16.0]) and not torch.equal(mid[None], mid[8.0])


def test_progress_counts_steps_moves_with_every_tile_and_an_exception_stops_the_job():
    """Progress is in steps of the whole job (windows × steps), reported after every tile of a tiled step (a
    fraction of the step) and with a preview at the end of each step; raising in it stops the job."""
    clip = rand_clip(f=3, h=6, w=5)
    job = Job(clip, factor=2, window=2)  # 2 windows, 2×2 tiles of 8 on 12×10 frames
    steps, model = 3, Gaussian()
    total = len(plan(capabilities(model), job).windows) * steps
    assert total == 2 * steps
    reports = []
    tasks.run(model, job, SamplerSettings(steps=steps),
              callback=lambda d, t, x: reports.append((d, t, None if x is None else tuple(x.shape))))
    assert [d for d, _, _ in reports] == [i + j / 4 for i in range(total) for j in (1, 2, 3, 4)]
    assert {t for _, t, _ in reports} == {total}
    assert [x for d, _, x in reports if d == int(d)] == [(3, 2, 12, 10)] * total  # a preview ends each step
    assert {x for d, _, x in reports if d != int(d)} == {None}

    class Stop(Exception):
        pass

    def stop(done, total, x):
        raise Stop

    model = Gaussian()
    with pytest.raises(Stop):
        tasks.run(model, job, SamplerSettings(steps=steps), callback=stop)
    assert model.calls == 1  # stopped after the first tile's forward


def test_progress_of_a_host_model_counts_the_steps_of_its_grid():
    """A host's grid may have fewer steps than asked (posterior's filled grid, repeated levels taken once): the
    progress total is what the windows really take, and the last report reaches it."""
    from vdm_core.external import SigmaModel

    def wan_sigmas(n):  # Wan's shift 8 on a flow schedule, ComfyUI's "simple" grid
        return [8 * t / (1 + 7 * t) for t in torch.linspace(1, 0, n + 1).tolist()]

    model = SigmaModel(lambda s: (1 - s, s), 1e-3, 1.0, wan_sigmas, channels=3,
                       denoise=lambda x, s: 0.5 * x / (1 + s.view(-1, 1, 1, 1, 1)), frames=4)
    clip = rand_clip(f=2, h=4, w=4)
    angles = capabilities(model).angles(33, "posterior")
    assert len(angles) - 1 == 32  # 33 asked: the host's 17-step grid filled takes 32, its 18-step one 34
    reports = []
    out = tasks.extend(model, clip, 4, steps=33, method="posterior", iterations=1,
                       callback=lambda d, t, x: reports.append((d, t)))
    windows = len(plan(capabilities(model), Job(clip, new_frames=4)).windows)
    assert out.shape == (3, 6, 4, 4) and windows == 2
    assert {t for _, t in reports} == {windows * (len(angles) - 1)} and reports[-1][0] == reports[-1][1]


def test_generate_unconditional_then_extended():
    model = Gaussian(frames=4)
    p = generate_plan(capabilities(model), 9, 10, 9)
    assert p.windows[0].exact == () and sorted(i for w in p.windows for i in w.new) == list(range(9))
    out = tasks.generate(model, 9, 10, 9, steps=2, seed=3)
    assert out.shape == (3, 9, 10, 9) and torch.equal(out, tasks.generate(Gaussian(frames=4), 9, 10, 9, steps=2, seed=3))


def test_tiny_unet_runs_composition_and_tiled_guidance():
    torch.manual_seed(0)
    model = UNet3D(UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2, resolution=8, frames=4))
    model.eval().requires_grad_(False)
    clip = rand_clip(f=2, h=4, w=3)
    out = tasks.run(model, Job(clip, multiplier=2, factor=2), SamplerSettings(steps=2, seed=1))
    assert out.shape == (3, 3, 8, 6) and torch.isfinite(out).all() and out.abs().max() <= 1
    out = tasks.extend(model, rand_clip(f=2, h=11, w=6), 1, steps=1, window=3)  # 2 tiles, checkpointed
    assert out.shape == (3, 3, 11, 6) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("make, match", [
    (lambda: Job(torch.zeros(3, 0, 4, 4), new_frames=2), "empty"),
    (lambda: Job(torch.zeros(1, 3, 2, 4, 4), new_frames=2), r"\[C, F, H, W\]"),
    (lambda: Job(torch.full((3, 2, 4, 4), 2.0), new_frames=2), r"\[-1, 1\]"),
    (lambda: Job(torch.zeros(3, 2, 4, 4)), "asks for nothing"),
    (lambda: Job(torch.zeros(3, 2, 4, 4), new_frames=2, factor=2), "extend cannot be combined with upscaling"),
    (lambda: Job(torch.zeros(3, 2, 4, 4), new_frames=2, multiplier=2), "one after the other"),
    (lambda: Job(torch.zeros(3, 1, 4, 4), multiplier=2), "at least 2 frames"),
    (lambda: tasks.extend(Gaussian(), torch.zeros(3, 2, 4, 4), 0), "new_frames must be at least 1"),
    (lambda: tasks.extend(Gaussian(), torch.zeros(3, 2, 4, 4), 2, context=4), "context"),
    (lambda: tasks.extend(Gaussian(), torch.zeros(3, 2, 4, 4), 2, context=0), "context must be at least 1"),
    (lambda: tasks.interpolate(Gaussian(), torch.zeros(3, 2, 4, 4), 1), "multiplier must be at least 2"),
    (lambda: tasks.interpolate(Gaussian(), torch.zeros(3, 2, 4, 4), 4), "cannot span two keyframes"),
    (lambda: tasks.interpolate(Gaussian(), torch.zeros(3, 5, 4, 4), 2, overlap=4), "overlap"),
    (lambda: tasks.upscale(Gaussian(), torch.zeros(3, 2, 4, 4), 1), "factor must be at least 2"),
    (lambda: tasks.upscale(Gaussian(), torch.zeros(3, 2, 4, 4), 2, method="replacement"), "reconstruction"),
    (lambda: tasks.extend(Gaussian(), torch.zeros(3, 2, 4, 4), 2, method="magic"), "method"),
    (lambda: tasks.extend(UNet3D(UNet3DConfig(base_width=8, width_mults=(1,), heads=2, channels=1)),
                          torch.zeros(3, 2, 4, 4), 2, window=2), "channels"),
])
def test_bad_inputs_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
