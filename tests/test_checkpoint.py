"""Checkpoints: bitwise round trips, metadata, EMA, resume state, and one clear error per kind of bad file."""
import json
import os
import pickle
import random

import pytest
import torch
from safetensors.torch import save_file

from vdm_core import checkpoint
from vdm_core.checkpoint import CheckpointError
from vdm_core.unet3d import UNet3DConfig


def inputs(batch=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, 4, 8, 8, generator=g), torch.tensor([0.3, 1.2][:batch])


@pytest.fixture
def saved(tmp_path, random_unet):
    model = random_unet()
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, model, {"data": "sprites", "steps": 12})
    return path, model


def test_round_trip_is_bitwise(saved):
    path, model = saved
    loaded = checkpoint.load(path)
    own, back = model.state_dict(), loaded.state_dict()
    assert own.keys() == back.keys()
    for k in own:
        assert torch.equal(own[k], back[k]), k
    z, phi = inputs()
    with torch.no_grad():
        assert torch.equal(model(z, phi), loaded(z, phi))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_metadata_holds_config_and_training_facts(saved):
    path, model = saved
    meta, tensors = checkpoint.read(path)
    assert meta["format"] == "vdm_core" and int(meta["format_version"]) == checkpoint.FORMAT_VERSION
    assert UNet3DConfig.from_dict(json.loads(meta["config"])) == model.config
    assert json.loads(meta["training"]) == {"data": "sprites", "steps": 12}
    assert "train_state" not in meta and not any(k.startswith("train.") for k in tensors)
    loaded = checkpoint.load(path)
    assert loaded.config == model.config and loaded.config.resolution == 8 and loaded.config.frames == 4
    assert loaded.training_info == {"data": "sprites", "steps": 12}


def test_saved_file_mode_follows_umask(saved):
    path, _ = saved
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind


def test_failed_save_leaves_old_file_and_no_temp(saved, monkeypatch, random_unet):
    path, model = saved
    before = path.read_bytes()

    def disk_full(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, random_unet(seed=3), {"steps": 99})
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_load_returns_ema_weights(tmp_path, random_unet):
    model, ema = random_unet(0), random_unet(1)
    path = tmp_path / "ema.safetensors"
    checkpoint.save(path, model, ema=ema)
    loaded = checkpoint.load(path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ema.state_dict()[k]), k
    assert not torch.equal(loaded.conv_in.weight, model.conv_in.weight)


def test_load_with_device_and_dtype(saved):
    path, model = saved
    loaded = checkpoint.load(path, device="cpu", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu"
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert torch.equal(loaded.conv_in.weight, model.conv_in.weight.to(torch.bfloat16))


def _adam_steps(model, steps=3, seed=0):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99))
    z, phi = inputs()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        target = torch.randn(z.shape, generator=g)
        loss = (model(z, phi) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_resume_state_round_trip(tmp_path, random_unet):
    model, ema = random_unet(0), random_unet(1).requires_grad_(False)
    opt = _adam_steps(model, steps=3)
    path = tmp_path / "resume.safetensors"
    checkpoint.save(path, model, {"steps": 3}, ema=ema, optimizer=opt, train_state={"step": 3, "elapsed_s": 1.5})

    model2, ema2 = random_unet(5), random_unet(6).requires_grad_(False)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99))
    state = checkpoint.load_train_state(path, model2, ema2, opt2)
    assert state == {"step": 3, "elapsed_s": 1.5}
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k
    for k, v in ema.state_dict().items():
        assert torch.equal(ema2.state_dict()[k], v), k
    names = dict(model.named_parameters())
    names2 = dict(model2.named_parameters())
    moments = 0
    for n, p in names.items():
        s, s2 = opt.state[p], opt2.state[names2[n]]
        for slot in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s[slot], s2[slot]), (n, slot)
            moments += 1
        assert float(s2["step"]) == float(s["step"]) == 3
    assert moments == 2 * len(names)
    # one more identical step from both must give identical weights (moments and step count really restored)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    z, phi = inputs()
    for m, o, g in ((model, opt, g1), (model2, opt2, g2)):
        loss = (m(z, phi) - torch.randn(z.shape, generator=g)).pow(2).mean()
        o.zero_grad()
        loss.backward()
        o.step()
    for k, v in model.state_dict().items():
        assert torch.allclose(model2.state_dict()[k], v, rtol=0, atol=1e-7), k
    # the inference weights of a resumable file are the EMA ones
    assert torch.equal(checkpoint.load(path).conv_in.weight, ema.conv_in.weight)


def test_inference_only_file_refuses_to_resume(saved, random_unet):
    path, _ = saved
    model, ema = random_unet(), random_unet()
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match="inference weights only"):
        checkpoint.load_train_state(path, model, ema, opt)


@pytest.fixture
def resumable(tmp_path, random_unet):
    """A checkpoint saved for resuming (EMA, raw weights, AdamW moments, train_state) and its EMA network."""
    model, ema = random_unet(0), random_unet(1).requires_grad_(False)
    path = tmp_path / "resume.safetensors"
    checkpoint.save(path, model, {"steps": 3}, ema=ema, optimizer=_adam_steps(model, steps=3),
                    train_state={"step": 3})
    return path, ema


def test_save_inference_keeps_the_ema_weights_and_metadata_only(tmp_path, resumable, random_unet):
    src, ema = resumable
    dst = tmp_path / "inference.safetensors"
    checkpoint.save_inference(src, dst)
    meta, tensors = checkpoint.read(dst)
    src_meta = checkpoint.read(src)[0]
    assert meta == {k: src_meta[k] for k in ("format", "format_version", "config", "training")}
    assert tensors.keys() == ema.state_dict().keys()
    assert all(v.dtype == torch.float32 for v in tensors.values())
    loaded = checkpoint.load(dst)
    for k, v in ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    z, phi = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(z, phi), checkpoint.load(src)(z, phi))
    assert dst.stat().st_size < src.stat().st_size / 3  # the raw weights and both moments are gone
    model = random_unet()
    with pytest.raises(CheckpointError, match="inference weights only"):
        checkpoint.load_train_state(dst, model, random_unet(), torch.optim.AdamW(model.parameters()))


def test_save_inference_in_float16_and_in_place(resumable):
    src, ema = resumable
    checkpoint.save_inference(src, src, dtype=torch.float16)
    meta, tensors = checkpoint.read(src)
    assert "train_state" not in meta and not any(k.startswith("train.") for k in tensors)
    assert all(v.dtype == torch.float16 for v in tensors.values())
    loaded = checkpoint.load(src)
    assert loaded.dtype == torch.float32  # fp16 storage, fp32 network
    for k, v in ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k
    assert os.listdir(src.parent) == [src.name]  # no temp file left behind


def test_save_inference_refuses_other_dtypes_and_leaves_no_file(tmp_path, resumable):
    src, _ = resumable
    with pytest.raises(ValueError, match="dtype must be one of"):
        checkpoint.save_inference(src, tmp_path / "x.safetensors", dtype=torch.bfloat16)
    assert not (tmp_path / "x.safetensors").exists()


def test_bundled_file_holds_inference_weights_only():
    """What ships is the EMA network and its metadata: no optimizer moments, no raw weights (MODEL_CARD.md)."""
    meta, tensors = checkpoint.read(checkpoint.BUNDLED)
    assert not any(k.startswith(checkpoint.TRAIN_PREFIX) for k in tensors) and "train_state" not in meta
    model = checkpoint.load()
    assert tensors.keys() == model.state_dict().keys()
    assert model.training_info["steps"] > 0
    data = sum(v.numel() * v.element_size() for v in tensors.values())
    assert checkpoint.BUNDLED.stat().st_size < data + 64 * 1024  # tensors and a header, nothing else
    z, phi = inputs(1)
    with torch.no_grad():
        assert torch.isfinite(model(z, phi)).all()


# ---------------------------------------------------------------- bad files, one message each


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.safetensors")


def test_truncated_file(saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    for cut, where in ((len(data) // 2, "tensors"), (len(data) - 1, "tensors"), (40, "header")):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"truncated: its (safetensors )?{where}") as e:
            checkpoint.load(bad)
        assert "cut off" in str(e.value)


def test_safetensors_from_another_program(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="another program"):
        checkpoint.load(path)
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="another program"):
        checkpoint.load(path)


class _Marker:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "pickle"])
def test_pickle_is_refused_and_never_unpickled(tmp_path, writer, random_unet):
    marker = tmp_path / "unpickled.txt"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": _Marker(marker)}
    if writer == "torch_zip":
        torch.save(payload, path)
    elif writer == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="pickle") as e:
        checkpoint.load(path)
    assert "never unpickles" in str(e.value)
    model = random_unet()
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.load_train_state(path, model, random_unet(), torch.optim.AdamW(model.parameters()))
    assert not marker.exists()
    # the marker really does fire when unpickled, so the check above means something
    pickle.loads(pickle.dumps(_Marker(marker))).close()
    assert marker.exists()


def test_newer_format_version(saved, tmp_path):
    path, _ = saved
    meta, tensors = checkpoint.read(path)
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={**meta, "format_version": str(checkpoint.FORMAT_VERSION + 1)})
    with pytest.raises(CheckpointError, match="newer than this vdm_core") as e:
        checkpoint.load(newer)
    assert "update comfyui-vdm" in str(e.value)


def test_unusable_config(saved, tmp_path):
    path, _ = saved
    meta, tensors = checkpoint.read(path)
    bad = tmp_path / "badcfg.safetensors"
    cfg = json.loads(meta["config"])
    save_file(tensors, str(bad), metadata={**meta, "config": json.dumps({**cfg, "wings": 2})})
    with pytest.raises(CheckpointError, match="unusable network config.*wings"):
        checkpoint.load(bad)


def test_tensors_that_do_not_fit(saved, tmp_path):
    path, _ = saved
    meta, tensors = checkpoint.read(path)
    missing = dict(tensors)
    del missing["conv_out.weight"]
    bad = tmp_path / "missing.safetensors"
    save_file(missing, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match=r"do not fit its config: missing 1 tensors \(e\.g\. conv_out\.weight\)"):
        checkpoint.load(bad)

    wrong = {**tensors, "conv_in.weight": torch.zeros(16, 3, 3, 3)}
    bad = tmp_path / "wrong.safetensors"
    save_file(wrong, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match=r"wrong shape \(e\.g\. conv_in\.weight: file \(16, 3, 3, 3\), "
                                              r"config \(8, 3, 3, 3\)\)"):
        checkpoint.load(bad)

    extra = {**tensors, "stowaway": torch.zeros(1)}
    bad = tmp_path / "extra.safetensors"
    save_file(extra, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match=r"1 unexpected tensors \(e\.g\. stowaway\)"):
        checkpoint.load(bad)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        checkpoint.load(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        checkpoint.load(path)


def _header_length(path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("low_bytes", [b"\x80", b"PK"])
def test_valid_file_whose_header_length_looks_like_a_pickle(tmp_path, low_bytes, random_unet):
    """The first 8 bytes are the header length: 0x80 or 'PK' there is no sign of a pickle."""
    path, model = tmp_path / "x.safetensors", random_unet()
    checkpoint.save(path, model, {"pad": ""})
    modulus = 256 ** len(low_bytes)
    start = (int.from_bytes(low_bytes, "little") - _header_length(path)) % modulus
    for pad in range(max(0, start - 8), start + 9):  # the header is padded to a multiple of 8 bytes
        checkpoint.save(path, model, {"pad": "x" * pad})
        if path.read_bytes().startswith(low_bytes):
            break
    else:
        pytest.fail(f"found no padding that starts the file with {low_bytes!r}")
    assert checkpoint.load(path).training_info["pad"] == "x" * pad


def test_network_config_reads_the_metadata_only(saved, tmp_path, monkeypatch):
    path, model = saved
    monkeypatch.setattr(checkpoint, "read", lambda *a: pytest.fail("network_config read the tensors"))
    assert checkpoint.network_config(path) == model.config
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.network_config(tmp_path / "nope.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(other))
    with pytest.raises(CheckpointError, match="another program"):
        checkpoint.network_config(other)


def test_resume_restores_adams_own_step_count(tmp_path, random_unet):
    """fp16 loss scaling skips optimizer steps, so AdamW's count (its bias correction) can lag the training step."""
    model, ema = random_unet(0), random_unet(1).requires_grad_(False)
    opt = _adam_steps(model, steps=3)
    path = tmp_path / "r.safetensors"
    checkpoint.save(path, model, ema=ema, optimizer=opt, train_state={"step": 5, "optimizer_step": 3})
    model2 = random_unet(2)
    opt2 = torch.optim.AdamW(model2.parameters())
    checkpoint.load_train_state(path, model2, random_unet(3), opt2)
    assert {float(s["step"]) for s in opt2.state.values()} == {3.0}
