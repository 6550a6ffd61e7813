"""`vdm sample / extend / interpolate / upscale` on a tiny clip with a tiny checkpoint: results, the flags
the node spec gives them, and every bad input refused in one line before any compute is spent."""
from fractions import Fraction

import pytest
import torch

from vdm_app import cli, spec
from vdm_app.cli import main
from vdm_core import checkpoint, tasks, video_io, video_write
from vdm_core.unet3d import UNet3D, UNet3DConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_jobs")
    torch.manual_seed(0)
    ckpt = d / "tiny.safetensors"
    checkpoint.save(ckpt, UNet3D(UNet3DConfig(base_width=8, width_mults=(1, 2), heads=2, resolution=8, frames=4)))
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    t = torch.arange(12000) / 12000  # 3 frames at 12 fps = 0.25 s of a 440 Hz tone at 48 kHz
    audio = video_io.Audio(0.3 * torch.sin(2 * torch.pi * 440 * t)[None], 48000)
    clip = video_write.write_video(d / "in.mp4", frames, 12, audio)
    return d, str(ckpt), str(clip)


def run(files, *argv):
    d, ckpt, _ = files
    return main([*argv, "--model", ckpt, "--steps", "1", "--device", "cpu"])


def test_extend_keeps_fps_and_audio(files, capsys):
    d, _, clip = files
    out = d / "extended.mp4"
    assert run(files, "extend", clip, "-o", str(out), "--frames", "2") == 0
    info = video_io.probe(out)
    assert (info.frames, info.fps, info.width, info.height, info.has_audio) == (5, Fraction(12), 8, 8, True)
    captured = capsys.readouterr()
    assert "vdm extend" in captured.err and "1/1" in captured.err  # the progress bar reached the end
    assert captured.out.strip() == str(out)


def test_interpolate_multiplies_fps(files):
    d, _, clip = files
    out = d / "interpolated.mp4"
    assert run(files, "interpolate", clip, "-o", str(out), "-k", "2") == 0
    info = video_io.probe(out)
    assert (info.frames, info.fps, info.has_audio) == (5, Fraction(24), True)


def test_upscale_multiplies_size(files):
    d, _, clip = files
    out = d / "upscaled.mp4"
    assert run(files, "upscale", clip, "-o", str(out), "--factor", "2", "--tile", "16", "--max-frames", "2") == 0
    info = video_io.probe(out)
    assert (info.frames, info.fps, info.width, info.height) == (2, Fraction(12), 16, 16)


def test_sample_writes_requested_frames_size_and_fps(files):
    d, _, _ = files
    out = d / "sampled"  # a folder of PNGs
    assert run(files, "sample", "-o", str(out), "--frames", "3", "--width", "8", "--height", "6", "--fps", "10",
               "--seed", "2") == 0
    clip = video_io.read_video(out, fps=10)
    assert clip.frames.shape == (3, 3, 6, 8)


def test_sample_defaults_to_the_models_native_size(files):
    d, _, _ = files
    out = d / "native.mp4"
    assert run(files, "sample", "-o", str(out)) == 0
    info = video_io.probe(out)
    assert (info.frames, info.width, info.height, float(info.fps)) == (4, 8, 8, spec.DEFAULT_FPS)


def test_cli_flags_have_the_node_defaults():
    """Every job command's flags default to what the ComfyUI widgets default to (both come from the spec)."""
    p = cli.parser()
    sub = next(a for a in p._actions if a.dest == "command").choices
    for command, node_id in (("extend", "VDM_ExtendClip"), ("interpolate", "VDM_InterpolateFrames"),
                             ("upscale", "VDM_UpscaleVideo"), ("sample", None)):
        args = sub[command].parse_args(["in.mp4", "-o", "x.mp4"] if node_id else ["-o", "x.mp4"])
        for nid in ("VDM_LoadModel", "VDM_SampleDDIMv", *([node_id] if node_id else [])):
            for name, value in cli.spec_values(args, nid).items():
                assert value == spec.NODES[nid].input(name).default, (command, nid, name)
    assert spec.NODES["VDM_SampleDDIMv"].input("guidance_weight").default < 0  # auto everywhere


@pytest.mark.parametrize("argv, message", [
    (["interpolate", "{clip}", "-o", "{d}/x.mp4", "--multiplier", "1"], "--multiplier must be from 2"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--frames", "2", "--context", "4"], "context"),
    (["upscale", "{clip}", "-o", "{d}/x.mp4", "--factor", "2", "--method", "replacement"], "reconstruction"),
    (["extend", "{d}/missing.mp4", "-o", "{d}/x.mp4", "--frames", "2"], "missing.mp4"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--guidance", "nan"], "--guidance must be a finite number"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--guidance", "inf"], "--guidance must be a finite number"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--eta", "nan"], "--eta must be a finite number"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--eta", "2"], "--eta must be from 0 to 1"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--steps", "0"], "--steps must be from 1"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--max-frames", "0"], "--max-frames must be at least 1"),
    (["extend", "{clip}", "-o", "{clip}/x.mp4"], "is a file, not a folder"),
    (["extend", "{clip}", "-o", "{d}/other"], "holds files other than PNG frames"),
    (["extend", "{clip}", "-o", "{d}/x.mov"], "can be read but not written"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--model", "{d}/nothing.safetensors"],
     "no file '{d}/nothing.safetensors' exists; give --model the path of a .safetensors checkpoint"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--model", "{d}/other"], "is a folder, not a checkpoint file; give --model"),
])
def test_bad_input_is_one_line_before_any_compute(files, capsys, monkeypatch, argv, message):
    d, ckpt, clip = files
    (d / "other").mkdir(exist_ok=True)
    (d / "other" / "notes.txt").write_text("mine")
    ran = []
    real = tasks.run
    monkeypatch.setattr(tasks, "run", lambda *a, **k: ran.append(1) or real(*a, **k))
    argv = [a.format(d=d, clip=clip) for a in argv]
    extra = ([] if "--model" in argv else ["--model", ckpt]) + ([] if "--steps" in argv else ["--steps", "1"])
    assert main([*argv, *extra, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    message = message.format(d=d)
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (d / "x.mp4").exists() and (d / "other" / "notes.txt").read_text() == "mine"
    if "context" not in message and "reconstruction" not in message:
        assert not ran  # refused before sampling


def test_a_model_that_returns_nan_is_an_error_message(files, capsys, monkeypatch):
    d, _, clip = files
    monkeypatch.setattr(UNet3D, "forward", lambda self, z, phi, **kw: torch.full_like(z, float("nan")))
    assert run(files, "extend", clip, "-o", str(d / "nan.mp4"), "--frames", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "NaN" in err and not (d / "nan.mp4").exists()


def test_train_flags_are_the_config_fields():
    """`vdm train` has one flag per TrainConfig field (and per network field), defaulting to the field."""
    import dataclasses

    from vdm_core.train import TrainConfig
    from vdm_core.unet3d import UNet3DConfig

    p = cli.parser()
    train = next(a for a in p._actions if a.dest == "command").choices["train"]
    args = train.parse_args(["-o", "x.safetensors"])
    assert cli.config_from_args(TrainConfig, args) == TrainConfig(out="x.safetensors")
    flags = {s for a in train._actions for s in a.option_strings}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model":
            assert f"--{f.name.replace('_', '-')}" in flags, f.name
    for f in dataclasses.fields(UNet3DConfig):
        if f.name not in ("resolution", "frames", "channels"):
            assert f"--{f.name.replace('_', '-')}" in flags, f.name
    cfg = cli.config_from_args(TrainConfig, train.parse_args(
        ["-o", "y", "--warmup", "5", "--weight-decay", "0", "--grad-clip", "0.5", "--ema-decay", "0.99",
         "--width-mults", "1", "2", "--compile", "--images", "stills"]))
    assert (cfg.warmup, cfg.weight_decay, cfg.grad_clip, cfg.ema_decay, cfg.compile, cfg.images) == \
        (5, 0.0, 0.5, 0.99, True, "stills")
    assert cfg.model.width_mults == (1, 2) and cfg.model.attention_levels == (1,)


def test_the_bundled_model_on_a_larger_clip_says_what_to_expect_before_sampling(tmp_path, caplog, monkeypatch):
    """A new user's real clip with the bundled 16×16 demo model: one line before any sampling says it will be slow
    and noisy and what to use instead; a clip of its own size gets no such line."""
    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(tasks, "run", stop)
    for size, warned in ((48, True), (16, False)):
        clip = video_write.write_video(tmp_path / f"real{size}.mp4", torch.zeros(3, 4, size, size), 8)
        caplog.clear()
        with pytest.raises(Stop):
            main(["extend", str(clip), "-o", str(tmp_path / "out.mp4"), "--frames", "2", "--device", "cpu"])
        notes = [r.getMessage() for r in caplog.records if "bundled model" in r.getMessage()]
        if warned:
            (note,) = notes
            assert "48×48" in note and "tiles per step" in note and "vdm train --data" in note
            assert "Use ComfyUI Model" in note
        else:
            assert notes == []


def test_help_does_not_import_torch():
    """`vdm --help` and the job commands' help answer at once: building the parser imports no torch."""
    import subprocess
    import sys

    code = ("import sys; from vdm_app import cli; p = cli.parser(train_flags=False); "
            "[a.choices[c].format_help() for a in p._actions if a.dest == 'command' for c in a.choices]; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
