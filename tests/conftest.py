"""Settings and fixtures shared by all tests."""
import pytest
import torch

from vdm_core.unet3d import UNet3D, UNet3DConfig

# Test tensors are tiny, so one intra-op thread is fastest; more threads thrash (10-50x slower) when the
# 2-core machine is busy with another torch process.
torch.set_num_threads(1)

TINY_UNET = dict(base_width=8, width_mults=(1, 2), heads=2, resolution=8, frames=4)


@pytest.fixture
def random_unet():
    """``make(seed=0, **config) -> UNet3D``: a tiny network (``TINY_UNET`` updated by ``config``) whose
    weights, the zero-initialised ones too, are perturbed by N(0, 0.1²) so every part does something."""

    def make(seed: int = 0, **config) -> UNet3D:
        torch.manual_seed(seed)
        model = UNet3D(UNet3DConfig(**{**TINY_UNET, **config}))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        return model

    return make
