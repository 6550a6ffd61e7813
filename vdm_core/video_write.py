"""Write clips: mp4 (h264), webm (vp9), gif and folders of PNG frames (reading: ``vdm_core.video_io``).

Frames are ``[3, F, H, W]`` float32 in [-1, 1]; audio is ``[channels, samples]`` float32 in [-1, 1].
Writing is atomic: the file (or folder) is written under a hidden temporary name next to the target and
renamed into place only when complete, so a failed write leaves nothing behind.
"""
from __future__ import annotations

import os
import re
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .files import atomic_path
from .video_io import ACCURATE, INTERPOLATION, READ_SUFFIXES, Audio, VideoError, as_fps

WRITE_SUFFIXES = (".mp4", ".webm", ".gif")
FRAME_NAME = re.compile(r"\d{6}\.png")
"""Names of the frames in a folder of PNG frames."""
_TO_YUV = INTERPOLATION.BICUBIC | INTERPOLATION.ACCURATE_RND if ACCURATE else "BICUBIC"


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
    rate = as_fps(fps)
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
        if target.is_dir() and any(not FRAME_NAME.fullmatch(p.name) for p in target.iterdir()):
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
