"""Motion scenes and the training mix (vdm_core.motion): determinism, variety, the motion drawn is the
motion stated, the mix of generators, and `vdm train --data motion`."""
import itertools
import math

import torch
import torch.nn.functional as F

from vdm_core import checkpoint
from vdm_core.data import SPLIT_SIZE, item_rng, split_seed, sprite_clip
from vdm_core.motion import (
    BACKGROUNDS, MIN_CONTRAST, SHAPES, SPRITES_SHARE, MotionMix, motion_batch, motion_centres, motion_clip,
    motion_scene,
)
from vdm_core.train import TrainConfig, make_dataset, train
from vdm_core.unet3d import UNet3DConfig


def test_motion_clip_is_deterministic_shaped_in_range_and_moves():
    a, b = motion_clip(7, size=16, frames=6), motion_clip(7, size=16, frames=6)
    assert a.shape == (3, 6, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(motion_clip(7, size=16, frames=10)[:, :6], a)  # a prefix of a longer clip
    moving = sum(bool((motion_clip(s, 8, 4)[:, 1:] - motion_clip(s, 8, 4)[:, :-1]).abs().max() > 0.1)
                 for s in range(20))
    assert moving >= 15  # some objects are drawn (nearly) still, most move


def test_seeds_and_splits_differ():
    clips = [motion_clip(s, size=8, frames=3) for s in range(6)]
    for a, b in itertools.combinations(clips, 2):
        assert (a - b).abs().mean() > 0.01
    assert not torch.equal(motion_batch("train", [0], 8, 2), motion_batch("test", [0], 8, 2))
    assert torch.equal(motion_batch("test", [3], 8, 2)[0], motion_clip(split_seed("test", 3), 8, 2))


def test_scenes_cover_every_background_shape_and_contrast():
    scenes = [motion_scene(s) for s in range(300)]
    assert {sc.background.kind for sc in scenes} == set(BACKGROUNDS)
    assert {ob.shape for sc in scenes for ob in sc.objects} == set(SHAPES)
    assert {len(sc.objects) for sc in scenes} == {1, 2, 3, 4}
    assert 0.1 < sum(sc.bar is not None for sc in scenes) / 300 < 0.3  # foreground bars: occlusion
    assert 0.1 < sum(sc.background.pan != (0.0, 0.0) for sc in scenes) / 300 < 0.5  # camera pans
    backgrounds = [sc.background.a for sc in scenes]
    assert min(map(sum, backgrounds)) < 0.5 and max(map(sum, backgrounds)) > 2.5  # dark and bright
    for sc in scenes:
        ref = [(x + y) / 2 for x, y in zip(sc.background.a, sc.background.b)]
        assert all(math.dist(ob.colour, ref) >= MIN_CONTRAST for ob in sc.objects)
    speeds = [math.hypot(*ob.velocity) for sc in scenes for ob in sc.objects]
    assert min(speeds) < 0.01 and max(speeds) > 0.1


def test_same_scene_at_every_resolution():
    for seed in range(6):
        big = motion_clip(seed, size=64, frames=3)
        for size in (16, 32):
            gap = (F.avg_pool2d(big, 64 // size) - motion_clip(seed, size=size, frames=3)).abs()
            assert gap.mean() < 0.03, (seed, size)
            assert (F.avg_pool2d(big, 64 // size) - motion_clip(seed + 50, size=size, frames=3)).abs().mean() > 0.05


def test_objects_move_with_the_rendered_pixels_and_bounce_inside_the_frame():
    seed = next(s for s in range(200) if len(motion_scene(s).objects) == 1 and motion_scene(s).bar is None
                and motion_scene(s).background.kind == "flat" and motion_scene(s).objects[0].shape == "disc")
    size, frames = 64, 12
    clip = motion_clip(seed, size=size, frames=frames)
    bg = torch.tensor(motion_scene(seed).background.a)[:, None, None] * 2 - 1
    centres = motion_centres(seed, frames)[0]
    coords = (torch.arange(size) + 0.5) / size
    for t in range(frames):
        weight = (clip[:, t] - bg).abs().sum(0)
        weight = weight / weight.sum()
        cx, cy = (weight.sum(0) * coords).sum().item(), (weight.sum(1) * coords).sum().item()
        assert abs(cx - centres[t, 0]) < 0.01 and abs(cy - centres[t, 1]) < 0.01
    for s in range(30):
        for ob, c in zip(motion_scene(s).objects, motion_centres(s, frames=60)):
            for axis in range(2):  # frame-by-frame elastic reflection at the walls radius and 1 - radius
                pos, vel, lo, hi = ob.start[axis], ob.velocity[axis], ob.radius, 1 - ob.radius
                for t in range(60):
                    assert abs(c[t, axis] - pos) < 1e-6, (s, axis, t)
                    pos += vel
                    if pos > hi or pos < lo:
                        pos, vel = 2 * (hi if pos > hi else lo) - pos, -vel


def test_motion_mix_draws_sprites_and_scenes_from_the_train_split():
    """Item n depends on (seed, n) alone (vdm_core.data.item_rng), so every process and DataLoader worker
    that makes it makes the same clip; the val split draws other clips."""
    mix, again = MotionMix(size=8, frames=3, seed=4), MotionMix(size=8, frames=3, seed=4)
    kinds = []
    for n in (0, 1, 2, 5, 17, 23, 1000, 12345):
        item = mix[n]
        assert item.shape == (3, 3, 8, 8) and torch.equal(item, again[n])
        rng = item_rng("motion-mix", 4, n)
        index = split_seed("train", rng.randrange(SPLIT_SIZE))
        sprites = rng.random() < SPRITES_SHARE
        kinds.append(sprites)
        assert torch.equal(item, (sprite_clip if sprites else motion_clip)(index, 8, 3))
    assert 0 < sum(kinds) < len(kinds)
    assert not torch.equal(mix[0], MotionMix(size=8, frames=3, seed=5)[0])
    assert not torch.equal(mix[0], MotionMix(size=8, frames=3, seed=4, split="val")[0])


def test_vdm_train_data_motion(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "m.safetensors"), data="motion", size=8, frames=4, batch=2, steps=2, device="cpu",
                      checkpoint_every=0, model=UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2))
    assert isinstance(make_dataset(cfg, 0), MotionMix)
    model = checkpoint.load(train(cfg, log=lambda s: None))
    assert model.training_info["data"] == MotionMix.description
    assert "motion scenes v1" in MotionMix.description and "moving sprites v1" in MotionMix.description

