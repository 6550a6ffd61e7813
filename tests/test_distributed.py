"""Training in several processes (torchrun, Gloo on CPU) and resuming: the same steps as one process, a
checkpoint from either resumed in the other, a SIGKILLed run resumed to the very same weights, and a
distributed checkpoint that loads for inference.

Every `vdm train` here runs in fresh processes started by ``train_runs.vdm_train``. Each run takes the tiny
network for 20 steps of 4 clips; the warm-up (200 steps, the default) outlasts them, so the learning rate
of a step does not depend on ``--steps`` and a 10-step run is the first half of a 20-step one.
"""
import signal
import time

import pytest
import torch

from vdm_core import checkpoint
from vdm_core.train import train
from vdm_core.unet3d import UNet3DConfig

from train_runs import drift, initial_weights, losses, raw_weights, tiny_config, vdm_train

NET = UNet3DConfig(base_width=8, width_mults=(1, 2))  # what --base-width 8 --width-mults 1 2 builds
FLAGS = ["--device", "cpu", "--threads", "1", "--size", "8", "--frames", "4", "--batch", "4", "--lr", "0.1",
         "--base-width", "8", "--width-mults", "1", "2"]


def config(tmp_path, name, **kw):
    """The in-process twin of FLAGS."""
    return tiny_config(tmp_path, out=str(tmp_path / name), lr=0.1, warmup=200, model=NET, **kw)


def run(args, procs=None, timeout=240) -> list[str]:
    p = vdm_train(FLAGS + args, procs=procs)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    return out.splitlines()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted 20-step run in this process: its progress lines and its checkpoint."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = config(tmp, "ref.safetensors", steps=20)
    lines = []
    train(cfg, log=lines.append)
    return cfg, losses(lines)


def test_two_processes_take_the_steps_of_one_and_a_run_resumes_in_one(tmp_path, reference):
    ref, ref_loss = reference
    two = tmp_path / "two.safetensors"
    lines = run(["--steps", "10", "--out", str(two)], procs=2)
    assert any("training on 2 process(es)" in x for x in lines)
    assert abs(losses(lines)[10] - ref_loss[10]) <= 2e-5  # mean loss of steps 1-10 over the same 40 clips

    model = checkpoint.load(two)  # what Load VDM does
    assert model.config == checkpoint.load(ref.out).config and model.training_info["processes"] == 2
    _, tensors = checkpoint.read(two)
    assert not any(k.startswith("module.") or ".module." in k for k in tensors)  # no DDP wrapper names
    assert '"position": 40' in checkpoint.read(two)[0]["train_state"]
    with torch.no_grad():
        v = model(torch.zeros(1, 3, 4, 8, 8), torch.tensor([0.5]))
    assert v.shape == (1, 3, 4, 8, 8) and v.abs().sum() > 0

    log = []
    train(config(tmp_path, "two.safetensors", steps=20, resume=str(two)), log=log.append)  # in one process
    assert abs(losses(log)[20] - ref_loss[20]) <= 2e-5  # steps 11-20
    assert drift(raw_weights(two), raw_weights(ref.out), initial_weights(ref)) < 0.05


def test_a_one_process_run_resumes_in_two(tmp_path, reference):
    ref, ref_loss = reference
    one = config(tmp_path, "one.safetensors", steps=10)
    train(one, log=lambda s: None)
    lines = run(["--steps", "20", "--resume", one.out, "--out", one.out], procs=2)
    assert f"resumed {one.out} at step 10" in lines
    assert abs(losses(lines)[20] - ref_loss[20]) <= 2e-5
    assert drift(raw_weights(one.out), raw_weights(ref.out), initial_weights(ref)) < 0.05


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, reference):
    """SIGKILL a run right after its first checkpoint; resumed, it ends exactly where the run that was never
    stopped ended: trained and EMA weights and AdamW moments, bit for bit."""
    ref, _ = reference
    out = tmp_path / "killed.safetensors"
    p = vdm_train(FLAGS + ["--steps", "20", "--checkpoint-every", "2", "--out", str(out)])
    deadline = time.time() + 240
    while not out.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    step = int(checkpoint.read(out)[0]["train_state"].split('"step": ')[1].split(",")[0])
    assert 2 <= step < 20  # killed mid-way, at most one checkpoint interval after its last checkpoint

    logs = []
    train(config(tmp_path, "killed.safetensors", steps=20, checkpoint_every=2, resume=str(out)), log=logs.append)
    assert logs[0] == f"resumed {out} at step {step}"
    a, b = checkpoint.read(ref.out)[1], checkpoint.read(out)[1]
    assert a.keys() == b.keys() and any(k.startswith("train.optim.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
