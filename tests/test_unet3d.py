"""The factorized space-time U-Net: shapes, zero init, frame masking, relative time, checkpointing, dtypes."""
import pytest
import torch

from vdm_core.unet3d import UNet3D, UNet3DConfig, relative_position_bucket


def clip(b=1, f=4, h=8, w=8, seed=0):
    return torch.randn(b, 3, f, h, w, generator=torch.Generator().manual_seed(seed))


def phis(b):
    return torch.linspace(0.2, 1.4, b)


def temporal_blocks(model):
    return [m for m in model.modules() if type(m).__name__ == "TemporalAttention"]


@pytest.mark.parametrize("frames", [1, 3, 16, 40])
@pytest.mark.parametrize("hw", [(15, 13), (7, 9), (1, 1), (8, 8)])
def test_output_shape_equals_input(random_unet, frames, hw):
    model = random_unet()
    z = clip(2, frames, *hw)
    with torch.no_grad():
        v = model(z, phis(2))
    assert v.shape == z.shape and v.dtype == z.dtype
    assert torch.isfinite(v).all() and v.abs().max() > 0


@pytest.mark.parametrize("hw", [(1, 1), (3, 2), (5, 7), (13, 15)])
def test_output_shape_three_levels(random_unet, hw):
    """Sizes not divisible by 4 (padding larger than the input falls back to replicate padding)."""
    model = random_unet(width_mults=(1, 2, 2))
    z = clip(1, 3, *hw)
    with torch.no_grad():
        assert model(z, phis(1)).shape == z.shape


def test_fresh_network_predicts_zero_until_perturbed():
    torch.manual_seed(0)
    model = UNet3D(UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2))
    z = clip(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(z, phis(2)), torch.zeros_like(z))
        model.conv_out.weight.add_(0.01 * torch.randn_like(model.conv_out.weight))
        assert model(z, phis(2)).abs().min() > 0


def test_output_depends_on_noise_level_and_not_on_other_batch_items(random_unet):
    model = random_unet()
    z = clip(2, 3, 8, 8)
    with torch.no_grad():
        both = model(z, torch.tensor([0.3, 1.2]))
        first = model(z[:1], torch.tensor([0.3]))
        other_phi = model(z[:1], torch.tensor([1.2]))
        scalar = model(z, 0.3)
    assert torch.allclose(both[:1], first, atol=1e-6)
    assert (other_phi - first).abs().max() > 1e-3
    assert torch.allclose(scalar[:1], first, atol=1e-6)


# ---------------------------------------------------------------- frame masking (joint image/video training)


def perturb_frame(z, j):
    z2 = z.clone()
    z2[:, :, j] += torch.randn(z2[:, :, j].shape, generator=torch.Generator().manual_seed(7))
    return z2


def changed_frames(a, b, tol=1e-6):
    """Indices ``[batch, frame]`` where outputs differ by more than ``tol``."""
    return ((a - b).abs().amax(dim=(1, 3, 4)) > tol)


def test_independent_frames_true_makes_frames_independent(random_unet):
    model = random_unet()
    z, j = clip(2, 5, 8, 8), 2
    z2 = perturb_frame(z, j)
    with torch.no_grad():
        masked = changed_frames(model(z, phis(2), True), model(z2, phis(2), True))
        joint = changed_frames(model(z, phis(2)), model(z2, phis(2)))
    only_j = torch.zeros(2, 5, dtype=torch.bool)
    only_j[:, j] = True
    assert torch.equal(masked, only_j)
    assert joint.all()  # without the mask, every frame sees frame j


def test_independent_frames_per_item(random_unet):
    model = random_unet()
    z, j = clip(2, 5, 8, 8), 1
    z2 = perturb_frame(z, j)
    mask = torch.tensor([False, True])  # item 0 a video, item 1 a stack of images
    with torch.no_grad():
        changed = changed_frames(model(z, phis(2), mask), model(z2, phis(2), mask))
    assert changed[0].all()
    assert changed[1].tolist() == [k == j for k in range(5)]


def test_independent_frames_equal_single_frame_clips(random_unet):
    """Image mode: each frame comes out as if it were a 1-frame clip of its own."""
    model = random_unet()
    z = clip(1, 4, 6, 6)
    with torch.no_grad():
        masked = model(z, phis(1), True)
        for k in range(4):
            assert torch.allclose(masked[:, :, k:k + 1], model(z[:, :, k:k + 1], phis(1)), atol=1e-5)


# ---------------------------------------------------------------- relative, never absolute, time


def test_temporal_bias_is_toeplitz(random_unet):
    block = temporal_blocks(random_unet())[0]
    with torch.no_grad():
        block.rel_bias.weight.normal_()
    frames = 40
    bias = block.bias(frames, "cpu")
    assert bias.shape == (block.heads, frames, frames)
    for i in range(frames):
        for j in range(frames):
            ref = bias[:, 0, j - i] if j >= i else bias[:, i - j, 0]
            assert torch.equal(bias[:, i, j], ref), (i, j)
    # and it does depend on the distance (near offsets get buckets of their own, both directions)
    rel = torch.arange(-9, 10)
    buckets = relative_position_bucket(rel, block.num_buckets, block.max_distance)
    assert len(set(buckets[5:14].tolist())) == 9 and buckets.max() < block.num_buckets


def test_time_constant_clip_gives_time_constant_output(random_unet):
    """With only relative time, every frame of a clip whose frames are all equal sees the same thing."""
    model = random_unet()
    z = clip(1, 1, 8, 8).expand(-1, -1, 7, -1, -1).contiguous()
    with torch.no_grad():
        v = model(z, phis(1))
    assert (v[:, :, 1:] - v[:, :, :1]).abs().max() < 1e-5
    assert v.abs().max() > 1e-2


def _local_time_model(random_unet, reach: int):
    """A network whose temporal attention only reaches ``reach`` frames back and forward (bias of the
    farther buckets −1e4), so a frame's output depends on frames within ``reach · (#temporal blocks)``."""
    model = random_unet(seed=3)
    blocks = temporal_blocks(model)
    for block in blocks:
        near = relative_position_bucket(torch.arange(-reach, reach + 1), block.num_buckets, block.max_distance)
        far = torch.ones(block.num_buckets, dtype=torch.bool)
        far[near] = False
        with torch.no_grad():
            block.rel_bias.weight[far] = -1e4
    return model, reach * len(blocks)


def test_shifted_clip_gives_shifted_output(random_unet):
    """Translation equivariance in time: frame t of a clip shifted by s frames gives the output of frame
    t − s of the original wherever both frames have the same temporal neighbourhood. An absolute time
    index anywhere in the network breaks this (checked below with a frame-index hook)."""
    model, radius = _local_time_model(random_unet, reach=1)
    frames, shift = 40, 5
    x = clip(1, frames, 6, 6, seed=1)
    y = torch.cat([clip(1, shift, 6, 6, seed=2), x[:, :, :frames - shift]], dim=2)  # y[t] = x[t − s], t ≥ s
    same = range(shift + radius, frames - radius)  # frames of y whose whole neighbourhood is shifted x
    assert len(same) >= 10

    def max_gap(m):
        with torch.no_grad():
            vx, vy = m(x, phis(1)), m(y, phis(1))
        return max((vy[:, :, t] - vx[:, :, t - shift]).abs().max().item() for t in same), vx

    gap, vx = max_gap(model)
    assert gap < 1e-5
    # the outputs do vary from frame to frame, so the equality above is not trivial
    assert (vx[:, :, list(same)[1:]] - vx[:, :, list(same)[:-1]]).abs().amax() > 1e-2

    def add_frame_index(module, args, out):  # an absolute time embedding, as a broken network might have
        index = torch.arange(out.shape[0]) % frames
        return out + 0.05 * index[:, None, None, None].float()

    hook = model.conv_in.register_forward_hook(add_frame_index)
    try:
        assert max_gap(model)[0] > 1e-3
    finally:
        hook.remove()


def test_local_bias_limits_the_temporal_reach(random_unet):
    """The −1e4 bias above really cuts attention: a frame farther than the radius changes nothing."""
    model, radius = _local_time_model(random_unet, reach=1)
    z = clip(1, radius + 4, 6, 6)
    z2 = perturb_frame(z, 0)
    with torch.no_grad():
        changed = changed_frames(model(z, phis(1)), model(z2, phis(1)), tol=0.0)[0]
    assert changed[: radius + 1].all() and not changed[radius + 1:].any()  # reach exactly `radius` frames


# ---------------------------------------------------------------- memory and dtypes


def test_gradient_checkpointing_gives_same_output_and_gradients(random_unet):
    z = clip(2, 3, 8, 8)
    results = []
    for ckpt in (False, True):
        model = random_unet(seed=4)
        model.gradient_checkpointing = ckpt
        zz = z.clone().requires_grad_(True)
        v = model(zz, phis(2), torch.tensor([False, True]))
        (v * torch.linspace(-1, 1, v.numel()).reshape(v.shape)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((v.detach(), zz.grad.clone(), grads))
    (v0, gz0, g0), (v1, gz1, g1) = results
    assert torch.allclose(v0, v1, atol=1e-6)
    assert torch.allclose(gz0, gz1, atol=1e-6)
    assert g0.keys() == g1.keys()
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6), n
    assert all(g.abs().max() > 0 for g in g0.values())


def test_bfloat16_model_returns_input_dtype(random_unet):
    model = random_unet()
    z = clip(1, 3, 8, 8)
    with torch.no_grad():
        ref = model(z, phis(1))
        model = model.to(torch.bfloat16)
        assert model.dtype == torch.bfloat16
        v32 = model(z, phis(1))
        v16 = model(z.to(torch.bfloat16), phis(1))
    assert v32.dtype == torch.float32 and v16.dtype == torch.bfloat16
    assert (v32 - ref).norm() < 0.05 * ref.norm()


def test_default_width_builds():
    model = UNet3D(UNet3DConfig(base_width=32, width_mults=(1, 2, 4)))
    assert model.config.attention_levels == (1, 2) and model.config.heads == 4
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 2e7
    with torch.no_grad():
        assert model(clip(1, 2, 8, 8), phis(1)).shape == (1, 3, 2, 8, 8)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("z, phi, independent, match", [
    (torch.randn(3, 2, 8, 8), torch.zeros(1), False, r"expected z of shape \[B, 3, F, H, W\]"),
    (torch.randn(1, 4, 2, 8, 8), torch.zeros(1), False, r"expected z of shape \[B, 3, F, H, W\]"),
    (torch.randn(1, 3, 0, 8, 8), torch.zeros(1), False, "at least one frame"),
    (torch.randn(1, 3, 2, 0, 8), torch.zeros(1), False, "at least one frame and pixel"),
    (torch.zeros(1, 3, 2, 8, 8, dtype=torch.long), torch.zeros(1), False, "float tensor"),
    (torch.randn(2, 3, 2, 8, 8), torch.zeros(3), False, "phi must have 1 or B=2 entries, got 3"),
    (torch.randn(2, 3, 2, 8, 8), torch.zeros(2), torch.ones(3, dtype=torch.bool),
     "independent_frames must have 1 or B=2 entries"),
])
def test_bad_input_is_a_clear_value_error(random_unet, z, phi, independent, match):
    with pytest.raises(ValueError, match=match):
        random_unet()(z, phi, independent)


@pytest.mark.parametrize("change, match", [
    (dict(width_mults=()), "width_mults must list at least one level"),
    (dict(width_mults=(1, 0)), "each >= 1"),
    (dict(heads=3), "width 8 must be divisible by heads=3"),
    (dict(heads=0), "heads must be at least 1"),
    (dict(channels=0), "channels must be at least 1"),
    (dict(blocks_per_level=0), "blocks_per_level must be at least 1"),
    (dict(base_width=7, heads=1), "base_width must be even"),
    (dict(spatial_attn_levels=(2,)), r"spatial_attn_levels \[2\] are not levels 0..1"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(rel_pos_buckets=2), "rel_pos_buckets >= 4"),
    (dict(rel_pos_max_distance=8), "rel_pos_max_distance > rel_pos_buckets // 4"),
])
def test_config_validation(change, match):
    with pytest.raises(ValueError, match=match):
        UNet3DConfig(**{**dict(base_width=8, width_mults=(1, 2), heads=2), **change})


def test_config_dict_round_trip():
    cfg = UNet3DConfig(base_width=16, width_mults=[1, 2, 2], spatial_attn_levels=[2], frames=8)
    assert cfg.width_mults == (1, 2, 2) and cfg.spatial_attn_levels == (2,)
    assert UNet3DConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown config fields \['wings'\]"):
        UNet3DConfig.from_dict({**cfg.to_dict(), "wings": 2})


def test_compiles_as_one_graph_with_the_frame_mask(random_unet):
    """torch.compile (vdm train --compile) traces the network without graph breaks; the same outputs."""
    torch._dynamo.reset()
    model = random_unet()
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    z, mask = clip(2, 4, 8, 8), torch.tensor([False, True])
    with torch.no_grad():
        assert torch.allclose(compiled(z, phis(2), mask), model(z, phis(2), mask), atol=1e-6)
