"""The math library's modules, imported on first use from where this package was loaded.

In a ComfyUI ``custom_nodes`` folder the pack is one package and ``vdm_core`` is this package's sibling,
reached by a relative import (ComfyUI cannot import a pack by its own name); installed by pip, ``vdm_core``
is a top-level package. Every module of ``vdm_app`` imports the library from here: ``from .lib import tasks``.
Modules load lazily (PEP 562), so ``vdm --help`` and the node spec never import torch.
"""
import importlib

_CORE = ("..vdm_core", __package__) if __name__.count(".") > 1 else ("vdm_core", None)
NAMES = {"ProgressBar": "progress", "atomic_path": "files"}
"""Names of the library's modules' contents that the front ends take from here directly."""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if name in NAMES:
        value = getattr(__getattr__(NAMES[name]), name)
        globals()[name] = value
        return value
    try:
        module = importlib.import_module(f"{_CORE[0]}.{name}", _CORE[1])
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith(f"vdm_core.{name}"):
            raise AttributeError(f"vdm_core has no module {name!r}") from None
        raise
    globals()[name] = module
    return module
