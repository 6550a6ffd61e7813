"""The independent test set (benchmarks/independent_scenes.py): its own renderer, seeded, with ground truth
the metrics can trust, and the quality benchmark reporting both test sets side by side."""
import ast
import sys
from pathlib import Path

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from independent_scenes import BACKGROUNDS, SHAPES, independent_clip, independent_set  # noqa: E402

from vdm_core.metrics import object_errors  # noqa: E402


def test_renderer_shares_no_code_with_the_training_generators():
    tree = ast.parse((BENCHMARKS / "independent_scenes.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported == {"__future__", "dataclasses", "numpy", "torch"}  # no vdm_core, no `random` seeding


def test_clips_are_seeded_shaped_and_carry_ground_truth():
    a, b = independent_clip(3), independent_clip(3)
    assert torch.equal(a.clip, b.clip) and np.array_equal(a.centres, b.centres)
    assert not torch.equal(a.clip, independent_clip(4).clip)
    s = len(a.radii)
    assert a.clip.shape == (3, 16, 16, 16) and a.clip.dtype == torch.float32
    assert a.clip.min() >= -1 and a.clip.max() <= 1
    assert a.centres.shape == (s, 16, 2) and a.colours.shape == (s, 3) and a.visible.shape == (s, 16)
    assert a.background.shape == (3, 16, 16, 16)
    assert ((a.centres >= 0) & (a.centres <= 1)).all()
    assert independent_clip(3, size=8, frames=4).clip.shape == (3, 4, 8, 8)


def test_the_set_varies_what_it_should():
    clips = independent_set(range(80))
    assert {len(c.radii) for c in clips} == {1, 2, 3}
    occluded = [c for c in clips if (c.visible < 0.999).any()]
    assert len(occluded) > 10  # objects pass behind posts, boxes and each other
    flat = [c for c in clips if np.ptp(c.background[:, 0], axis=(1, 2)).max() < 1e-9]
    assert 5 < len(flat) < 40  # plain backgrounds and textured ones
    speeds = np.concatenate([np.linalg.norm(np.diff(c.centres, axis=1), axis=2).ravel() for c in clips]) * 16
    assert speeds.min() < 0.4 and speeds.max() > 1.4  # px per frame at 16 px
    assert len(SHAPES) == 6 and len(BACKGROUNDS) == 6


def test_centres_are_where_the_pixels_are():
    """On a plain background with one unoccluded object, the object's pixels' centroid is the stated centre."""
    index = next(i for i in range(200) if len((c := independent_clip(i, frames=2)).radii) == 1
                 and np.ptp(c.background, axis=(1, 2, 3)).max() < 1e-9 and (c.visible == 1).all())
    c = independent_clip(index, size=64, frames=8)
    coords = (np.arange(64) + 0.5) / 64
    for f in range(8):
        m = np.abs((c.clip[:, f].numpy() + 1) / 2 - c.background[:, f]).sum(0)
        m = m / m.sum()
        assert abs((m.sum(0) * coords).sum() - c.centres[0, f, 0]) < 0.01
        assert abs((m.sum(1) * coords).sum() - c.centres[0, f, 1]) < 0.01


def test_truth_scores_well_and_a_cross_fade_ghosts():
    clips = independent_set(range(24))
    truth, fade = [], []
    for c in clips:
        truth.append(object_errors(c.clip, c.centres, c.colours, c.radii, c.background, [4, 6, 10], c.visible))
        x = c.clip.clone()
        x[:, 6] = 0.5 * (x[:, 4] + x[:, 8])  # halfway between two frames: two half-bright copies
        fade.append(object_errors(x, c.centres, c.colours, c.radii, c.background, [6], c.visible))
    truth, fade = np.nanmean(truth, 0), np.nanmean(fade, 0)
    assert truth[0] < 0.6 and truth[1] < 0.05, truth
    assert fade[1] > truth[1] + 0.05, (truth, fade)


def test_quality_benchmark_reports_both_sets_side_by_side(tmp_path, capsys):
    import quality

    out = tmp_path / "q.md"
    quality.main(["--clips", "2", "--samples", "1", "--steps", "1", "--jobs", "extend", "upscale4",
                  "--methods", "both", "--threads", "1", "--out", str(out)])
    text = out.read_text()
    for baseline in ("repeat last frame", "bicubic"):
        rows = [line for line in text.splitlines() if line.startswith(f"| {baseline} |")]
        assert [r.split(" | ")[2] for r in rows] == ["v1", "independent"]
    assert "| both | 8 | v1 |" in text and "| both | 8 | independent |" in text  # extension takes its auto w_r
    assert "| both | 64 | independent |" in text  # upscaling ×4 takes 4·s² when no weight is given
    summary = text[text.index("### summary"):]
    assert "| extend | independent | both | 8 |" in summary and "| upscale4 | v1 | both | 64 |" in summary
