"""Training data: procedural moving sprites (determinism, resolution independence, bouncing motion, splits)
and the endless position-indexed sprite dataset. Folders of clips and stills: test_footage.py."""
import itertools
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vdm_core.data import (
    SPLIT_BASE, SPLIT_SIZE, SpriteClips, item_rng, item_seed, sprite_batch, sprite_centres, sprite_clip,
    sprite_scene, split_seed,
)
from vdm_core.distributed import BatchPositions


def test_sprite_clip_is_deterministic_shaped_and_in_range():
    a, b = sprite_clip(5, size=16, frames=6), sprite_clip(5, size=16, frames=6)
    assert a.shape == (3, 6, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert a.std() > 0.05  # not blank
    assert (a[:, 1:] - a[:, :-1]).abs().max() > 0.1  # things move


def test_different_seeds_differ():
    clips = [sprite_clip(s, size=8, frames=3) for s in range(6)]
    for a, b in itertools.combinations(clips, 2):
        assert (a - b).abs().mean() > 0.01


def test_clip_frames_are_a_prefix_of_longer_clips():
    assert torch.equal(sprite_clip(3, size=8, frames=10)[:, :4], sprite_clip(3, size=8, frames=4))


def test_same_clip_at_every_resolution():
    """Area-downsampling the 64 px render gives the smaller renders (4x supersampled edges differ a little)."""
    seeds = range(7)  # seed 6 brings a triangle
    kinds = {sp.kind for s in seeds for sp in sprite_scene(s)[1]}
    assert kinds == {"disc", "square", "triangle", "glyph"}
    for seed in seeds:
        big = sprite_clip(seed, size=64, frames=3)
        for size in (8, 16, 32):
            gap = (F.avg_pool2d(big, 64 // size) - sprite_clip(seed, size=size, frames=3)).abs()
            assert gap.mean() < 0.015 and gap.max() < 0.5, (seed, size)
            other = sprite_clip(seed + 100, size=size, frames=3)  # what a real mismatch looks like
            assert (F.avg_pool2d(big, 64 // size) - other).abs().mean() > 0.05


def _bounce_reference(start, velocity, lo, hi, frames):
    """Step-by-step simulation of elastic bounces between walls ``lo`` and ``hi`` (one axis)."""
    pos, vel, out = start, velocity, []
    for _ in range(frames):
        out.append(pos)
        pos += vel
        if pos > hi:
            pos, vel = 2 * hi - pos, -vel
        elif pos < lo:
            pos, vel = 2 * lo - pos, -vel
    return np.array(out)


def test_sprite_centres_bounce_elastically():
    frames, bounces = 120, 0
    for seed in range(8):
        centres = sprite_centres(seed, frames=frames)
        _, sprites = sprite_scene(seed)
        assert centres.shape == (len(sprites), frames, 2)
        for sp, c in zip(sprites, centres):
            lo, hi = sp.radius, 1 - sp.radius
            assert (c >= lo - 1e-12).all() and (c <= hi + 1e-12).all()
            for axis in range(2):
                ref = _bounce_reference(sp.start[axis], sp.velocity[axis], lo, hi, frames)
                assert np.allclose(c[:, axis], ref, atol=1e-9), (seed, axis)
                step = np.abs(np.diff(c[:, axis]))
                flips = np.sign(np.diff(c[:, axis]))[1:] != np.sign(np.diff(c[:, axis]))[:-1]
                bounces += int(flips.sum())
                # constant speed between bounces: every step that does not straddle a wall is exactly |v|
                straight = ~(np.r_[flips, False] | np.r_[False, flips])
                assert np.allclose(step[straight], abs(sp.velocity[axis]), atol=1e-9)
    assert bounces > 20


def test_sprites_move_with_the_rendered_pixels():
    """The rendered disc sits where sprite_centres says (centroid of the pixels that changed colour)."""
    seed = next(s for s in range(50) if [sp.kind for sp in sprite_scene(s)[1]] == ["disc"])
    size, frames = 64, 4
    clip = sprite_clip(seed, size=size, frames=frames)
    background, (disc,) = sprite_scene(seed)
    bg = torch.tensor(background, dtype=torch.float32)[:, None, None] * 2 - 1
    centres = sprite_centres(seed, frames=frames)[0]
    coords = (torch.arange(size) + 0.5) / size
    for t in range(frames):
        weight = (clip[:, t] - bg).abs().sum(0)
        weight = weight / weight.sum()
        cx, cy = (weight.sum(0) * coords).sum().item(), (weight.sum(1) * coords).sum().item()
        assert abs(cx - centres[t, 0]) < 0.01 and abs(cy - centres[t, 1]) < 0.01


def test_splits_are_disjoint():
    ranges = {s: (split_seed(s, 0), split_seed(s, SPLIT_SIZE - 1)) for s in SPLIT_BASE}
    for (a, (a0, a1)), (b, (b0, b1)) in itertools.combinations(ranges.items(), 2):
        assert a1 < b0 or b1 < a0, (a, b)
    assert split_seed("val", 3) == SPLIT_BASE["val"] + 3
    assert not torch.equal(sprite_batch("train", [0], 8, 2), sprite_batch("val", [0], 8, 2))


@pytest.mark.parametrize("split, index, match", [
    ("training", 0, "split must be one of"),
    ("val", -1, r"index must be in \[0, 10000000\)"),
    ("test", SPLIT_SIZE, "index must be in"),
])
def test_bad_split_or_index(split, index, match):
    with pytest.raises(ValueError, match=match):
        split_seed(split, index)


def test_sprite_batch():
    batch = sprite_batch("test", [4, 2], size=8, frames=3)
    assert batch.shape == (2, 3, 3, 8, 8)
    assert torch.equal(batch[1], sprite_clip(split_seed("test", 2), size=8, frames=3))


def test_sprite_clips_item_n_depends_on_seed_and_n_only():
    data = SpriteClips(size=8, frames=3, seed=1)
    items = [data[n] for n in range(3)]
    for n, item in enumerate(items):
        index = random.Random(f"sprites-1-{n}").randrange(SPLIT_SIZE)
        assert item.shape == (3, 3, 8, 8)
        assert torch.equal(item, sprite_clip(split_seed("train", index), size=8, frames=3))
    assert torch.equal(SpriteClips(size=8, frames=3, seed=1)[2], items[2])  # in any order, in any process
    assert not torch.equal(items[0], items[1]) and not torch.equal(items[0], SpriteClips(8, 3, seed=2)[0])
    val = SpriteClips(size=8, frames=3, seed=1, split="val")[0]
    index = random.Random("sprites-1-0").randrange(SPLIT_SIZE)
    assert torch.equal(val, sprite_clip(split_seed("val", index), size=8, frames=3))
    with pytest.raises(ValueError, match="split must be one of"):
        SpriteClips(8, 3, split="validation")


def test_loader_workers_and_ranks_read_the_same_items():
    """Two ranks x two workers read the positions of the global batch, each once: the items of one process."""
    data = SpriteClips(size=8, frames=2, seed=3)
    batches = {}
    for rank in range(2):
        loader = torch.utils.data.DataLoader(data, batch_sampler=BatchPositions(6, 4, rank, 2, 1), num_workers=2)
        batches[rank] = list(itertools.islice(iter(loader), 3))
    for step in range(3):
        both = torch.cat([batches[0][step], batches[1][step]])
        assert torch.equal(both, torch.stack([data[n] for n in range(6 + 4 * step, 10 + 4 * step)]))


def test_item_seeds_are_stable_and_distinct():
    assert item_seed("noise", 0, 5) == item_seed("noise", 0, 5) < 2**56
    assert len({item_seed(k, s, n) for k in ("noise", "t") for s in (0, 1) for n in range(50)}) == 200
    assert item_rng("t", 2, 7).random() == random.Random("t-2-7").random()
