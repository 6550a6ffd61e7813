"""What README.md tells a user about defaults is what every front end and the library do.

The values are read from README's own sentences, then checked against the node spec, the ``vdm`` command's
parsed defaults, the library's job functions and the example the demo runs — so changing a default in the code
without README (or README without the code) fails here."""
import inspect
import json
import re
from pathlib import Path

import pytest

from vdm_app import cli, spec
from vdm_core import settings, tasks

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme(pattern: str) -> re.Match:
    m = re.search(pattern, README, re.S)
    assert m, f"README.md no longer says {pattern!r}"
    return m


def cli_defaults(command: str) -> dict:
    args = cli.parser().parse_args([command, "in.mp4", "-o", "out.mp4"] if command != "sample" else
                                   [command, "-o", "out.mp4"])
    return {k.split(".", 1)[1]: v for k, v in vars(args).items() if "." in k}


def test_sampler_defaults_are_the_documented_ones():
    m = readme(r"`--dtype` \(`(\w+)`\), `--steps` \((\d+)\), `--eta` \((\d+)\).*?`--method`\s+\(`auto` \| "
               r"`reconstruction` \| `replacement` \| `both` \| `posterior` \| `consistency`; `(\w+)` by default: "
               r"`posterior`\s+for a job and a long new clip's later windows, `both` for a new clip's first window\), "
               r"`--iterations` \((\d+);.*?`--seed` \((\d+)\)")
    dtype, steps, eta, method, seed = m.group(1), int(m.group(2)), float(m.group(3)), m.group(4), int(m.group(6))
    iterations = int(m.group(5))
    sample = spec.NODES["VDM_SampleDDIMv"]
    assert sample.input("iterations").default == iterations == settings.SamplerSettings().iterations
    assert sample.input("method").options == settings.CHOICES == (settings.AUTO_METHOD, *settings.METHODS)
    assert sample.input("steps").default == steps == settings.DEFAULT_STEPS == settings.SamplerSettings().steps
    assert sample.input("eta").default == eta and sample.input("method").default == method
    assert sample.input("seed").default == seed and spec.NODES["VDM_LoadModel"].input("dtype").default == dtype
    for command in ("sample", "extend", "interpolate", "upscale"):
        flags = cli_defaults(command)
        assert (flags["steps"], flags["eta"], flags["method"], flags["seed"], flags["dtype"], flags["iterations"]) == (
            steps, eta, method, seed, dtype, iterations), command
    for job in (tasks.extend, tasks.interpolate, tasks.upscale, tasks.generate):  # the library's job API too
        params = inspect.signature(job).parameters
        assert params["steps"].default == steps and params["eta"].default == eta, job.__name__
        assert params["method"].default == method and params["seed"].default == seed, job.__name__
        if job is not tasks.generate:
            assert params["iterations"].default == iterations, job.__name__


def test_auto_guidance_weight_is_the_documented_one():
    m = readme(r"`--guidance` \(w_r; `auto` by default: (\d+) for extend, (\d+) for interpolate, (\d+)·factor² for "
               r"upscaling\)")
    extend, exact, per_factor = float(m.group(1)), float(m.group(2)), float(m.group(3))
    assert settings.auto_guidance_weight(1, extend=True) == extend and settings.auto_guidance_weight(1) == exact
    for s in (2, 3, 4, 8):
        assert settings.auto_guidance_weight(s) == per_factor * s * s
    m = readme(r"guidance weight defaults to \*\*auto\*\* \((−?\d+)\)")
    assert spec.NODES["VDM_SampleDDIMv"].input("guidance_weight").default == spec.AUTO_WEIGHT == float(
        m.group(1).replace("−", "-"))
    assert cli_defaults("extend")["guidance_weight"] == spec.AUTO_WEIGHT
    for job in (tasks.extend, tasks.interpolate, tasks.upscale, tasks.generate):
        assert inspect.signature(job).parameters["guidance_weight"].default is None  # None: auto
    assert settings.SamplerSettings().guidance_weight is None
    tip = spec.NODES["VDM_SampleDDIMv"].input("guidance_weight").tooltip
    assert f"{extend:g} for extend" in tip and f"{exact:g} for interpolate" in tip and f"{per_factor:g}·factor²" in tip


def test_the_demo_does_what_readme_says():
    m = readme(r"extend a (\d+)-frame moving-sprites clip by (\d+) frames")
    clip, new = int(m.group(1)), int(m.group(2))
    nodes = {n["class_type"]: n["inputs"] for n in json.loads((ROOT / "workflows/api/extend.json").read_text()).values()}
    assert nodes["VDM_SpriteClip"]["length"] == clip and nodes["VDM_ExtendClip"]["new_frames"] == new
    assert nodes["VDM_SampleDDIMv"]["steps"] == settings.DEFAULT_STEPS


@pytest.mark.parametrize("node, name", [("VDM_UpscaleVideo", "factor")])
def test_upscale_range_is_the_documented_one(node, name):
    m = readme(r"every frame ×(\d+) to ×(\d+) larger")
    inp = spec.NODES[node].input(name)
    assert (inp.min, inp.max) == (int(m.group(1)), int(m.group(2)))
