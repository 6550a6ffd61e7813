import torch

from vdm_core.data import sprite_batch, split_seed
from vdm_core.metrics import psnr, sprite_errors, ssim


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
