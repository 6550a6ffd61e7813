"""`vdm sample / extend / interpolate / upscale` on a tiny clip with a tiny checkpoint."""
from fractions import Fraction

import pytest
import torch

from vdm_core import checkpoint, video_io
from vdm_core.cli import main
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
    clip = video_io.write_video(d / "in.mp4", frames, 12, audio)
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
    err = capsys.readouterr().err
    assert "vdm extend: 5 frames of 8x8" in err and "1 window(s) x 1 tile(s) x 1 steps" in err
    assert "1/1" in err  # the progress bar reached the end


def test_interpolate_multiplies_fps(files):
    d, _, clip = files
    out = d / "interpolated.mp4"
    assert run(files, "interpolate", clip, "-o", str(out), "--multiplier", "2") == 0
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
    assert run(files, "sample", "-o", str(out), "--frames", "3", "--size", "8x6", "--fps", "10", "--seed", "2") == 0
    clip = video_io.read_video(out, fps=10)
    assert clip.frames.shape == (3, 3, 6, 8)


@pytest.mark.parametrize("argv, message", [
    (["interpolate", "{clip}", "-o", "{d}/x.mp4", "--multiplier", "1"], "--multiplier must be at least 2"),
    (["extend", "{clip}", "-o", "{d}/x.mp4", "--frames", "2", "--context", "4"], "context"),
    (["upscale", "{clip}", "-o", "{d}/x.mp4", "--factor", "2", "--method", "replacement"], "reconstruction"),
    (["extend", "{d}/missing.mp4", "-o", "{d}/x.mp4", "--frames", "2"], "missing.mp4"),
])
def test_bad_input_is_an_error_message_not_a_traceback(files, capsys, argv, message):
    d, _, clip = files
    argv = [a.format(d=d, clip=clip) for a in argv]
    assert run(files, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and not (d / "x.mp4").exists()


def test_progress_bar_reports_rate_and_eta_every_5_percent(monkeypatch):
    import io

    from vdm_core import runner

    clock = iter(range(1000))
    monkeypatch.setattr(runner.time, "monotonic", lambda: float(next(clock)))
    stream = io.StringIO()  # not a terminal: one line per 5 %
    bar = runner.ProgressBar("upscale", stream)
    for done in range(1, 201):
        bar(done, 200)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 21 and lines[-1].startswith("upscale [" + "#" * 30 + "] 200/200")
    assert lines[-1].endswith("1.00 it/s, ETA 0:00") and lines[0].endswith("] 1/200")  # 1 step per tick
    assert "1.00 it/s, ETA 3:10" in lines[0 + 1]  # at 10/200: 190 steps left at 1 it/s
