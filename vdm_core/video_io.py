"""Read and write clips: mp4 (h264), webm (vp9), gif and folders of PNG frames; also read mov/mkv/avi.

Frames are ``[3, F, H, W]`` float32 in [-1, 1]; audio is ``[channels, samples]`` float32 in [-1, 1].
Containers go through PyAV, PNG folders through Pillow. Reading decodes one frame at a time and
resizes it on arrival, so a long clip is never whole in memory. Writing is atomic: the file (or
folder) is written under a hidden temporary name next to the target and renamed into place only
when complete, so a failed write leaves nothing behind.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .files import atomic_path

READ_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
WRITE_SUFFIXES = (".mp4", ".webm", ".gif")
FOLDER_FPS = Fraction(24)  # PNG frames carry no frame rate
_FRAME_NAME = re.compile(r"\d{6}\.png")
# swscale's default YUV 4:2:0 <-> RGB path repeats chroma samples; these flags interpolate them instead
# (lossless-codec round trip of a 16x24 colour clip: mean error 0.063 -> 0.013). PyAV versions without the
# option flags get bicubic alone.
_Interp = av.video.reformatter.Interpolation
_ACCURATE = hasattr(_Interp, "ACCURATE_RND") and hasattr(_Interp, "FULL_CHR_H_INT")
_TO_RGB = _Interp.BICUBIC | _Interp.FULL_CHR_H_INT | _Interp.ACCURATE_RND if _ACCURATE else "BICUBIC"
_TO_YUV = _Interp.BICUBIC | _Interp.ACCURATE_RND if _ACCURATE else "BICUBIC"


class VideoError(ValueError):
    """A clip that is corrupt, empty or in an unsupported format."""


@dataclass
class Audio:
    waveform: Tensor  # [channels, samples] float32 in [-1, 1]
    sample_rate: int


@dataclass
class Clip:
    frames: Tensor  # [3, F, H, W] float32 in [-1, 1]
    fps: Fraction
    audio: Audio | None


@dataclass
class VideoInfo:
    frames: int
    fps: Fraction
    width: int
    height: int
    has_audio: bool
    duration: float  # frames / fps, seconds
    audio_channels: int = 0
    audio_sample_rate: int = 0


# ----------------------------------------------------------------------------------------- reading


def probe(path, *, fps=None) -> VideoInfo:
    """Frame count, rate, size and audio of a clip from its metadata, without decoding its frames.

    Where the container does not store a frame count, the video packets are counted (demuxed, not
    decoded). ``fps`` is the rate assumed for a folder of PNGs (default 24); containers carry their own.
    """
    src = _source(path)
    if src.is_dir():
        files = _png_files(src)
        width, height = _png(files[0]).size
        rate = _fps(fps) if fps is not None else FOLDER_FPS
        return VideoInfo(len(files), rate, width, height, False, float(len(files) / rate))
    with _open(src) as container:
        stream = container.streams.video[0]
        n = stream.frames or _count_packets(container, stream, src)
        if n == 0:
            raise VideoError(f"{src} contains no frames; re-export the clip")
        rate = _stream_rate(stream)
        ctx = stream.codec_context
        channels = sample_rate = 0
        if container.streams.audio:
            actx = container.streams.audio[0].codec_context
            channels, sample_rate = actx.channels, actx.sample_rate
        return VideoInfo(n, rate, ctx.width, ctx.height, bool(container.streams.audio), float(n / rate),
                         channels, sample_rate)


def read_video(path, *, start=0, max_frames=None, stride=1, short_side=None, size=None, audio=True,
               fps=None) -> Clip:
    """Frames ``start, start + stride, ...`` (at most ``max_frames``) of a clip as ``[3, F, H, W]`` in [-1, 1].

    Each frame is resized as it is decoded: ``short_side`` keeps the aspect ratio and gives the short
    side that many pixels, ``size=(H, W)`` is exact. Shrinking averages areas (box filter, like the
    upscale job's downsampling); enlarging is antialiased bilinear. With ``audio`` the clip's sound
    from the start of the first kept frame to the end of the last is returned (zeros where the audio
    stream has none; with ``stride > 1`` the whole span, not only the kept frames' moments).
    ``fps`` is the rate assumed for a folder of PNGs (default 24); containers carry their own.
    Frames before ``start`` are decoded and dropped rather than sought, so indices are exact in every
    container (a late start costs decoding time, not memory).
    """
    if start < 0 or stride < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"need start >= 0, stride >= 1 and max_frames >= 1 (or None); got start={start}, "
                         f"stride={stride}, max_frames={max_frames}")
    if short_side is not None and size is not None:
        raise ValueError("give short_side or size, not both")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1 pixel, got {short_side}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (height, width) in pixels, got {size}")
    src = _source(path)
    kept, t0, total, sound = [], None, 0, None

    def keep(i: int, rgb: np.ndarray) -> bool:  # True when enough frames are kept
        frame = _resize(torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1, short_side, size)
        if kept and frame.shape != kept[0].shape:
            raise VideoError(f"{src}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]} (width x height) but earlier "
                             f"frames were not; pass size=(H, W) to bring every frame to one size")
        kept.append(frame)
        return len(kept) == max_frames

    wanted = lambda i: i >= start and (i - start) % stride == 0  # noqa: E731
    if src.is_dir():
        rate = _fps(fps) if fps is not None else FOLDER_FPS
        files = _png_files(src)
        total = len(files)
        for i, file in enumerate(files):
            if wanted(i) and keep(i, np.array(_png(file, load=True))):
                break
    else:
        with _open(src) as container:
            stream = container.streams.video[0]
            rate = _stream_rate(stream)
            offset = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            has_audio = bool(container.streams.audio)
            for i, frame in enumerate(_decode(container, stream, src)):
                total = i + 1
                if wanted(i):
                    if t0 is None:
                        t0 = frame.time if frame.time is not None else offset + float(i / rate)
                    if keep(i, frame.to_ndarray(format="rgb24", interpolation=_TO_RGB)):
                        break
        if kept and audio and has_audio:
            span = ((len(kept) - 1) * stride + 1) / rate  # frame-index span: robust to rounded timestamps
            sound = _read_audio(src, t0, t0 + float(span))
    if not kept:
        if total == 0:
            raise VideoError(f"{src} contains no frames; re-export the clip")
        raise ValueError(f"start={start} is past the end of {src}, which has {total} frames")
    return Clip(torch.stack(kept, dim=1), rate, sound)


def _source(path) -> Path:
    """The path to read, checked: a folder of PNGs or an existing file with a readable extension."""
    src = Path(path)
    if src.is_dir():
        return src
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    if src.suffix.lower() not in READ_SUFFIXES:
        raise VideoError(f"{src}: {src.suffix or 'no extension'!r} is not a supported video format; use .mp4, "
                         f".webm, .gif, .mov, .mkv, .avi or a folder of PNGs")
    if src.stat().st_size == 0:
        raise VideoError(f"{src} is empty (0 bytes); re-export or re-download it")
    return src


def _open(src: Path):
    """The opened container, checked to hold a video stream."""
    try:
        container = av.open(str(src))
    except av.error.FFmpegError as e:
        raise VideoError(f"{src} could not be opened (corrupt, truncated or not a video?): {_why(e)}") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{src} has no video stream")
    return container


def _decode(container, stream, src: Path):
    """Decoded frames of ``stream``, one at a time; decoder errors become ``VideoError``."""
    stream.thread_type = "AUTO"
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except av.error.FFmpegError as e:
        raise VideoError(f"{src} could not be decoded (corrupt or truncated?): {_why(e)}") from e


def _why(e: Exception) -> str:
    return e.strerror or str(e)


def _count_packets(container, stream, src: Path) -> int:
    try:
        return sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as e:
        raise VideoError(f"{src} could not be read (corrupt or truncated?): {_why(e)}") from e


def _stream_rate(stream) -> Fraction:
    """The stream's frame rate; a rate within 1e-6 of one with denominator <= 1001 is snapped to it."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        return FOLDER_FPS
    rate = Fraction(rate)
    nice = rate.limit_denominator(1001)
    return nice if abs(nice - rate) <= rate * Fraction(1, 10**6) else rate


def _read_audio(src: Path, t0: float, t1: float) -> Audio:
    """The first audio stream from ``t0`` to ``t1`` seconds (stream time), zeros where it has no samples."""
    with av.open(str(src)) as container:
        stream = container.streams.audio[0]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        n = round((t1 - t0) * rate)
        out = np.zeros((channels, n), np.float32)
        at = None  # sample index (relative to t0) where the next frame starts
        slack = float(stream.time_base or 0) * rate + 1  # timestamp resolution, in samples
        for frame in _decode(container, stream, src):
            if frame.time is not None:  # follow timestamps across real gaps, not across their rounding
                stamp = round((frame.time - t0) * rate)
                at = stamp if at is None or abs(stamp - at) > slack else at
            at = 0 if at is None else at
            if at >= n:
                break
            x = _samples(frame)
            c, lo, hi = min(channels, x.shape[0]), max(0, -at), min(x.shape[1], n - at)
            if lo < hi:
                out[:c, at + lo:at + hi] = x[:c, lo:hi]
            at += x.shape[1]
    return Audio(torch.from_numpy(out), rate)


def _samples(frame) -> np.ndarray:
    """An audio frame as ``[channels, samples]`` float32 in [-1, 1], whatever its sample format."""
    x = frame.to_ndarray()
    if not frame.format.is_planar:
        x = x.reshape(-1, frame.layout.nb_channels).T
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128) / 128
    return (x / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)


def _png_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise VideoError(f"folder {folder} contains no PNG frames; put frames named 000000.png, 000001.png, "
                         f"... in it or give a video file")
    return files


def _png(file: Path, load: bool = False) -> Image.Image:
    """The PNG's header (``load=False``: size only) or its pixels as RGB."""
    try:
        with Image.open(file) as img:
            return img.convert("RGB") if load else img
    except OSError as e:
        raise VideoError(f"{file} is not a readable PNG (corrupt or truncated?): {_why(e)}") from e


def _resize(frame: Tensor, short_side: int | None, size: tuple[int, int] | None) -> Tensor:
    """``[3, H, W]`` resized to ``size`` or to ``short_side`` pixels on its short side (aspect kept)."""
    h, w = frame.shape[-2:]
    if short_side is not None:
        size = (short_side, max(1, round(w * short_side / h))) if h <= w else (max(1, round(h * short_side / w)),
                                                                             short_side)
    if size is None or tuple(size) == (h, w):
        return frame
    if size[0] <= h and size[1] <= w:
        return F.interpolate(frame[None], size=tuple(size), mode="area")[0]
    return F.interpolate(frame[None], size=tuple(size), mode="bilinear", antialias=True, align_corners=False)[0]


# ----------------------------------------------------------------------------------------- writing


def write_video(path, frames: Tensor, fps, audio: Audio | None = None, *, crf: int = 18) -> Path:
    """Write ``frames`` ``[3, F, H, W]`` in [-1, 1] (clamped) at ``fps`` frames per second; returns the path.

    The format follows the extension: ``.mp4`` (h264 yuv420p, odd sizes padded to even by repeating
    the edge pixels), ``.webm`` (vp9), ``.gif`` (a palette per frame, loops forever), or a path with no
    extension / ending in '/' for a folder of ``000000.png, 000001.png, ...``. ``crf`` is the h264/vp9
    quality (lower is better). ``audio`` is trimmed or zero-padded to exactly F / fps seconds and
    encoded as aac (mp4; at its own sample rate where AAC has it, else resampled to 48 kHz) or opus
    (webm; opus always decodes at 48 kHz); gif and PNG folders drop it with a warning.
    """
    target, kind = output_target(path)
    frames = _check_frames(frames, target)
    rate = _fps(fps)
    top = {"mp4": 51, "webm": 63}.get(kind)
    if top is not None and not (isinstance(crf, int) and 0 <= crf <= top):
        raise ValueError(f"crf for {target} must be a whole number from 0 (best) to {top}, got {crf!r}")
    if audio is not None:
        audio = _check_audio(audio, target)
        if kind in ("gif", "png"):
            warnings.warn(f"{target}: {'GIF' if kind == 'gif' else 'a folder of PNGs'} cannot hold audio; "
                          f"the audio was not written (use .mp4 or .webm to keep it)", stacklevel=2)
            audio = None
    with atomic_path(target) as tmp:
        if kind == "png":
            tmp.mkdir()
            for i in range(frames.shape[1]):
                Image.fromarray(_rgb24(frames[:, i])).save(tmp / f"{i:06d}.png")
        else:
            _encode(tmp, kind, frames, rate, audio, crf, target)
    return target


def output_target(path) -> tuple[Path, str]:
    """The path :func:`write_video` would write and its kind: 'mp4', 'webm', 'gif' or 'png' (a folder of
    frames). Raises :class:`VideoError` for a target it would refuse, so a caller can check before
    spending compute on what it writes."""
    text = os.fspath(path)
    target = Path(text)
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise VideoError(f"{target}: {parent} is a file, not a folder; choose an output path in a folder")
            break
    if text.endswith(("/", os.sep)) or target.suffix == "" or target.is_dir():
        if target.exists() and not target.is_dir():
            raise VideoError(f"{target} is a file; give a folder path to write PNG frames")
        if target.is_dir() and any(not _FRAME_NAME.fullmatch(p.name) for p in target.iterdir()):
            raise VideoError(f"folder {target} holds files other than PNG frames; write to a new or "
                             f"empty folder (only frame folders written earlier are replaced)")
        return target, "png"
    suffix = target.suffix.lower()
    if suffix in WRITE_SUFFIXES:
        return target, suffix[1:]
    if suffix in READ_SUFFIXES:
        raise VideoError(f"{target}: {suffix!r} can be read but not written; write .mp4, .webm, .gif or a folder")
    raise VideoError(f"{target}: {suffix!r} is not a supported video format; use .mp4, .webm, .gif or a "
                     f"folder of PNGs")


def _fps(fps) -> Fraction:
    """A frame rate as a Fraction; floats are snapped to denominators <= 1001 (23.976.. -> 24000/1001)."""
    if isinstance(fps, float):
        if not np.isfinite(fps):
            raise ValueError(f"fps must be a positive number, got {fps}")
        fps = Fraction(fps).limit_denominator(1001)
    try:
        fps = Fraction(fps)
    except (TypeError, ValueError) as e:
        raise ValueError(f"fps must be a positive number (int, float or Fraction), got {fps!r}") from e
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return fps


def _check_frames(frames, target: Path) -> Tensor:
    if not isinstance(frames, Tensor) or frames.ndim != 4 or frames.shape[0] != 3 or 0 in frames.shape:
        shape = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
        raise ValueError(f"writing {target} needs frames [3, F, H, W] (channels first, F >= 1) in [-1, 1]; got "
                         f"{shape}. A ComfyUI IMAGE [F, H, W, 3] in [0, 1] is image.permute(3, 0, 1, 2) * 2 - 1")
    if not frames.is_floating_point():
        raise ValueError(f"writing {target} needs float frames in [-1, 1]; got {frames.dtype}")
    frames = frames.detach()
    if not torch.isfinite(frames).all():
        raise ValueError(f"frames for {target} contain NaN or infinite values; nothing was written "
                         f"(the model or sampler produced invalid values)")
    return frames


def _check_audio(audio: Audio, target: Path) -> Audio:
    wave = audio.waveform
    if not isinstance(wave, Tensor) or wave.ndim != 2 or wave.shape[0] not in (1, 2) or wave.shape[1] == 0:
        shape = tuple(wave.shape) if hasattr(wave, "shape") else type(wave).__name__
        raise ValueError(f"audio for {target} must be a waveform [channels, samples] with 1 (mono) or 2 "
                         f"(stereo) channels; got {shape}")
    if int(audio.sample_rate) <= 0:
        raise ValueError(f"audio for {target} has sample rate {audio.sample_rate}; it must be positive")
    if not torch.isfinite(wave).all():
        raise ValueError(f"audio for {target} contains NaN or infinite values; nothing was written")
    return Audio(wave.detach().to("cpu", torch.float32).clamp(-1, 1), int(audio.sample_rate))


def _rgb24(frame: Tensor) -> np.ndarray:
    """``[3, H, W]`` in [-1, 1] -> ``[H, W, 3]`` uint8."""
    x = ((frame.to("cpu", torch.float32).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).contiguous().numpy()


_VIDEO_CODEC = {"mp4": ("libx264", "yuv420p"), "webm": ("libvpx-vp9", "yuv420p"), "gif": ("gif", "pal8")}
_AUDIO_CODEC = {"mp4": "aac", "webm": "libopus"}


def _encode(tmp: Path, kind: str, frames: Tensor, rate: Fraction, audio: Audio | None, crf: int,
            target: Path) -> None:
    """Encode frames (and audio, in step with them) into the container at ``tmp``."""
    _, n, h, w = frames.shape
    codec, pix_fmt = _VIDEO_CODEC[kind]
    pad_h, pad_w = (h % 2, w % 2) if kind == "mp4" else (0, 0)
    if pad_h or pad_w:
        warnings.warn(f"{target}: h264 (yuv420p) needs even sizes; {w}x{h} was padded to {w + pad_w}x{h + pad_h} "
                      f"by repeating the edge pixels", stacklevel=3)
    options = {"mp4": {"crf": str(crf), "x264-params": "chromaloc=1"},  # centre-sited chroma, as swscale makes it
               "webm": {"crf": str(crf), "b": "0"}, "gif": {}}[kind]
    if kind == "gif" and (100 / rate).denominator != 1:
        stored = Fraction(100, max(1, round(100 / rate)))
        warnings.warn(f"{target}: GIF frame delays are whole 1/100 s, so {rate} fps is stored as {stored} fps "
                      f"(use 10, 20, 25 or 50 fps for exact timing)", stacklevel=3)
    with av.open(str(tmp), "w", format=kind, options={"loop": "0"} if kind == "gif" else {}) as container:
        video = container.add_stream(codec, rate=rate, options=options)
        video.width, video.height, video.pix_fmt = w + pad_w, h + pad_h, pix_fmt
        video.codec_context.time_base = 1 / rate
        sound, layout = None, None
        if audio is not None:
            sound, layout = _add_audio_stream(container, _AUDIO_CODEC[kind], audio)
            samples = round(n / rate * audio.sample_rate)  # exactly the clip's length
            wave = F.pad(audio.waveform[:, :samples], (0, max(0, samples - audio.waveform.shape[1]))).numpy()
        for i in range(n):
            rgb = _rgb24(frames[:, i])
            if pad_h or pad_w:
                rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            if kind == "gif":
                frame = _gif_frame(rgb)
            else:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt, interpolation=_TO_YUV)
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(video.encode(frame))
            if sound is not None:  # this frame's share of the audio, so the streams stay interleaved
                a, b = round(i / rate * audio.sample_rate), round((i + 1) / rate * audio.sample_rate)
                if b > a:
                    chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, a:b]), format="fltp",
                                                       layout=layout)
                    chunk.sample_rate, chunk.pts, chunk.time_base = audio.sample_rate, a, Fraction(1, audio.sample_rate)
                    container.mux(sound.encode(chunk))
        container.mux(video.encode())
        if sound is not None:
            container.mux(sound.encode())


def _add_audio_stream(container, codec: str, audio: Audio):
    """An audio stream for ``audio``: its own sample rate where the codec takes it, else 48 kHz."""
    rates = av.Codec(codec, "w").audio_rates
    rate = audio.sample_rate if not rates or audio.sample_rate in rates else 48000
    layout = "mono" if audio.waveform.shape[0] == 1 else "stereo"
    stream = container.add_stream(codec, rate=rate)
    stream.layout = layout
    return stream, layout


def _gif_frame(rgb: np.ndarray) -> av.VideoFrame:
    """A pal8 frame with this frame's own 256-colour palette (median cut, no dithering: no flicker)."""
    img = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    colours = np.zeros((256, 3), np.uint8)
    pal = np.array(img.getpalette(), np.uint8).reshape(-1, 3)[:256]
    colours[: len(pal)] = pal
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), colours], axis=1)
    return av.VideoFrame.from_ndarray((np.array(img, np.uint8), argb), format="pal8")
