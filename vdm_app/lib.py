"""The math library, imported from where this package was loaded.

In a ComfyUI ``custom_nodes`` folder the pack is one package and ``vdm_core`` is this package's sibling,
reached by a relative import (ComfyUI cannot import a pack by its own name); installed by pip,
``vdm_core`` is a top-level package. Every module of ``vdm_app`` imports the library from here.
"""
if __name__.count(".") > 1:  # <pack>.vdm_app.lib
    from ..vdm_core import checkpoint, data, guidance, sampling, tasks, train, video_io
    from ..vdm_core.files import atomic_path
    from ..vdm_core.progress import ProgressBar
else:
    from vdm_core import checkpoint, data, guidance, sampling, tasks, train, video_io
    from vdm_core.files import atomic_path
    from vdm_core.progress import ProgressBar

__all__ = ["checkpoint", "data", "guidance", "sampling", "tasks", "train", "video_io", "atomic_path", "ProgressBar"]
