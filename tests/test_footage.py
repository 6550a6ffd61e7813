"""The user's footage as training data: windows of a folder of clips, stacks of stills, the two mixed; how
items are shared by ranks and workers; one clear message per bad folder."""
import dataclasses
import itertools
import re

import pytest
import torch
from PIL import Image

from vdm_core.distributed import BatchPositions
from vdm_core.footage import ClipFolder, ImageFolder, WithImages
from vdm_core.video_write import write_video


def _ramp_clip(frames, h, w, base=-0.8):
    """Uniform grey frames whose level rises 0.1 a frame: frame k is ``base + 0.1·k`` everywhere."""
    levels = base + 0.1 * torch.arange(frames, dtype=torch.float32)
    return levels[None, :, None, None].expand(3, frames, h, w).contiguous()


def test_clip_folder_yields_windows(tmp_path):
    write_video(tmp_path / "short.mp4", _ramp_clip(5, 20, 24), fps=8)
    write_video(tmp_path / "long.mp4", _ramp_clip(14, 20, 24), fps=8)
    (tmp_path / "notes.txt").write_text("not a clip")
    data = ClipFolder(tmp_path, size=8, frames=4, stride=2, seed=0)
    assert [p.name for p, _ in data.clips] == ["long.mp4"]  # 5 frames < the 7 a window spans
    assert [(p.name, why) for p, why in data.skipped] == [("short.mp4", "5 frames, fewer than the 7 a window spans")]
    items = [data[n] for n in range(6)]
    for x in items:
        assert x.shape == (3, 4, 8, 8) and x.min() >= -1 and x.max() <= 1
        levels = x.mean(dim=(0, 2, 3))
        assert torch.allclose(levels[1:] - levels[:-1], torch.full((3,), 0.2), atol=0.03)  # every 2nd frame
        start = round((levels[0].item() + 0.8) / 0.1)
        assert 0 <= start <= 14 - 7
    starts = {round((x.mean(dim=(0, 2, 3))[0].item() + 0.8) / 0.1) for x in items}
    assert len(starts) > 1  # windows start at random frames
    again = ClipFolder(tmp_path, size=8, frames=4, stride=2, seed=0)
    assert all(torch.equal(again[n], items[n]) for n in (5, 0, 3))  # item n alone, in any order


def test_crops_random_and_centre(tmp_path):
    frame = torch.linspace(-1, 1, 24)[None, None, None, :].expand(3, 4, 8, 24).contiguous()  # a horizontal ramp
    write_video(tmp_path / "wide.mp4", frame, fps=8)
    centre = ClipFolder(tmp_path, size=8, frames=2, crop="centre")
    assert all(torch.allclose(centre[n], centre[0], atol=1e-6) for n in range(4))
    middle = frame[:, :2, :, 8:16]
    assert (centre[0] - middle).abs().mean() < 0.03
    random_crops = ClipFolder(tmp_path, size=8, frames=2, crop="random")
    lefts = {round(random_crops[n][0, 0, 0, 0].item(), 2) for n in range(12)}
    assert len(lefts) > 3


def test_an_epoch_visits_every_clip_once_across_ranks_and_workers(tmp_path):
    """Positions are split between ranks (and their DataLoader workers); each run of N positions (an epoch)
    reads each of the N clips once, and the items are those one process would read."""
    colours = [-0.9, -0.5, -0.1, 0.3, 0.7]
    for i, c in enumerate(colours):
        write_video(tmp_path / f"c{i}.mp4", torch.full((3, 6, 8, 8), c), fps=8)
    data = ClipFolder(tmp_path, size=8, frames=2, seed=4)
    batches = []
    for rank in range(2):
        loader = torch.utils.data.DataLoader(data, batch_sampler=BatchPositions(0, 4, rank, 2, 1), num_workers=2)
        batches.append(list(itertools.islice(iter(loader), 5)))  # 5 steps: 20 positions, 4 epochs
    seen = torch.cat([torch.cat([batches[0][s], batches[1][s]]) for s in range(5)])
    assert torch.equal(seen, torch.stack([data[n] for n in range(20)]))
    which = [min(range(5), key=lambda i: abs(x.mean().item() - colours[i])) for x in seen]
    for epoch in range(4):
        assert sorted(which[5 * epoch:5 * epoch + 5]) == [0, 1, 2, 3, 4], which
    assert which[:5] != which[5:10] or which[5:10] != which[10:15]  # each epoch in its own order


def test_held_out_clips(tmp_path):
    for i in range(8):
        write_video(tmp_path / f"clip{i}.mp4", _ramp_clip(6, 8, 8), fps=8)
    train = ClipFolder(tmp_path, size=8, frames=4, split="train", val_fraction=0.25)
    val = ClipFolder(tmp_path, size=8, frames=4, split="val", val_fraction=0.25)
    every = ClipFolder(tmp_path, size=8, frames=4)
    names = lambda d: {p.name for p, _ in d.clips}  # noqa: E731
    assert names(train) | names(val) == names(every) and not names(train) & names(val)
    assert len(names(val)) >= 1 and len(names(train)) >= 1
    write_video(tmp_path / "new.mp4", _ramp_clip(6, 8, 8), fps=8)  # adding a clip moves no held-out clip
    assert names(val) <= names(ClipFolder(tmp_path, size=8, frames=4, split="val", val_fraction=0.25)) | {"new.mp4"}
    one = tmp_path / "one"
    write_video(one / "a.mp4", _ramp_clip(6, 8, 8), fps=8)
    with pytest.raises(ValueError, match=r"1 usable clip\(s\): too few to hold 25% out for validation"):
        ClipFolder(one, size=8, frames=4, split="train", val_fraction=0.25)


def test_clip_folder_copes_with_a_header_that_claims_too_many_frames(tmp_path, monkeypatch):
    from vdm_core import video_io

    write_video(tmp_path / "a.mp4", _ramp_clip(8, 16, 16), fps=8)
    real = video_io.probe
    monkeypatch.setattr(video_io, "probe", lambda p, **kw: dataclasses.replace(real(p, **kw), frames=30))
    data = ClipFolder(tmp_path, size=8, frames=4, seed=0)
    assert data.clips[0][1] == 30
    items = [data[n] for n in range(8)]
    assert all(x.shape == (3, 4, 8, 8) for x in items)  # short reads are retried, never yielded
    write_video(tmp_path / "a.mp4", _ramp_clip(3, 16, 16), fps=8)
    with pytest.raises(ValueError, match="claim more frames than they hold"):
        ClipFolder(tmp_path, size=8, frames=4, seed=0)[0]


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    write_video(tmp_path / "good.mp4", _ramp_clip(6, 8, 8), fps=8)
    (tmp_path / "broken.mp4").write_bytes(b"\x00not a video at all" * 50)
    (tmp_path / "empty.webm").write_bytes(b"")
    (tmp_path / ".hidden.mp4").write_bytes(b"junk")  # hidden names (partial downloads, our temp files) are not clips
    data = ClipFolder(tmp_path, size=8, frames=4)
    assert [p.name for p, _ in data.clips] == ["good.mp4"]
    assert [p.name for p, _ in data.skipped] == ["broken.mp4", "empty.webm"]
    assert all(why.startswith("unreadable: ") for _, why in data.skipped)
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}: 1 clip\(s\), 2 file\(s\) skipped \(broken\.mp4: unreadable: "
                        r".*; empty\.webm: unreadable: .*0 bytes.*\)", data.summary())
    (tmp_path / "good.mp4").unlink()
    with pytest.raises(ValueError, match=r"no clip in .* has the 4 frames .*: broken\.mp4: unreadable: .*; "
                                         r"empty\.webm: unreadable"):
        ClipFolder(tmp_path, size=8, frames=4)


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="training clips folder .*nowhere does not exist"):
        ClipFolder(tmp_path / "nowhere", size=8, frames=4)
    (tmp_path / "file.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"file\.mp4 is a file; give the folder"):
        ClipFolder(tmp_path / "file.mp4", size=8, frames=4)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no clips here")
    with pytest.raises(ValueError, match=r"holds no \.mp4/\.webm/\.gif/\.mov/\.mkv/\.avi file"):
        ClipFolder(tmp_path / "docs", size=8, frames=4)
    write_video(tmp_path / "short" / "a.mp4", _ramp_clip(5, 16, 16), fps=8)
    with pytest.raises(ValueError, match=r"no clip in .* has the 9 frames a training window needs "
                                         r"\(frames=5, stride=2\): a\.mp4: 5 frames, fewer than the 9"):
        ClipFolder(tmp_path / "short", size=8, frames=5, stride=2)
    with pytest.raises(ValueError, match="holds no .png/.jpg"):
        ImageFolder(tmp_path / "docs", size=8, frames=2)


def _stills(folder, colours):
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(colours):
        Image.new("RGB", (12, 10), (c, 255 - c, 128)).save(folder / f"s{i}.png")


def test_image_folder_stacks_independent_stills(tmp_path):
    colours = [0, 40, 80, 120, 160, 200]
    _stills(tmp_path, colours)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    data = ImageFolder(tmp_path, size=8, frames=4, seed=0)
    assert len(data.images) == 6 and [p.name for p, _ in data.skipped] == ["bad.jpg"]
    stacks = [data[n] for n in range(3)]  # 12 stills: two epochs of the six
    reds = []
    for x in stacks:
        assert x.shape == (3, 4, 8, 8)
        for f in range(4):
            still = x[:, f]
            assert torch.allclose(still, still[:, :1, :1].expand_as(still), atol=1e-6)  # one uniform image each
            reds.append(round((still[0, 0, 0].item() + 1) * 127.5))
    assert sorted(reds[:6]) == colours and sorted(reds[6:]) == colours
    assert torch.equal(ImageFolder(tmp_path, size=8, frames=4, seed=0)[2], stacks[2])


def test_with_images_mixes_at_the_ratio(tmp_path):
    _stills(tmp_path, [0, 100, 200])
    clips = [torch.zeros(3, 2, 8, 8)] * 400
    mixed = WithImages(clips, ImageFolder(tmp_path, size=8, frames=2), ratio=0.3, seed=1)
    flags = [mixed[n][1] for n in range(400)]
    assert 0.22 < sum(flags) / 400 < 0.38
    for n in range(20):
        x, is_image = mixed[n]
        assert is_image == bool(x.abs().sum() > 0)  # the stills are not black, the stand-in clips are
    with pytest.raises(ValueError, match="image_ratio must be between 0 and 1"):
        WithImages(clips, ImageFolder(tmp_path, size=8, frames=2), ratio=1.0)
