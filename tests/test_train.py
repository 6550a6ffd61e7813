"""v-loss training in one process: it learns, the learning-rate schedule, resuming (also files from before
data positions were saved), accumulation and data workers, validation, joint image training, NaN and bad
settings, progress output. Several processes: test_distributed.py."""
import importlib.util
import io
import json
import math
import re
import sys
import typing
from dataclasses import fields

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vdm_core import checkpoint
from vdm_core import train as train_module
from vdm_core.data import SpriteClips, sprite_batch
from vdm_core.train import TrainConfig, item_noise, lr_at, train, v_loss, v_losses
from vdm_core.train_log import TrainLog
from vdm_core.unet3d import UNet3D, UNet3DConfig
from vdm_core.video_io import probe
from vdm_core.video_write import write_video

from train_runs import drift, initial_weights, losses, raw_weights, tiny_config


def val_loss(model, x) -> float:
    """v-loss on a fixed batch, averaged over four fixed draws of times and noise."""
    with torch.no_grad():
        return sum(v_loss(model, x, torch.Generator().manual_seed(s)).item() for s in range(4)) / 4


def test_training_lowers_the_loss(tmp_path):
    cfg = tiny_config(tmp_path)
    logs = []
    path = train(cfg, log=logs.append)
    x = sprite_batch("val", range(16), size=8, frames=4)
    before = val_loss(UNet3D(cfg.model), x)  # a fresh network predicts v = 0
    model = checkpoint.load(path)
    after = val_loss(model, x)
    assert 0.5 < before < 1.0
    assert after < 0.8 * before, (before, after)
    assert model.training_info["steps"] == 30 and model.training_info["resolution"] == 8
    assert model.config.frames == 4 and model.config.resolution == 8
    assert logs[-1] == f"wrote {path} after 30 steps"
    assert sorted(losses(logs)) == [10, 20, 30]
    assert re.fullmatch(r"step 30/30 loss [\d.]+ lr [\d.e+-]+ [\d.]+ clips/s eta 00:00", logs[-2])


def test_a_run_that_ends_inside_the_warm_up_says_so(tmp_path):
    logs = []
    train(tiny_config(tmp_path, steps=2, warmup=5), log=logs.append)
    assert any("--steps 2 ends inside the 5-step learning-rate warm-up" in line for line in logs), logs
    logs.clear()
    train(tiny_config(tmp_path, steps=3, warmup=2), log=logs.append)
    assert not any("warm-up" in line for line in logs)


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
    path = train(first, log=lambda s: None)
    meta, tensors = checkpoint.read(path)
    assert '"step": 4' in meta["train_state"]

    # resuming at the end changes no weight (raw, EMA and moments all restored and saved back)
    again = tiny_config(tmp_path, steps=4, out=str(tmp_path / "again.safetensors"), resume=str(path))
    train(again, log=lambda s: None)
    _, tensors_again = checkpoint.read(again.out)
    assert tensors.keys() == tensors_again.keys()
    assert all(torch.equal(tensors[k], tensors_again[k]) for k in tensors)

    logs = []
    more = tiny_config(tmp_path, steps=7, out=str(tmp_path / "more.safetensors"), resume=str(path))
    train(more, log=logs.append)
    assert logs[0] == f"resumed {path} at step 4"
    assert logs[-1].endswith("after 7 steps")
    meta2, tensors2 = checkpoint.read(more.out)
    assert '"step": 7' in meta2["train_state"]
    model = checkpoint.load(more.out)
    assert model.training_info["steps"] == 7
    assert not torch.equal(tensors["conv_in.weight"], tensors2["conv_in.weight"])  # it trained on


    state = checkpoint.read(more.out)[0]["train_state"]
    assert '"position": 28' in state and '"seed": 0' in state  # 7 steps of 4 clips consumed


def test_an_older_checkpoint_resumes_with_fresh_data(tmp_path):
    """A file saved before data positions were (its train_state has no position and seed) resumes, on a
    stream it has not seen, with its own network whatever network settings are given."""
    first = tiny_config(tmp_path, steps=4, out=str(tmp_path / "old.safetensors"))
    train(first)
    meta, tensors = checkpoint.read(first.out)
    state = {k: v for k, v in json.loads(meta["train_state"]).items() if k not in ("position", "seed")}
    save_file(tensors, first.out, metadata={**meta, "train_state": json.dumps(state)})
    logs = []
    out = tmp_path / "more.safetensors"
    cfg = TrainConfig(out=str(out), size=8, frames=4, steps=5, batch=2, device="cpu", resume=first.out)
    train(cfg, log=logs.append)
    assert logs[:2] == [f"resumed {first.out} at step 4",
                        f"{first.out} holds no data position (an older checkpoint): clips and noise are "
                        f"drawn fresh, from seed 4"]
    model = checkpoint.load(out)
    assert model.config == checkpoint.load(first.out).config != cfg.model  # the checkpoint's network
    assert model.training_info["steps"] == 5
    state = checkpoint.read(out)[0]["train_state"]
    assert '"position": 2' in state and '"seed": 4' in state


def test_accumulation_and_data_workers_take_the_same_steps(tmp_path):
    one = tiny_config(tmp_path, steps=5, log_every=1, out=str(tmp_path / "one.safetensors"))
    split = tiny_config(tmp_path, steps=5, log_every=1, accumulate=2, workers=2,
                        out=str(tmp_path / "split.safetensors"))
    logs_one, logs_split = [], []
    train(one, log=logs_one.append)
    train(split, log=logs_split.append)
    a, b = losses(logs_one), losses(logs_split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    assert len(set(a.values())) == 5  # the loss changes from step to step: a real comparison
    assert all(abs(a[s] - b[s]) <= 2e-5 for s in a), (a, b)
    assert drift(raw_weights(one.out), raw_weights(split.out), initial_weights(one)) < 0.05
    with pytest.raises(ValueError, match=r"--batch 4 \(the global batch\) must be a multiple of the 1 process\(es\) "
                                         r"× --accumulate 3 = 3; use --batch 3"):
        train(tiny_config(tmp_path, accumulate=3), log=lambda s: None)


class _NanAfter(torch.utils.data.Dataset):
    """Sprites, then NaN clips from position ``first_bad`` on."""

    def __init__(self, first_bad):
        self.clips, self.first_bad = SpriteClips(8, 4), first_bad

    def __getitem__(self, n):
        return self.clips[n] if n < self.first_bad else torch.full((3, 4, 8, 8), float("nan"))


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "model.safetensors"
    monkeypatch.setattr(train_module, "make_dataset", lambda cfg, seed, split: _NanAfter(0))
    with pytest.raises(FloatingPointError, match=r"^loss became nan at step 1; training stopped without writing\. "
                                                 r"no checkpoint was written yet: start again with a lower --lr$"):
        train(tiny_config(tmp_path, checkpoint_every=2), log=lambda s: None)
    assert not out.exists()

    monkeypatch.setattr(train_module, "make_dataset", lambda cfg, seed, split: _NanAfter(12))  # step 4 is bad
    with pytest.raises(FloatingPointError, match=rf"^loss became nan at step 4; training stopped without writing\. "
                                                 rf"the last good checkpoint is {re.escape(str(out))} \(step 2\): "
                                                 rf"resume from it with a lower --lr$"):
        train(tiny_config(tmp_path, checkpoint_every=2), log=lambda s: None)
    assert '"step": 2' in checkpoint.read(out)[0]["train_state"]
    assert all(torch.isfinite(v).all() for v in checkpoint.read(out)[1].values())


def test_trains_on_a_folder_says_what_it_skipped_and_writes_samples(tmp_path):
    clips = tmp_path / "clips"
    write_video(clips / "a.mp4", sprite_batch("train", [0], size=16, frames=8)[0], fps=8)
    (clips / "b.mp4").write_bytes(b"not a video")
    cfg = tiny_config(tmp_path, data=str(clips), steps=2, sample_every=2, sample_steps=2)
    logs = []
    path = train(cfg, log=logs.append)
    assert any(re.fullmatch(rf"data: {re.escape(str(clips))}: 1 clip\(s\), 1 file\(s\) skipped \(b\.mp4: "
                            r"unreadable: .*\)", line) for line in logs), logs
    assert checkpoint.load(path).training_info["data"] == str(clips)
    info = probe(tmp_path / "model.step2.gif")
    assert (info.frames, info.width, info.height) == (4, 8, 8)
    with pytest.raises(FileNotFoundError, match="--data 'nowhere' is neither 'sprites', 'motion' nor an existing folder"):
        train(tiny_config(tmp_path, data="nowhere"), log=lambda s: None)


def test_validation_loss_is_the_ema_models_loss_on_held_out_clips(tmp_path):
    cfg = tiny_config(tmp_path, steps=4, val_every=2, val_clips=6)
    logs = []
    train(cfg, log=logs.append)
    val = {int(m[1]): float(m[2]) for m in (re.match(r"step (\d+)/4 val loss ([\d.]+) \(EMA weights, 6 held-out "
                                                     r"clips\)", x) for x in logs) if m}
    assert sorted(val) == [2, 4]
    ema = checkpoint.load(cfg.out)  # the EMA weights after step 4
    held_out = SpriteClips(8, 4, seed=0, split="val")
    x = torch.stack([held_out[n] for n in range(6)])
    t = (torch.arange(6) + 0.5) / 6
    noise = item_noise(range(6), x.shape[1:], 0, torch.Generator(), kind="val-noise")
    with torch.no_grad():
        expected = v_losses(ema, x, t, noise).mean().item()
    assert val[4] == pytest.approx(expected, abs=1e-5)


def test_stills_train_with_temporal_attention_masked(tmp_path, monkeypatch):
    """With --images, some items are stacks of stills; the U-Net gets independent_frames true for exactly those."""
    stills = tmp_path / "stills"
    stills.mkdir()
    for i in range(5):
        Image.new("RGB", (12, 10), (50 * i, 200 - 40 * i, 90)).save(stills / f"{i}.png")
    seen_x, seen_flags = [], []
    real_losses, real_forward = train_module.v_losses, UNet3D.forward

    def spy_losses(model, x, t, noise, independent=None):
        seen_x.append((x.clone(), independent.clone()))
        return real_losses(model, x, t, noise, independent)

    def spy_forward(self, z, phi, independent_frames=False):
        seen_flags.append(torch.as_tensor(independent_frames).clone())
        return real_forward(self, z, phi, independent_frames)

    monkeypatch.setattr(train_module, "v_losses", spy_losses)
    monkeypatch.setattr(UNet3D, "forward", spy_forward)
    logs = []
    train(tiny_config(tmp_path, steps=3, images=str(stills), image_ratio=0.5), log=logs.append)
    assert f"stills: {stills}: 5 still(s), 50% of the items" in logs
    assert len(seen_x) == len(seen_flags) == 3
    kinds = set()
    for (x, independent), flags in zip(seen_x, seen_flags):
        assert independent.dtype == torch.bool and torch.equal(flags, independent)
        for clip, is_image in zip(x, independent.tolist()):
            uniform = bool(((clip - clip[:, :, :1, :1]).abs() < 1e-6).all())  # each frame one flat colour
            assert uniform == is_image
            kinds.add(is_image)
    assert kinds == {True, False}
    assert "50% of the items" in checkpoint.load(tmp_path / "model.safetensors").training_info["images"]


def test_tensorboard_scalars_or_a_clear_message(tmp_path, monkeypatch):
    board = tmp_path / "board"
    if importlib.util.find_spec("tensorboard") is not None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        logs = []
        train(tiny_config(tmp_path, steps=2, log_every=1, val_every=2, val_clips=2, tensorboard=str(board)),
              log=logs.append)
        events = EventAccumulator(str(board))
        events.Reload()
        assert set(events.Tags()["scalars"]) == {"train/loss", "train/lr", "train/clips_per_s", "val/loss"}
        assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
        assert [round(e.value, 5) for e in events.Scalars("train/loss")] == list(losses(logs).values())
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    logs = []
    train(tiny_config(tmp_path, steps=2, tensorboard=str(tmp_path / "off")), log=logs.append)
    assert (f"TensorBoard logging to {tmp_path / 'off'} is off: the tensorboard package is not installed "
            f"(pip install tensorboard)") in logs
    assert logs[-1].startswith("wrote ")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    report = TrainLog(steps=20, start=10, batch=8, log_every=5, main=True)
    for step in range(11, 21):
        report.step(step, 0.5, 1e-3)
    report.info("a message")
    report.close()
    shown = sys.stderr.getvalue()
    assert "20/20" in shown and "loss 0.5000" in shown and "clips/s" in shown and "a message" in shown
    assert "\r" in shown  # redrawn in place
    lines = []
    report = TrainLog(steps=20, start=10, batch=8, log_every=5, main=True, log=lines.append)
    for step in range(11, 21):
        report.step(step, 0.25, 1e-3)
    assert [x.split(" loss")[0] for x in lines] == ["step 15/20", "step 20/20"]
    assert all(" loss 0.25000 lr 1.00e-03 " in x and " clips/s eta " in x for x in lines)
    quiet = []
    report = TrainLog(steps=20, start=10, batch=8, log_every=5, main=False, log=quiet.append)
    report.step(15, 0.25, 1e-3)
    report.info("only rank 0 reports")
    assert quiet == []


def _flag_type_ok(tp) -> bool:
    """The annotation kinds the generated `vdm train` flags handle: int, float, str, bool, tuple[int, ...], X | None."""
    args = typing.get_args(tp)
    if type(None) in args:
        return all(_flag_type_ok(a) for a in args if a is not type(None))
    return tp in (int, float, str, bool) or (typing.get_origin(tp) is tuple and args == (int, ...))


@pytest.mark.parametrize("cls", [TrainConfig, UNet3DConfig])
def test_every_setting_is_a_typed_field_with_help(cls):
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
        if cls is TrainConfig and f.name == "model":
            assert hints[f.name] is UNet3DConfig
        else:
            assert _flag_type_ok(hints[f.name]), (f.name, hints[f.name])


@pytest.mark.parametrize("setting, message", [
    (dict(batch=0), "--batch must be at least 1, got 0"),
    (dict(log_every=0), "--log-every must be at least 1, got 0"),
    (dict(precision="half"), "--precision must be one of auto, fp32, fp16, bf16, got 'half'"),
    (dict(crop="middle"), "--crop must be one of random, centre, got 'middle'"),
    (dict(images="x", image_ratio=1.5), "--image-ratio must be between 0 and 1"),
    (dict(ema_decay=1.0), r"--ema-decay must be in \[0, 1\), got 1.0"),
    (dict(workers=-1), "--workers must be at least 0, got -1"),
    (dict(device="gpu"), "--device 'gpu' is not a device; use cpu, cuda, cuda:1"),
    pytest.param(dict(device="cuda"), "--device cuda: torch finds no cuda device here", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has a CUDA GPU")),
])
def test_bad_settings_name_the_flag(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(tmp_path, **setting), log=lambda s: None)
