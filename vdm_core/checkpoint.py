"""Checkpoints: safetensors only, with the network config and training facts as JSON metadata.

A file holds the EMA weights (the ones used for inference) under the network's own parameter names,
and, when saved for resuming, the raw weights and AdamW moments under ``train.*`` names
(:func:`save_inference` writes a file's inference part alone, as shipped). Metadata:
``format`` (``"vdm_core"``), ``format_version``, ``config`` (``UNet3DConfig`` as JSON), ``training``
(JSON: data, steps, resolution, frames, seed, …) and, with resume state, ``train_state`` (JSON).
Loading never unpickles anything: safetensors files hold raw tensors and strings only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes

from .files import atomic_path
from .unet3d import UNet3D, UNet3DConfig

FORMAT = "vdm_core"
FORMAT_VERSION = 1
BUNDLED = Path(__file__).parent / "weights" / "vdm-sprites-16.safetensors"
TRAIN_PREFIX = "train."


class CheckpointError(ValueError):
    """A file that is not a loadable vdm_core checkpoint; the message says why and what to do."""


def save(path, model: UNet3D, training: dict | None = None, *, ema: UNet3D | None = None,
         optimizer: torch.optim.Optimizer | None = None, train_state: dict | None = None) -> None:
    """Write ``path`` atomically. Inference weights are ``ema``'s when given, else ``model``'s;
    with ``optimizer`` the raw weights and optimizer moments are saved too, for resuming."""
    weights = (ema or model).state_dict()
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "training": json.dumps(training or {}),
    }
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for k, v in model.state_dict().items():
            tensors[f"{TRAIN_PREFIX}model.{k}"] = v.detach().float().cpu().contiguous()
        for group in optimizer.param_groups:
            for p in group["params"]:
                for slot, v in optimizer.state.get(p, {}).items():
                    if torch.is_tensor(v) and v.ndim > 0:
                        tensors[f"{TRAIN_PREFIX}optim.{slot}.{names[id(p)]}"] = v.detach().float().cpu().contiguous()
        meta["train_state"] = json.dumps(train_state or {})
    _write(path, tensors, meta)


INFERENCE_DTYPES = (torch.float32, torch.float16)
INFERENCE_META = ("format", "format_version", "config", "training")


def save_inference(src, dst, dtype: torch.dtype = torch.float32) -> None:
    """Write the inference part of checkpoint ``src`` to ``dst`` atomically (``dst`` may be ``src``): the EMA
    weights that :func:`load` uses, cast to ``dtype`` (float32, or float16 to halve the file), and the
    ``format``, ``config`` and ``training`` metadata; no ``train.*`` tensors and no ``train_state``, so
    the result cannot be resumed. vdm_core/weights/vdm-sprites-16.safetensors is such a file."""
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(str, INFERENCE_DTYPES))}, got {dtype}")
    meta, tensors = read(src)
    weights = {k: v.to(dtype).contiguous() for k, v in tensors.items() if not k.startswith(TRAIN_PREFIX)}
    _load_weights(UNet3D(_config(meta, Path(src))), weights, Path(src).name)  # a loadable file, or no file
    _write(dst, weights, {k: meta[k] for k in INFERENCE_META if k in meta})


def _write(path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """``tensors`` and ``meta`` as a safetensors file at ``path``, atomically and synced to disk."""
    data = save_bytes(tensors, metadata=meta)
    with atomic_path(path) as tmp, open(tmp, "xb") as f:  # a new file: its mode follows the umask
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Metadata and all tensors of a checkpoint, after checking it is one; raises CheckpointError."""
    path = Path(path)
    meta = _metadata(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path.name} is not a readable safetensors file (corrupt?): {e}. Re-download or re-export it."
        ) from None
    return meta, tensors


def network_config(path) -> UNet3DConfig:
    """The network config a checkpoint holds, from its metadata alone (no tensor is read)."""
    path = Path(path)
    return _config(_metadata(path), path)


def _metadata(path: Path) -> dict:
    """The checked metadata of a vdm_core checkpoint; raises CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_safetensors_layout(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path.name} is not a readable safetensors file (corrupt?): {e}. Re-download or re-export it."
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path.name} is a safetensors file from another program (no vdm_core metadata); "
            "it is not a VDM checkpoint. Pick a file written by `vdm train`."
        )
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise CheckpointError(f"{path.name} has an unreadable format_version "
                              f"{meta.get('format_version')!r}; it is corrupt or not a vdm_core file") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} has checkpoint format {version}, newer than this vdm_core understands "
            f"({FORMAT_VERSION}); update comfyui-vdm."
        )
    return meta


def _config(meta: dict, path: Path) -> UNet3DConfig:
    try:
        return UNet3DConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path.name} has an unusable network config: {e}") from None


def _check_safetensors_layout(path: Path) -> None:
    """Tell pickles, cut-off files and other data apart before safetensors parses ``path``.

    A safetensors file is ``N`` (u64, little-endian), an ``N``-byte JSON header starting with ``{``
    whose ``data_offsets`` locate each tensor, then the tensor bytes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        n = int.from_bytes(head[:8], "little")
        if len(head) == 9 and head[8:9] == b"{":
            if 8 + n > size:
                raise CheckpointError(
                    f"{path.name} is truncated: its safetensors header needs {8 + n} bytes but the file has "
                    f"{size}; the download or copy was cut off. Re-download or copy it again."
                )
            try:
                f.seek(8)
                header = json.loads(f.read(n))
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                          default=0)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise CheckpointError(f"{path.name} has a corrupt safetensors header ({e}); re-download or "
                                      "re-export it.") from None
            if 8 + n + end > size:
                raise CheckpointError(
                    f"{path.name} is truncated: its tensors need {8 + n + end} bytes but the file has {size}; "
                    "the download or copy was cut off. Re-download or copy it again."
                )
            return
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise CheckpointError(
            f"{path.name} is a pickle/PyTorch .pt file; vdm_core loads safetensors only and never unpickles "
            "files. Convert it with a trusted script, or use a checkpoint written by `vdm train`."
        )
    raise CheckpointError(
        f"{path.name} is not a safetensors file (its first bytes are not a safetensors header): wrong file or "
        "corrupt data. Pick a .safetensors checkpoint written by `vdm train`."
    )


def load(path=None, device=None, dtype=None) -> UNet3D:
    """Rebuild the network from ``path`` alone (``None``: the bundled model), in eval mode.

    The result is ready to call as ``model(z, phi)``; ``model.config.resolution`` and
    ``model.config.frames`` give the clip size it was trained on; ``model.training_info`` the facts.
    """
    path = BUNDLED if path is None else Path(path)
    meta, tensors = read(path)
    config = _config(meta, path)
    try:
        training_info = json.loads(meta.get("training", "{}"))
    except ValueError as e:
        raise CheckpointError(f"{path.name} has unreadable training facts: {e}") from None
    model = UNet3D(config)
    weights = {k: v for k, v in tensors.items() if not k.startswith(TRAIN_PREFIX)}
    _load_weights(model, weights, path.name)
    model.training_info = training_info
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def _load_weights(model: UNet3D, weights: dict, name: str) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {k}: file {tuple(weights[k].shape)}, "
                         f"config {tuple(own[k].shape)})")
        raise CheckpointError(f"{name}: weights do not fit its config: " + "; ".join(parts))
    model.load_state_dict(weights)


def load_train_state(path, model: UNet3D, ema: UNet3D, optimizer: torch.optim.Optimizer) -> dict:
    """Restore raw weights, EMA weights and optimizer moments saved with ``optimizer``; returns the
    ``train_state`` dict (step, data position, …). Raises CheckpointError if the file has no resume state.
    AdamW's step count is ``optimizer_step`` where saved (it lags ``step`` when fp16 loss scaling skipped
    steps), else ``step``."""
    meta, tensors = read(path)
    if "train_state" not in meta:
        raise CheckpointError(f"{Path(path).name} holds inference weights only; it cannot be resumed")
    raw = {k[len(TRAIN_PREFIX) + 6:]: v for k, v in tensors.items() if k.startswith(TRAIN_PREFIX + "model.")}
    _load_weights(model, raw, Path(path).name)
    _load_weights(ema, {k: v for k, v in tensors.items() if not k.startswith(TRAIN_PREFIX)}, Path(path).name)
    params = dict(model.named_parameters())
    state = json.loads(meta["train_state"])
    for k, v in tensors.items():
        if k.startswith(TRAIN_PREFIX + "optim."):
            slot, name = k[len(TRAIN_PREFIX) + 6:].split(".", 1)
            p = params[name]
            optimizer.state[p][slot] = v.to(p.device)
            optimizer.state[p]["step"] = torch.tensor(float(state.get("optimizer_step", state.get("step", 0))))
    return state
