"""The pack's nodes declared once: every input with its name, type, default, range and tooltip.

The ComfyUI V3 schemas (``nodes/``), ``vdm run``'s input checks (:func:`check_inputs`) and the ``vdm``
command's flags (``vdm_app.cli``) are all built from :data:`NODES`, so a default cannot differ between
the front ends. Each node's function (``vdm_app.node_functions.FUNCTIONS``) takes the inputs as keyword
arguments named like the inputs; ``node_functions.run_node`` fills in the defaults, checks every value
(:func:`check_inputs`) and calls it. Importing this module does not import torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from .lib import precision, settings

AUTO = 0
"""Integer inputs use 0 for "automatic" (the model's native size, half a window, …)."""
AUTO_WEIGHT = -1.0
"""``guidance_weight`` below 0 means "auto" (``vdm_core.settings``: None, resolved for the job by
``SamplerSettings.for_job``)."""
DEFAULT_FPS = 8.0
"""Frame rate of new clips and of clips whose frame rate nobody gave (the sprites' rate)."""
BUNDLED_NAME = "vdm-sprites-16 (bundled)"
"""The ``model_name`` of the model shipped inside the package (``vdm_core.checkpoint.BUNDLED``)."""

WIDGETS = ("INT", "FLOAT", "COMBO", "BOOLEAN")
"""Input types that are values (widgets in ComfyUI); the others are connections of the named type."""


@dataclass(frozen=True)
class Input:
    """One node input. ``type``: INT, FLOAT, BOOLEAN, COMBO (``options``; dynamic ones are filled in by the
    host), or a connection type (IMAGE, AUDIO, VDM_MODEL, VDM_JOB, MODEL, VAE, CONDITIONING). ``flag`` is
    its ``vdm`` command-line option (None: not a flag)."""

    name: str
    type: str
    tooltip: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    optional: bool = False
    seed: bool = False
    flag: str | None = None
    dynamic: bool = False
    """COMBO whose choices the host adds to ``options`` (the model files it lists); where it gives none,
    any text is taken (a path, checked when it is opened)."""

    @property
    def widget(self) -> bool:
        return self.type in WIDGETS


@dataclass(frozen=True)
class Output:
    name: str
    type: str
    tooltip: str
    display_name: str | None = None


@dataclass(frozen=True)
class Node:
    """A node: its id, how ComfyUI shows it, its inputs and outputs (its function: ``vdm_app.node_functions``)."""

    node_id: str
    display_name: str
    category: str
    description: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    host_only: bool = False
    """Needs a ComfyUI host (its inputs are ComfyUI objects): ``vdm run`` cannot execute it."""

    def input(self, name: str) -> Input:
        for i in self.inputs:
            if i.name == name:
                return i
        raise KeyError(f"{self.node_id} has no input {name!r}")


# ---------------------------------------------------------------------------------------------- inputs


def _int(name, default, lo, hi, tooltip, **kw) -> Input:
    return Input(name, "INT", tooltip, default=default, min=lo, max=hi, **kw)


WINDOW = _int("window", AUTO, 0, 4096, "Frames sampled together in one window (0 = automatic: the model's native "
              "frame count, or the whole clip as one window for a model whose native length the pack does not know, "
              "e.g. Mochi or Cosmos through Use ComfyUI Model). Longer clips are made window by window. Lower it if "
              "you run out of memory.", flag="--window")
TILE = _int("tile", AUTO, 0, 8192, "Tile size in pixels for frames larger than the model (0 = automatic: the "
            "model's native resolution). Tiles overlap and are blended at every step. Lower it if you run out "
            "of memory.", flag="--tile")
OVERLAP = _int("overlap", AUTO, 0, 4096, "Frames shared by neighbouring windows, so they join smoothly (0 = "
               "automatic: about half a window for interpolation, a quarter for upscaling).", flag="--overlap")
CLIP_INPUTS = (
    Input("frames", "IMAGE", "The clip: an IMAGE batch, one image per frame (e.g. from Load Video → Get Video "
          "Components, VideoHelperSuite's Load Video, or Sprite Clip). Leave it unconnected when you connect `job`.",
          optional=True),
    Input("fps", "FLOAT", "Frame rate of `frames` (frames per second). Ignored when `job` is connected: a chained "
          "job keeps its own frame rate.", default=DEFAULT_FPS, min=0.01, max=1000.0, step=0.01, optional=True),
    Input("audio", "AUDIO", "Sound of the clip (optional). It is passed on to the sampler's `audio` output; "
          "extension pads it with silence to the new length.", optional=True),
    Input("job", "VDM_JOB", "An upstream VDM job instead of `frames`: the jobs are combined and sampled in one pass "
          "(e.g. Interpolate Frames → Upscale Video).", optional=True),
)
JOB_OUTPUT = (Output("vdm_job", "VDM_JOB", "The job description; connect it to Sample DDIM-v (or to another job "
                     "node to combine jobs).", display_name="job"),)

NODES: dict[str, Node] = {n.node_id: n for n in (
    Node(
        "VDM_LoadModel", "Load VDM", "VDM/loaders",
        "Loads a Video Diffusion Model: the bundled sprites model or a checkpoint (.safetensors written by "
        "`vdm train`) from models/vdm. ComfyUI moves it to the GPU when a sampler needs it and frees it like any "
        "other model.",
        (
            Input("model_name", "COMBO", "The model. 'vdm-sprites-16 (bundled)' ships with the pack (16 frames of "
                  "16×16, moving sprites); put your own checkpoints into models/vdm.", default=BUNDLED_NAME,
                  options=(BUNDLED_NAME,), dynamic=True, flag="--model"),
            Input("dtype", "COMBO", "Number format of the weights. auto: bf16 on a GPU that supports it, fp32 "
                  "otherwise. fp16 saves memory but can overflow (NaN) with some models.", default="auto",
                  options=precision.NAMES, flag="--dtype"),
        ),
        (Output("model", "VDM_MODEL", "The loaded model; connect it to Sample DDIM-v."),),
    ),
    Node(
        "VDM_SampleDDIMv", "Sample DDIM-v (VDM)", "VDM/sampling",
        "Samples a clip with the Video Diffusion Model (DDIM in angle form, v-prediction). With a job (Extend "
        "Clip, Interpolate Frames, Upscale Video) the known frames or pixels guide the sampler; without one it "
        "makes a new clip of the given size. Shows a preview and stops at the next step when you cancel.",
        (
            Input("model", "VDM_MODEL", "The model from Load VDM (or Use ComfyUI Model)."),
            _int("length", AUTO, 0, 4096, "Frames of a new clip (only without a job; 0 = the model's native frame "
                 "count). Longer than the model's window: made window by window.", flag="--frames"),
            _int("width", AUTO, 0, 8192, "Width in pixels of a new clip (only without a job; 0 = the model's native "
                 "resolution). Larger than the model: made in blended tiles.", flag="--width"),
            _int("height", AUTO, 0, 8192, "Height in pixels of a new clip (only without a job; 0 = the model's "
                 "native resolution).", flag="--height"),
            _int("steps", settings.DEFAULT_STEPS, 1, 1000, "DDIM steps per window. More is slower and a little "
                 f"cleaner; {settings.DEFAULT_STEPS} is plenty for the bundled model. A ComfyUI model steps on its own "
                 "schedule; with method posterior (from about 20 steps) some of its steps move to low noise, where "
                 "shifted schedules (Wan, LTX-Video) leave new frames short of fine variation.", flag="--steps"),
            Input("eta", "FLOAT", "Fresh noise per step: 0 = deterministic DDIM (method posterior: second-order "
                  "DPM-Solver++(2M) steps, as accurate on its test data as DDIM at many more steps), 1 = ancestral "
                  "sampling.",
                  default=0.0, min=0.0, max=1.0, step=0.01, flag="--eta"),
            Input("guidance_weight", "FLOAT", "Reconstruction guidance weight w_r of methods both and reconstruction: "
                  "how hard the sample is pulled towards the known frames or pixels of the job (posterior and "
                  "consistency need none). −1 (any negative value) = auto, the tuned weight "
                  "for the job: 8 for extend (and a long new clip's later windows), 16 for interpolate, 4·factor² for "
                  "upscaling by factor (16 at ×2, 64 at ×4). 0 turns guidance off.", default=AUTO_WEIGHT,
                  min=AUTO_WEIGHT, max=1000.0, step=0.5, flag="--guidance"),
            Input("method", "COMBO", "How the job's known frames steer sampling: auto (default: posterior for "
                  "every job and for a long new clip's later windows, both for a new clip's first window; both "
                  "takes about a third of posterior's time, consistency less: choose them for the largest "
                  "models), both (as in VDM: frames "
                  "known exactly are replaced by noised copies and everything else is pulled by reconstruction "
                  "guidance; upscaled frames finally get the input's block averages exactly; pixels a ComfyUI "
                  "model sees through its VAE are also held as in consistency; every job), "
                  "reconstruction (guidance only), replacement (no guidance; extend and interpolate only), posterior "
                  "(as both, but the model's own Jacobian says how the known frames pull the rest: exact on Gaussian "
                  "test data where both over- or undershoots; one backward pass through the model per iteration and "
                  "step; no weight) or consistency (each step's prediction moved to the nearest clip that agrees "
                  "with the input, through the VAE for latent models; never differentiates the model, so it fits the "
                  "largest models; no weight).",
                  default=settings.AUTO_METHOD, options=settings.CHOICES, flag="--method"),
            _int("seed", 0, 0, 0xFFFFFFFFFFFFFFFF, "Noise seed; the same seed gives the same clip on any device.",
                 seed=True, flag="--seed"),
            _int("iterations", settings.DEFAULT_ITERATIONS, 1, 32, "Methods posterior and consistency, and both "
                 "through a VAE: solver iterations per step. Posterior: each is one backward pass through the model "
                 "(time grows with it), per step on average: more at middle noise, where the solve needs them, fewer "
                 f"near pure noise and near the end; {settings.DEFAULT_ITERATIONS} is exact on Gaussian test data. "
                 "Consistency (and both through a VAE): passes through the VAE decoder only. Optional, so API "
                 "prompts saved before it existed still run.", flag="--iterations", optional=True),
            Input("job", "VDM_JOB", "What to make: the output of Extend Clip, Interpolate Frames or Upscale Video. "
                  "Unconnected: a new clip of length × width × height.", optional=True),
        ),
        (
            Output("images", "IMAGE", "The clip as an IMAGE batch (one image per frame)."),
            Output("fps", "FLOAT", f"Frame rate of the result: the input's (× the multiplier after interpolation); "
                   f"{DEFAULT_FPS:g} for a new clip."),
            Output("audio", "AUDIO", "The job's audio (padded with silence after extension); None when there is "
                   "none — core Create Video accepts that as silence."),
        ),
    ),
    Node(
        "VDM_ExtendClip", "Extend Clip (VDM)", "VDM/jobs",
        "Describes an extension: new frames that continue the clip forward in time. The input frames are kept "
        "unchanged; each window sees the last `context` frames made so far. Connect the job to Sample DDIM-v.",
        (
            _int("new_frames", 16, 1, 4096, "Frames to add after the clip. Output: input frames + new_frames.",
                 flag="--frames"),
            _int("context", AUTO, 0, 4096, "Known frames each window conditions on (0 = automatic: half the "
                 "window). Must be smaller than the window.", flag="--context"),
            WINDOW, TILE, *CLIP_INPUTS,
        ),
        JOB_OUTPUT,
    ),
    Node(
        "VDM_InterpolateFrames", "Interpolate Frames (VDM)", "VDM/jobs",
        "Describes an interpolation: new frames between every pair of input frames. N frames become "
        "(N − 1)·multiplier + 1 at multiplier × the frame rate, so the duration and the audio stay the same. "
        "Connect the job to Sample DDIM-v, or to Upscale Video to do both.",
        (
            _int("multiplier", 2, 2, 16, "Frame-rate multiplier k: k − 1 new frames between each pair of input "
                 "frames.", flag="--multiplier"),
            WINDOW, OVERLAP, TILE, *CLIP_INPUTS,
        ),
        JOB_OUTPUT,
    ),
    Node(
        "VDM_UpscaleVideo", "Upscale Video (VDM)", "VDM/jobs",
        "Describes an upscale: every frame factor × wider and higher, sampled so that its block averages match "
        "the input (reconstruction guidance). Frame count, frame rate and audio stay the same. Connect the job to "
        "Sample DDIM-v.",
        (
            _int("factor", 2, 2, 8, "Scale factor for width and height (2 = twice as wide and high).",
                 flag="--factor"),
            WINDOW, OVERLAP, TILE, *CLIP_INPUTS,
        ),
        JOB_OUTPUT,
    ),
    Node(
        "VDM_FromComfyModel", "Use ComfyUI Model (VDM)", "VDM/loaders",
        "Turns a video model loaded by ComfyUI (Wan 2.1/2.2, HunyuanVideo, LTX-Video, …: its MODEL, with LoRAs and "
        "other patches, and its VAE) into a VDM model, so Extend Clip, Interpolate Frames, Upscale Video and Sample "
        "DDIM-v guide it, training-free. Sampling runs in the model's latent space with its own noise schedule; "
        "the job's known frames stay in pixels and are observed through the VAE decoder (interpolation, upscaling, "
        "and extension of a clip whose length is not 1 + 4·k frames), or, for frames known at the start of a clip "
        "and a causal video VAE (Wan, Hunyuan, LTX-Video), as latent frames encoded once (extension of 1 + 4·k "
        "frames: much cheaper). A guided step is one forward and one backward pass through the model (and the "
        "decoder in pixel mode).",
        (
            Input("model", "MODEL", "The video diffusion model (e.g. from Load Diffusion Model); its patches (LoRAs, "
                  "shift from ModelSampling nodes) apply."),
            Input("vae", "VAE", "Its VAE (e.g. wan_2.1_vae). Unconnected: the model's space is the image space "
                  "(pixel-space models).", optional=True),
            Input("positive", "CONDITIONING", "Text conditioning (e.g. CLIP Text Encode). Unconnected: an empty "
                  "(zero) conditioning.", optional=True),
            Input("negative", "CONDITIONING", "Negative conditioning for classifier-free guidance (used when cfg > 1).",
                  optional=True),
            Input("cfg", "FLOAT", "Classifier-free guidance scale of the text conditioning (1 = off: one model call "
                  "per step, the fastest; Wan likes about 5 with a prompt).", default=1.0, min=1.0, max=30.0,
                  step=0.1),
            Input("checkpointing", "BOOLEAN", "Recompute the model's blocks in the backward pass of a guided step "
                  "(activation checkpointing): much less memory, about a third more compute.", default=False),
        ),
        (Output("vdm_model", "VDM_MODEL", "The model for Sample DDIM-v and the job nodes.", display_name="model"),),
        host_only=True,
    ),
    Node(
        "VDM_SpriteClip", "Sprite Clip (VDM)", "VDM/utils",
        "Draws a clip of moving sprites (discs, squares, triangles, letters bouncing off the walls) — the kind of "
        "clip the bundled model was trained on. The same seed always gives the same clip, at any size.",
        (
            _int("seed", 0, 0, 0xFFFFFFFFFFFFFFFF, "Which clip: sprites, colours and motion all follow from the seed."),
            _int("size", 16, 4, 1024, "Width and height in pixels (the bundled model works at 16)."),
            _int("length", 16, 1, 4096, "Number of frames."),
            Input("fps", "FLOAT", "Frame rate passed on with the clip.", default=DEFAULT_FPS, min=0.01, max=1000.0,
                  step=0.01),
        ),
        (
            Output("images", "IMAGE", "The clip as an IMAGE batch."),
            Output("clip_fps", "FLOAT", "The frame rate (the fps input).", display_name="fps"),
        ),
    ),
)}


# ---------------------------------------------------------------------------------------------- checks


class InputError(ValueError):
    """A value a user gave that a node cannot take: ``"<node>: <input> <what is wrong and what to do>"``;
    ``reason`` is the part after the input's name (front ends name the input their own way: the command
    line by its flag, with ``node`` empty)."""

    def __init__(self, node: str, name: str, reason: str):
        super().__init__(f"{node}: {name} {reason}" if node else f"{name} {reason}")
        self.node, self.name, self.reason = node, name, reason


def check_value(node: Node, inp: Input, value, options: tuple[str, ...] | None = None):
    """``value`` checked against ``inp`` (and the dynamic ``options`` of a COMBO); returns it as the
    input's type (int, float or str). Raises :class:`InputError` naming the node and the input."""
    def bad(reason: str) -> InputError:
        return InputError(node.display_name, inp.name, reason)

    if inp.type == "INT":
        if isinstance(value, bool) or not isinstance(value, Integral):
            if not (isinstance(value, float) and value.is_integer()):
                raise bad(f"must be a whole number, got {value!r}")
        value = int(value)
    elif inp.type == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, Real):
            raise bad(f"must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise bad(f"must be a finite number, got {value}; give a value from {inp.min:g} to {inp.max:g}")
    elif inp.type == "BOOLEAN":
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {value!r}")
        return value
    elif inp.type == "COMBO":
        if inp.dynamic and options is None:
            if not isinstance(value, str) or not value:
                raise bad(f"must name a model, got {value!r}")
            return value
        allowed = options if options is not None else inp.options
        if value not in allowed:
            shown = ", ".join(map(str, allowed[:8])) + (", …" if len(allowed) > 8 else "")
            raise bad(f"must be one of {shown}; got {value!r}")
        return value
    else:
        return value
    if (inp.min is not None and value < inp.min) or (inp.max is not None and value > inp.max):
        raise bad(f"must be from {inp.min:g} to {inp.max:g}, got {value:g}")
    return value


def check_inputs(node_id: str, values: dict, options: dict[str, tuple[str, ...]] | None = None) -> dict:
    """All of ``node_id``'s widget inputs checked and completed with their defaults; connection inputs as
    given (None when absent). Unknown names are refused. ``options``: dynamic COMBO choices by input name
    (the models the host lists); without them any string is accepted for a COMBO with dynamic options."""
    node = NODES[node_id]
    names = {i.name for i in node.inputs}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(node.display_name, repr(unknown[0]), f"is not an input; its inputs: {', '.join(sorted(names))}")
    out = {}
    for inp in node.inputs:
        value = values.get(inp.name, inp.default)
        if inp.widget and value is not None:
            value = check_value(node, inp, value, (options or {}).get(inp.name))
        elif value is None and not inp.optional:
            raise InputError(node.display_name, inp.name, f"is not connected; connect a {inp.type} to it")
        out[inp.name] = value
    return out


def flag_inputs(node_id: str) -> list[Input]:
    """The inputs of ``node_id`` that are ``vdm`` command-line flags."""
    return [i for i in NODES[node_id].inputs if i.flag]

