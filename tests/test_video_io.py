"""video_io: round trips per format, read options, audio, errors, atomic writes, probe and `vdm info`."""
import math
import os
import re
import warnings
from fractions import Fraction

import av
import pytest
import torch
import torch.nn.functional as F

from vdm_core import video_io, video_write
from vdm_app.cli import main
from vdm_core.video_io import Audio, VideoError, probe, read_video
from vdm_core.video_write import write_video

NTSC = Fraction(24000, 1001)


def smooth_clip(frames=8, h=16, w=24):
    """``[3, F, H, W]`` moving colour waves: detailed enough to tell frames apart, smooth enough for crf 18."""
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.linspace(0, 1, h).view(1, h, 1)
    x = torch.linspace(0, 1, w).view(1, 1, w)
    r = 0.8 * torch.sin(2 * math.pi * (x + 0.1 * t))
    g = 0.8 * torch.cos(2 * math.pi * (y - 0.1 * t))
    b = 0.7 * (x * y * 2 - 1)
    return torch.stack(torch.broadcast_tensors(r, g, b))


def indexed_clip(frames=12, h=16, w=24):
    """Frame ``i`` is flat grey at level ``-0.9 + 1.8 i / (frames - 1)``, so a read frame names its index."""
    levels = torch.linspace(-0.9, 0.9, frames)
    return levels.view(1, frames, 1, 1).expand(3, frames, h, w).clone()


def indices(frames, total=12):
    levels = frames.mean(dim=(0, 2, 3))
    return [round(v) for v in ((levels + 0.9) / 1.8 * (total - 1)).tolist()]


def chirp(seconds, rate, channels=2):
    """``[channels, samples]`` rising tones (200 Hz + 600 Hz/s): unlike a steady sine, no shift looks aligned."""
    t = torch.arange(round(seconds * rate), dtype=torch.float64) / rate
    return torch.stack([0.5 * torch.sin(2 * math.pi * ((200 + 150 * c) * t + 300 * t**2))
                        for c in range(channels)]).float()


def corr(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def target(tmp_path, kind, name="clip"):
    return tmp_path / (name if kind == "png" else f"{name}.{kind}")


# ------------------------------------------------------------------------------------------ round trips


# measured on this clip: mp4 0.032, webm 0.022 (mostly 4:2:0 chroma on 16x24 saturated waves), gif 0.017
@pytest.mark.parametrize("kind, fps, mae", [("mp4", NTSC, 0.045), ("mp4", 25, 0.045), ("webm", 24, 0.035),
                                             ("gif", 25, 0.025)])
def test_round_trip_lossy(tmp_path, kind, fps, mae):
    clip = smooth_clip()
    path = write_video(target(tmp_path, kind), clip, fps)
    assert path == target(tmp_path, kind) and path.is_file()
    back = read_video(path)
    assert back.frames.shape == clip.shape and back.frames.dtype == torch.float32
    assert back.fps == Fraction(fps) and isinstance(back.fps, Fraction)
    assert back.audio is None
    assert back.frames.min() >= -1 and back.frames.max() <= 1
    assert (back.frames - clip).abs().mean() < mae
    # every frame is closest to its own original (no dropped, repeated or reordered frames)
    err = (back.frames[:, :, None] - clip[:, None]).abs().mean(dim=(0, 3, 4))  # [F read, F written]
    assert err.argmin(dim=1).tolist() == list(range(clip.shape[1]))


def test_round_trip_png_folder_is_exact(tmp_path):
    clip = smooth_clip(frames=5, h=15, w=17)
    path = write_video(tmp_path / "frames", clip, 12)
    assert sorted(p.name for p in path.iterdir()) == [f"{i:06d}.png" for i in range(5)]
    back = read_video(path)
    assert back.frames.shape == clip.shape
    assert (back.frames - clip).abs().max() <= 1 / 255 + 1e-6
    assert back.fps == 24  # PNGs carry no rate: 24 unless given
    assert read_video(path, fps=12).fps == 12 and probe(path, fps=12).fps == 12
    assert write_video(str(tmp_path / "slash") + "/", clip, 12).is_dir()


def test_float_fps_snaps_to_ntsc_and_bad_fps_or_crf_is_refused(tmp_path):
    write_video(tmp_path / "a.mp4", smooth_clip(frames=3), 24000 / 1001)
    assert probe(tmp_path / "a.mp4").fps == NTSC
    for bad in (0, -1, float("nan"), "fast"):
        with pytest.raises(ValueError, match="fps"):
            write_video(tmp_path / "b.mp4", smooth_clip(frames=3), bad)
    for name, crf in (("b.mp4", 52), ("b.webm", -1), ("b.mp4", 18.5)):
        with pytest.raises(ValueError, match="crf"):
            write_video(tmp_path / name, smooth_clip(frames=3), 24, crf=crf)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


@pytest.mark.parametrize("h, w", [(15, 15), (16, 16), (15, 16)])
def test_mp4_odd_sizes_are_padded_by_edge_replication(tmp_path, h, w):
    clip = smooth_clip(frames=4, h=h, w=w)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_video(tmp_path / "a.mp4", clip, 24)
    odd = (h % 2, w % 2) != (0, 0)
    assert len(caught) == odd and (not odd or "padded" in str(caught[0].message))
    back = read_video(tmp_path / "a.mp4").frames
    assert back.shape == (3, 4, h + h % 2, w + w % 2)
    assert (back[:, :, :h, :w] - clip).abs().mean() < 0.045
    if w % 2:  # the added column repeats the last one
        assert (back[:, :, :h, -1] - clip[:, :, :, -1]).abs().mean() < 0.05


def test_webm_and_gif_keep_odd_sizes(tmp_path):
    clip = smooth_clip(frames=3, h=15, w=15)
    for name in ("a.webm", "a.gif"):
        write_video(tmp_path / name, clip, 25)
        assert read_video(tmp_path / name).frames.shape == (3, 3, 15, 15)


def test_gif_warns_when_its_centisecond_delays_cannot_hold_the_rate(tmp_path):
    with pytest.warns(UserWarning, match="stored as 25 fps"):
        write_video(tmp_path / "a.gif", smooth_clip(frames=3), 24)
    assert probe(tmp_path / "a.gif").fps == 25


# ----------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("kind, rate, channels, rate_back", [
    ("mp4", 44100, 2, 44100), ("mp4", 16000, 1, 16000),
    ("mp4", 37800, 2, 48000),  # not an AAC rate: resampled
    ("webm", 48000, 1, 48000), ("webm", 44100, 2, 48000),  # opus decodes at 48 kHz
])
def test_audio_round_trip(tmp_path, kind, rate, channels, rate_back):
    if kind == "webm" and "libopus" not in av.codecs_available:
        pytest.skip("this PyAV build has no opus encoder")
    frames, fps = 8, Fraction(8)
    wave = chirp(1.0, rate, channels)
    path = write_video(tmp_path / f"a.{kind}", smooth_clip(frames), fps, Audio(wave, rate))
    info = probe(path)
    assert info.has_audio and info.audio_channels == channels and info.audio_sample_rate == rate_back
    back = read_video(path).audio
    assert back.sample_rate == rate_back
    assert back.waveform.shape == (channels, rate_back)  # F / fps = 1 s
    assert back.waveform.dtype == torch.float32
    if rate_back != rate:
        wave = F.interpolate(wave[None], size=rate_back, mode="linear")[0]
    assert corr(back.waveform, wave) > 0.95
    assert read_video(path, audio=False).audio is None


def test_audio_is_trimmed_or_padded_to_the_clip(tmp_path):
    rate, fps, frames = 16000, Fraction(8), 8  # 1 s of video
    long = write_video(tmp_path / "long.mp4", smooth_clip(frames), fps, Audio(chirp(2.5, rate), rate))
    with av.open(str(long)) as c:  # the stream itself, not read_video's span
        samples = sum(f.samples for f in c.decode(audio=0))
    assert abs(samples - rate) <= 1024  # one AAC frame of encoder padding at most
    short = write_video(tmp_path / "short.mp4", smooth_clip(frames), fps, Audio(chirp(0.5, rate), rate))
    back = read_video(short).audio.waveform
    assert back.shape[1] == rate
    assert corr(back[:, : rate // 2 - 1024], chirp(0.5, rate)[:, : rate // 2 - 1024]) > 0.95
    assert back[:, rate // 2 + 1024:].abs().max() < 0.02  # the padding is silence


def test_audio_follows_the_span_of_the_kept_frames(tmp_path):
    rate, fps = 16000, Fraction(8)
    wave = chirp(1.5, rate)
    path = write_video(tmp_path / "a.mp4", indexed_clip(12), fps, Audio(wave, rate))
    clip = read_video(path, start=2, stride=2, max_frames=3)  # frames 2, 4, 6: span 2/8 s .. 7/8 s
    assert indices(clip.frames) == [2, 4, 6]
    a, b = 2 * rate // 8, 7 * rate // 8
    assert clip.audio.waveform.shape == (2, b - a)
    assert corr(clip.audio.waveform, wave[:, a:b]) > 0.95
    for shift in (-2000, -100, 100, 2000):  # the alignment is what matters
        assert corr(clip.audio.waveform, wave[:, a + shift:b + shift]) < 0.5


def test_gif_and_png_drop_audio_with_a_warning(tmp_path):
    audio = Audio(chirp(1.0, 16000), 16000)
    for kind in ("gif", "png"):
        with pytest.warns(UserWarning, match="audio was not written"):
            path = write_video(target(tmp_path, kind), smooth_clip(frames=4), 4 if kind == "png" else 25, audio)
        assert read_video(path).audio is None


def test_bad_audio_is_refused_before_writing(tmp_path):
    clip = smooth_clip(frames=4)
    for bad in (Audio(torch.zeros(6, 100), 16000), Audio(torch.zeros(100), 16000), Audio(torch.zeros(2, 100), 0),
                Audio(torch.full((2, 100), float("nan")), 16000)):
        with pytest.raises(ValueError, match="audio"):
            write_video(tmp_path / "a.mp4", clip, 8, bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, vcodec, pix_fmt", [("a.mkv", "libx264", "yuv420p"), ("a.mov", "mpeg4", "yuv420p"),
                                                   ("a.avi", "mjpeg", "yuvj420p")])
def test_reads_other_containers_with_packed_integer_audio(tmp_path, name, vcodec, pix_fmt):
    """Clips made by PyAV directly (not write_video), with 16-bit PCM audio (packed, not float planar)."""
    clip, rate, wave = indexed_clip(6), 16000, chirp(6 / 8, 16000, 1)
    with av.open(str(tmp_path / name), "w") as c:
        v = c.add_stream(vcodec, rate=8)
        v.width, v.height, v.pix_fmt = 24, 16, pix_fmt
        a = c.add_stream("pcm_s16le", rate=rate)
        a.layout = "mono"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(video_write._rgb24(clip[:, i]), format="rgb24")
            frame.pts = i
            c.mux(v.encode(frame))
        sound = av.AudioFrame.from_ndarray((wave.numpy() * 32767).astype("int16"), format="s16", layout="mono")
        sound.sample_rate, sound.pts = rate, 0
        c.mux(a.encode(sound))
        c.mux(v.encode())
        c.mux(a.encode())
    info = probe(tmp_path / name)
    assert (info.frames, info.fps, info.width, info.height, info.audio_channels) == (6, 8, 24, 16, 1)
    back = read_video(tmp_path / name)
    assert indices(back.frames, total=6) == list(range(6))
    assert back.audio.sample_rate == rate and back.audio.waveform.shape == (1, wave.shape[1])
    assert (back.audio.waveform - wave).abs().max() < 1e-3


# ------------------------------------------------------------------------------------------ read options


@pytest.fixture(scope="module")
def indexed_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("indexed")
    clip = indexed_clip(12)
    return {"mp4": write_video(root / "i.mp4", clip, 24), "png": write_video(root / "i", clip, 24)}


@pytest.mark.parametrize("kind", ["mp4", "png"])
@pytest.mark.parametrize("options, expected", [
    ({}, list(range(12))),
    ({"max_frames": 5}, [0, 1, 2, 3, 4]),
    ({"start": 3}, list(range(3, 12))),
    ({"stride": 3}, [0, 3, 6, 9]),
    ({"start": 2, "stride": 4, "max_frames": 2}, [2, 6]),
    ({"start": 11, "max_frames": 4}, [11]),
])
def test_frame_selection(indexed_files, kind, options, expected):
    assert indices(read_video(indexed_files[kind], **options).frames) == expected


@pytest.mark.parametrize("kind", ["mp4", "png"])
def test_resize_options(indexed_files, kind):
    path = indexed_files[kind]
    clip = read_video(path, short_side=8, max_frames=3)  # 16x24 -> 8x12
    assert clip.frames.shape == (3, 3, 8, 12) and indices(clip.frames) == [0, 1, 2]
    clip = read_video(path, size=(20, 7), stride=5)  # up in height, down in width
    assert clip.frames.shape == (3, 3, 20, 7) and indices(clip.frames) == [0, 5, 10]


def test_short_side_of_a_tall_clip_and_area_downsampling(tmp_path):
    clip = torch.randint(0, 256, (3, 2, 24, 16)).float() / 127.5 - 1  # exactly representable in a PNG
    path = write_video(tmp_path / "tall", clip, 24)
    half = read_video(path, short_side=8).frames
    assert half.shape == (3, 2, 12, 8)
    assert torch.allclose(half, F.avg_pool2d(clip, 2), atol=1e-5)  # area average of each 2x2 block
    assert torch.allclose(read_video(path, size=(24, 16)).frames, clip, atol=1e-6)


def test_bad_read_options_are_refused(indexed_files):
    path = indexed_files["mp4"]
    for options in ({"start": -1}, {"stride": 0}, {"max_frames": 0}, {"short_side": 8, "size": (8, 8)},
                    {"short_side": 0}, {"size": (8,)}):
        with pytest.raises(ValueError):
            read_video(path, **options)
    with pytest.raises(ValueError, match=r"start=12 is past the end .*i\.mp4.* 12 frames"):
        read_video(path, start=12)


# ---------------------------------------------------------------------------------------------- probe


@pytest.mark.parametrize("kind, fps", [("mp4", NTSC), ("webm", 24), ("gif", 20), ("png", 24)])
def test_probe(tmp_path, kind, fps):
    path = write_video(target(tmp_path, kind), smooth_clip(frames=7, h=16, w=24), fps)
    info = probe(path)
    assert (info.frames, info.fps, info.width, info.height, info.has_audio) == (7, fps, 24, 16, False)
    assert info.duration == pytest.approx(7 / fps)
    assert (info.audio_channels, info.audio_sample_rate) == (0, 0)


# --------------------------------------------------------------------------------------------- errors


def audio_only_mp4(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(chirp(0.2, 16000, 1).numpy(), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        c.mux(s.encode(frame))
        c.mux(s.encode())
    return path


def bad_files(root):
    (root / "empty.mp4").write_bytes(b"")
    (root / "noise.mp4").write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0))
                                     .to(torch.uint8).numpy().tobytes())
    (root / "noise.webm").write_bytes((root / "noise.mp4").read_bytes())
    (root / "clip.xyz").write_bytes(b"hello")
    (root / "no_pngs").mkdir()
    (root / "no_pngs" / "notes.txt").write_text("not a frame")
    audio_only_mp4(root / "sound_only.mp4")
    return {"empty.mp4": "empty", "noise.mp4": "could not be opened", "noise.webm": "could not be opened",
            "clip.xyz": "'.xyz' is not a supported video format", "no_pngs": "contains no PNG frames",
            "sound_only.mp4": "has no video stream"}


@pytest.mark.parametrize("reader", [probe, read_video])
def test_bad_files_raise_video_error_naming_the_file(tmp_path, reader):
    for name, what in bad_files(tmp_path).items():
        with pytest.raises(VideoError, match=re.escape(name)) as e:
            reader(tmp_path / name)
        assert what in str(e.value), str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        reader(tmp_path / "missing.mp4")


def test_truncated_files(tmp_path):
    """Decision: a truncated file raises VideoError (naming it) when it cannot be opened or a frame cannot be
    decoded; frames before a clean early end are returned. Never a raw PyAV error."""
    for kind in ("mp4", "webm", "gif"):
        full = write_video(tmp_path / f"full.{kind}", smooth_clip(frames=16, h=32, w=32), 25)
        cut = tmp_path / f"cut.{kind}"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        try:
            assert read_video(cut).frames.shape[1] < 16
        except VideoError as e:
            assert "cut." + kind in str(e)
    with pytest.raises(VideoError, match=r"cut\.mp4 could not be opened \(corrupt, truncated"):
        probe(tmp_path / "cut.mp4")  # our mp4s keep their index (moov) at the end: half a file has none


def test_corrupt_png_frame_is_named(tmp_path):
    path = write_video(tmp_path / "frames", smooth_clip(frames=3), 24)
    (path / "000001.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(VideoError, match="000001.png"):
        read_video(path)


@pytest.mark.parametrize("name", ["clip.mov", "clip.xyz"])
def test_unwritable_formats(tmp_path, name):
    with pytest.raises(VideoError, match=re.escape(name)):
        write_video(tmp_path / name, smooth_clip(frames=2), 24)
    assert list(tmp_path.iterdir()) == []


def test_bad_frames_are_refused_before_writing(tmp_path):
    clip = smooth_clip(frames=4)
    with pytest.raises(ValueError, match=r"\[3, F, H, W\]"):
        write_video(tmp_path / "a.mp4", clip.permute(1, 2, 3, 0), 24)  # [F, H, W, 3]
    with pytest.raises(ValueError, match="float"):
        write_video(tmp_path / "a.mp4", (clip > 0).to(torch.uint8), 24)
    clip[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_video(tmp_path / "a.mp4", clip, 24)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("kind", ["mp4", "webm", "gif", "png"])
def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, kind, monkeypatch):
    path = target(tmp_path, kind)
    write_video(path, indexed_clip(4), 25)
    before = sorted((p.name, p.read_bytes()) for p in ([path] if path.is_file() else path.iterdir()))

    real, calls = video_write._rgb24, []

    def fail_on_second_frame(frame):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("encoder exploded")
        return real(frame)

    monkeypatch.setattr(video_write, "_rgb24", fail_on_second_frame)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        write_video(path, smooth_clip(frames=4), 25)
    assert len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file or folder left
    after = sorted((p.name, p.read_bytes()) for p in ([path] if path.is_file() else path.iterdir()))
    assert after == before


def test_writes_go_through_a_hidden_temp_name_in_the_same_folder(tmp_path, monkeypatch):
    renames, real = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((a, b)), real(a, b)))
    write_video(tmp_path / "clip.mp4", smooth_clip(frames=2), 24)
    write_video(tmp_path / "sub" / "frames", smooth_clip(frames=2), 24)  # missing parents are made
    (src, dst), (src2, dst2) = renames
    assert dst == tmp_path / "clip.mp4" and src.parent == tmp_path
    assert re.fullmatch(r"\.clip\..+\.tmp\.mp4", src.name), src.name
    assert dst2 == tmp_path / "sub" / "frames" and src2.parent == dst2.parent and src2.name.startswith(".")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "sub"]


def test_png_folder_rewrite_replaces_old_frames_but_never_other_files(tmp_path):
    path = write_video(tmp_path / "frames", smooth_clip(frames=5), 24)
    write_video(path, smooth_clip(frames=2), 24)
    assert sorted(p.name for p in path.iterdir()) == ["000000.png", "000001.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]
    (path / "keep.txt").write_text("mine")
    with pytest.raises(VideoError, match="other than PNG frames"):
        write_video(path, smooth_clip(frames=3), 24)
    assert (path / "keep.txt").read_text() == "mine" and len(list(path.iterdir())) == 3


# ------------------------------------------------------------------------------------------- vdm info


def test_cli_info(tmp_path, capsys):
    path = write_video(tmp_path / "clip.mp4", smooth_clip(frames=8), NTSC, Audio(chirp(1.0, 44100), 44100))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for fact in ("clip.mp4", "frames    8", "24000/1001 (23.976)", "24x16", "0.334 s", "yes (2 channels, 44100 Hz)"):
        assert fact in out, out
    frames = write_video(tmp_path / "frames", smooth_clip(frames=3), 24)
    assert main(["info", str(frames)]) == 0
    assert "audio     no" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["noise.mp4", "missing.mp4", "no_pngs"])
def test_cli_info_bad_file(tmp_path, capsys, name):
    bad_files(tmp_path)
    assert main(["info", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and name in err and "Traceback" not in err
