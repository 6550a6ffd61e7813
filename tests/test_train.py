"""v-loss training: it learns, the learning-rate schedule, resuming, NaN detection."""
import importlib.util
import math

import pytest
import torch

from vdm_core import checkpoint
from vdm_core import train as train_module
from vdm_core.data import sprite_batch
from vdm_core.train import TrainConfig, lr_at, train, v_loss
from vdm_core.unet3d import UNet3D, UNet3DConfig


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "model.safetensors"), size=8, frames=4, batch=4, steps=30, lr=3e-3, warmup=5,
                checkpoint_every=0, model=UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2))
    return TrainConfig(**{**base, **kw})


def val_loss(model, x) -> float:
    """v-loss on a fixed batch, averaged over four fixed draws of times and noise."""
    with torch.no_grad():
        return sum(v_loss(model, x, torch.Generator().manual_seed(s)).item() for s in range(4)) / 4


def test_training_lowers_the_loss(tmp_path):
    cfg = tiny_config(tmp_path)
    logs = []
    path = train(cfg, device="cpu", log=logs.append)
    x = sprite_batch("val", range(16), size=8, frames=4)
    before = val_loss(UNet3D(cfg.model), x)  # a fresh network predicts v = 0
    model = checkpoint.load(path)
    after = val_loss(model, x)
    assert 0.5 < before < 1.0
    assert after < 0.8 * before, (before, after)
    assert model.training_info["steps"] == 30 and model.training_info["resolution"] == 8
    assert model.config.frames == 4 and model.config.resolution == 8
    assert logs[-1] == f"wrote {path} after 30 steps"
    assert sum(line.startswith("step ") for line in logs) == 3


def test_v_loss_of_a_zero_model_is_the_mean_square_of_v():
    x = sprite_batch("val", range(64), size=8, frames=2)
    zero = lambda z, phi: torch.zeros_like(z)  # noqa: E731
    loss = v_loss(zero, x, torch.Generator().manual_seed(0))
    # v = cos φ·ε − sin φ·x, φ uniform on [0, π/2] (stratified over the batch), ε ⟂ x:
    # E[v²] = E[cos²φ]·E[ε²] + E[sin²φ]·E[x²] = (1 + E[x²]) / 2   (ε or x as target would give 1 or E[x²])
    mean_x2 = x.pow(2).mean().item()
    assert mean_x2 < 0.8
    assert abs(loss.item() - (1 + mean_x2) / 2) < 0.03
    assert torch.equal(loss, v_loss(zero, x, torch.Generator().manual_seed(0)))


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    cfg = TrainConfig(out="unused", steps=1000, warmup=100, lr=1e-3)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(49, cfg) == pytest.approx(5e-4)
    assert lr_at(99, cfg) == pytest.approx(1e-3) == lr_at(100, cfg)
    assert lr_at(550, cfg) == pytest.approx(0.55e-3)  # cosine half way: 0.1 + 0.9 · 0.5
    assert lr_at(1000, cfg) == pytest.approx(1e-4) == lr_at(5000, cfg)
    warm = [lr_at(s, cfg) for s in range(100)]
    decay = [lr_at(s, cfg) for s in range(100, 1001)]
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert all(a > b for a, b in zip(decay, decay[1:]))
    s = 300
    expected = 1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * (s - 100) / 900)))
    assert lr_at(s, cfg) == pytest.approx(expected)


def test_resume_continues_the_step_count(tmp_path):
    first = tiny_config(tmp_path, steps=4)
    path = train(first, device="cpu", log=lambda s: None)
    meta, tensors = checkpoint.read(path)
    assert '"step": 4' in meta["train_state"]

    # resuming at the end changes no weight (raw, EMA and moments all restored and saved back)
    again = tiny_config(tmp_path, steps=4, out=str(tmp_path / "again.safetensors"))
    train(again, resume=str(path), device="cpu", log=lambda s: None)
    _, tensors_again = checkpoint.read(again.out)
    assert tensors.keys() == tensors_again.keys()
    assert all(torch.equal(tensors[k], tensors_again[k]) for k in tensors)

    logs = []
    more = tiny_config(tmp_path, steps=7, out=str(tmp_path / "more.safetensors"))
    train(more, resume=str(path), device="cpu", log=logs.append)
    assert logs[0] == f"resumed {path} at step 4"
    assert logs[-1].endswith("after 7 steps")
    meta2, tensors2 = checkpoint.read(more.out)
    assert '"step": 7' in meta2["train_state"]
    model = checkpoint.load(more.out)
    assert model.training_info["steps"] == 7
    assert not torch.equal(tensors["conv_in.weight"], tensors2["conv_in.weight"])  # it trained on


def test_nan_loss_raises(tmp_path, monkeypatch):
    nan_clips = [torch.full((3, 4, 8, 8), float("nan"))] * 8
    monkeypatch.setattr(train_module, "make_dataset", lambda cfg, seed: nan_clips)
    with pytest.raises(FloatingPointError, match="loss became nan at step 0; lower --lr"):
        train(tiny_config(tmp_path), device="cpu", log=lambda s: None)
    assert not (tmp_path / "model.safetensors").exists()


_HAVE_VIDEO_IO = importlib.util.find_spec("vdm_core.video_io") is not None


@pytest.mark.skipif(not _HAVE_VIDEO_IO, reason="vdm_core.video_io not written yet")
def test_trains_on_a_folder_and_writes_samples(tmp_path):
    from vdm_core.video_io import probe, write_video

    clips = tmp_path / "clips"
    write_video(clips / "a.mp4", sprite_batch("train", [0], size=16, frames=8)[0], fps=8)
    cfg = tiny_config(tmp_path, data=str(clips), steps=2, sample_every=2, sample_steps=2)
    path = train(cfg, device="cpu", log=lambda s: None)
    assert checkpoint.load(path).training_info["data"] == str(clips)
    gif = tmp_path / "model.step2.gif"
    info = probe(gif)
    assert (info.frames, info.width, info.height) == (4, 8, 8)
