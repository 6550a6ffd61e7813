"""The pack imported the way ComfyUI imports a custom-node folder: the folder's ``__init__.py`` as a package
under a mangled module name (the folder path, dots replaced), its V3 entry point awaited. One helper for the
tests (with stand-ins of ComfyUI's modules, tests/comfy_stubs.py) and the harness (the real ComfyUI)."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def import_pack(folder: Path, name: str | None = None):
    """``(package module, extension, {node_id: node class})`` of the pack in ``folder`` (its ``__init__.py``),
    imported as ComfyUI does under ``name`` (default: the mangled folder path)."""
    name = name or str(folder).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, Path(folder) / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    extension = asyncio.run(module.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return module, extension, {n.GET_SCHEMA().node_id: n for n in nodes}


@contextlib.contextmanager
def stubbed_pack(stubs: dict, folder: Path = ROOT, name: str = "custom_nodes_comfyui-vdm"):
    """:func:`import_pack` with ComfyUI's modules replaced by ``stubs`` for the duration; afterwards only the
    stubs and the pack's own modules are gone (third-party modules first imported while the pack loaded — torch's
    own, e.g. by torch.func — stay, so they are never imported twice)."""
    with mock.patch.dict(sys.modules, stubs):
        try:
            yield import_pack(folder, name)
        finally:
            added = {k: v for k, v in sys.modules.items() if k not in stubs and not k.startswith(name)}
    sys.modules.update(added)
