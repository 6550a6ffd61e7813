import numpy as np
import pytest
import torch

from vdm_core.data import sprite_batch, sprite_centres, sprite_scene, split_seed
from vdm_core.metrics import object_errors, psnr, sprite_errors, ssim, window_drift


def test_psnr_and_ssim_of_identical_and_noisy_clips():
    x = sprite_batch("test", [0, 1], size=16, frames=4)
    assert torch.all(psnr(x, x) > 90)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert torch.all(psnr(noisy, x) < 25) and torch.all(ssim(noisy, x) < 0.9)
    # PSNR on [0, 1]: an error of 0.1 in [-1, 1] units is 0.05 on [0, 1] → 26.02 dB
    assert torch.allclose(psnr(x + 0.1, x), torch.full((2,), 26.0206), atol=1e-3)


def test_true_clip_is_sharp_and_well_placed_cross_fade_ghosts():
    seed_index = 6  # one square moving ~0.5 px/frame
    seed = split_seed("test", seed_index)
    x = sprite_batch("test", [seed_index], size=16, frames=9)[0]
    err, ghost = sprite_errors(x, seed, [2, 4, 6])
    assert err < 0.6 and ghost < 0.1
    fade = x.clone()
    fade[:, 4] = 0.5 * (x[:, 0] + x[:, 8])  # two half-bright sprites, none where it should be
    err_f, ghost_f = sprite_errors(fade, seed, [4])
    assert ghost_f > 0.15 and err_f > err + 1.0


def test_vanished_sprite_counts_as_lost():
    seed = split_seed("test", 5)
    x = sprite_batch("test", [5], size=16, frames=4)[0]
    blank = x[:, :1].mean(dim=(2, 3), keepdim=True).expand_as(x).clone()  # flat image, no sprite
    err, ghost = sprite_errors(blank, seed, [1, 2])
    assert ghost > 0.5 and err > 2


def _disc_on_checkerboard(centres, radius=0.2, size=16):
    """``[3, F, size, size]`` clip in [-1, 1] of a red disc at ``centres`` (``[F, 2]``) over a blue/grey
    checkerboard, and that background ``[3, F, size, size]`` in [0, 1]."""
    g = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    ys, xs = torch.meshgrid(g, g, indexing="ij")
    check = ((xs * 4).floor() + (ys * 4).floor()) % 2  # 4×4 checkerboard
    blue, grey, red = (torch.tensor(c, dtype=torch.float64)[:, None, None] for c in
                       ((0.1, 0.2, 0.8), (0.6, 0.6, 0.6), (0.9, 0.1, 0.1)))
    bg = blue * (1 - check) + grey * check
    frames = [torch.where(((xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2)[None], red, bg) for cx, cy in centres]
    background = bg[:, None].expand(3, len(centres), size, size)
    return (torch.stack(frames, 1) * 2 - 1).float(), background.numpy()


def test_object_errors_on_a_textured_background():
    centres = np.array([[0.3 + 0.05 * t, 0.5] for t in range(4)])[None]  # [1, F, 2]
    clip, background = _disc_on_checkerboard(centres[0])
    red, r = [(0.9, 0.1, 0.1)], [0.2]
    err, ghost = object_errors(clip, centres, red, r, background, [0, 1, 2, 3])
    assert err < 0.3 and ghost < 0.02  # the checkerboard itself carries no mass
    shifted, _ = _disc_on_checkerboard(centres[0] + [3 / 16, 0])  # 3 px to the right
    err_s, _ = object_errors(shifted, centres, red, r, background, [0, 1, 2, 3])
    assert abs(err_s - 3) < 0.5
    hidden = np.zeros((1, 4))  # fully occluded everywhere: nothing to score
    assert all(np.isnan(object_errors(shifted, centres, red, r, background, [0, 1], visible=hidden)))
    visible = np.array([[1.0, 0.2, 1.0, 1.0]])  # frame 1 less than half visible: not scored
    mixed = clip.clone()
    mixed[:, 1] = torch.from_numpy(background[:, 1] * 2 - 1)  # the object is gone from frame 1 only
    assert object_errors(mixed, centres, red, r, background, [0, 1, 2], visible=visible)[0] < 0.3
    assert object_errors(mixed, centres, red, r, background, [0, 1, 2])[0] > 2  # ... which would count as lost


def test_sprite_errors_is_object_errors_with_the_v1_ground_truth():
    seed = split_seed("test", 3)
    x = sprite_batch("test", [3], size=16, frames=6)[0]
    background, sprites = sprite_scene(seed)
    assert sprite_errors(x, seed, [1, 4]) == object_errors(
        x, sprite_centres(seed, 6), [sp.colour for sp in sprites], [sp.radius for sp in sprites], background, [1, 4])


def test_window_drift_reads_colour_and_contrast_per_window():
    """A clip whose known frames are grey noise, then windows that brighten red by 10/255 each and double the
    noise: the colour drift and contrast of each window are read back, and a partial window is left out."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 3, 4 + 3 * 2 + 1, 8, 8, generator=g) * 0.1
    clip = noise.clone()
    for w in range(3):
        frames = slice(4 + 2 * w, 6 + 2 * w)
        clip[:, 0, frames] += (w + 1) * 10 / 127.5
    colour, contrast = window_drift(clip, known=4, per_window=2)
    assert colour.shape == (1, 3, 3) and contrast.shape == (1, 3)
    ref = noise[:, :, :4].mean((2, 3, 4))
    for w in range(3):
        new = noise[:, :, 4 + 2 * w:6 + 2 * w].mean((2, 3, 4))
        want = (new - ref) * 127.5
        want[:, 0] += (w + 1) * 10
        assert torch.allclose(colour[:, w], want, atol=1e-4)
    loud = torch.cat([noise[:, :, :4], 2 * noise[:, :, 4:]], 2)
    _, c2 = window_drift(loud, known=4, per_window=2)
    want = torch.stack([(2 * noise[:, :, 4 + 2 * w:6 + 2 * w]).std() / noise[:, :, :4].std() for w in range(3)])
    assert torch.allclose(c2[0], want, rtol=1e-5) and bool((c2 > 1.6).all())
    with pytest.raises(ValueError, match="per_window"):
        window_drift(clip[:, :, :5], known=4, per_window=2)
