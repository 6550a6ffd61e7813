"""Every job on the bundled model makes what it made when tests/golden/jobs.safetensors was recorded
(tests/golden_jobs.py says how): a change of the sampler, the guidance, the windows or the tiles that
changes an output shows up here. The tolerance allows float rounding (thread counts, op order) only."""
import pytest
import torch
from safetensors.torch import load_file

import golden_jobs

GOLDEN = load_file(str(golden_jobs.FILE))
MODEL = None


@pytest.mark.parametrize("name", sorted(golden_jobs.cases()))
def test_job_output_is_unchanged(name):
    global MODEL
    if MODEL is None:
        MODEL = golden_jobs.checkpoint.load()
    out = golden_jobs.cases()[name](MODEL)
    ref = GOLDEN[name]
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    err = (out - ref).abs().max().item()
    assert err < 2e-4, f"{name}: max |out − golden| = {err:.2e}"
