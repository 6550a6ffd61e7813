"""Import the real ComfyUI of a harness home in this process (CPU, one thread; or a GPU), and load this pack the way
ComfyUI loads a custom-node folder. For the harness scripts only (not CI); run them with that home's
venv: ``$COMFY_HOME/venv/bin/python tests/harness/<script>.py``.

``COMFY_HOME`` (required) holds ``ComfyUI/`` — a home of the comfyhost harness, whose ``setup.sh`` makes it.
Import this module before anything of ComfyUI: it puts ``$COMFY_HOME/ComfyUI`` first on ``sys.path`` and
lets ComfyUI parse ``--cpu`` (plus ``$COMFY_ARGS``) as its command line; ``COMFY_GPU=1`` leaves ``--cpu``
out (ComfyUI then uses the GPU it finds).
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from pathlib import Path

if not os.environ.get("COMFY_HOME"):
    sys.exit("set COMFY_HOME to a ComfyUI harness home (a folder holding ComfyUI/ and venv/)")
HOME = Path(os.environ["COMFY_HOME"])
COMFY = HOME / "ComfyUI"
PACK = Path(__file__).resolve().parents[2]
if str(COMFY) not in sys.path:
    sys.path.insert(0, str(COMFY))
sys.path.insert(1, str(PACK / "tests"))
from comfy_pack import import_pack  # noqa: E402

_argv = sys.argv
sys.argv = [_argv[0], *([] if os.environ.get("COMFY_GPU") == "1" else ["--cpu"]), *os.environ.get("COMFY_ARGS", "").split()]
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.cli_args  # noqa: E402,F401  (parses the command line above)

sys.argv = _argv
import torch  # noqa: E402

if os.environ.get("COMFY_GPU") != "1":
    torch.set_num_threads(1)  # the CPU harness shares 2 cores; on a GPU machine the CPU work takes every core


def version() -> str:
    import comfyui_version

    return comfyui_version.__version__


def load_pack():
    """This pack imported as ComfyUI imports ``custom_nodes/comfyui-vdm`` (a package under a mangled name,
    its V3 entry point awaited); returns ``{node_id: node class}``."""
    return import_pack(PACK, str(COMFY / "custom_nodes" / "comfyui-vdm").replace(".", "_x_"))[2]


def use_models(models_dir) -> None:
    """Let ComfyUI's loader nodes find the files under ``models_dir`` (diffusion_models/, vae/, checkpoints/)."""
    import folder_paths

    for folder in ("diffusion_models", "vae", "checkpoints"):
        folder_paths.add_model_folder_path(folder, str(Path(models_dir) / folder), is_default=True)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class PeakRSS:
    """Peak resident memory (MB) of this process inside a ``with`` block, sampled every 2 ms."""

    def __enter__(self):
        self.start = self.peak = rss_mb()
        self._stop = False

        def watch():
            while not self._stop:
                self.peak = max(self.peak, rss_mb())
                time.sleep(0.002)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.end = rss_mb()
        return False

    @property
    def added(self) -> float:
        return self.peak - self.start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
