"""Read clips: mp4, webm, gif, mov, mkv, avi and folders of PNG frames (writing: ``vdm_core.video_write``).

Frames are ``[3, F, H, W]`` float32 in [-1, 1]; audio is ``[channels, samples]`` float32 in [-1, 1].
Containers go through PyAV, PNG folders through Pillow. Reading decodes one frame at a time and
resizes it on arrival, so a long clip is never whole in memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


READ_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
FOLDER_FPS = Fraction(24)  # PNG frames carry no frame rate
# swscale's default YUV 4:2:0 <-> RGB path repeats chroma samples; these flags interpolate them instead
# (lossless-codec round trip of a 16x24 colour clip: mean error 0.063 -> 0.013). PyAV versions without the
# option flags get bicubic alone.
INTERPOLATION = av.video.reformatter.Interpolation
ACCURATE = hasattr(INTERPOLATION, "ACCURATE_RND") and hasattr(INTERPOLATION, "FULL_CHR_H_INT")
_TO_RGB = INTERPOLATION.BICUBIC | INTERPOLATION.FULL_CHR_H_INT | INTERPOLATION.ACCURATE_RND if ACCURATE else "BICUBIC"


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


def as_fps(fps) -> Fraction:
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
        rate = as_fps(fps) if fps is not None else FOLDER_FPS
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
        rate = as_fps(fps) if fps is not None else FOLDER_FPS
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
