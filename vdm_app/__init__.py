"""vdm_app — the front ends of comfyui-vdm over the math library ``vdm_core``.

* ``spec``: every node's inputs declared once (name, type, default, range, tooltip);
* ``jobs``: the nodes as functions on plain values (ComfyUI's IMAGE/AUDIO layouts, no ComfyUI imports);
* ``graph``, ``executor``, ``batch``, ``remote``: ``vdm run`` — an API-format workflow's prompt graph, run
  here without ComfyUI, once per clip of a folder, or queued on ComfyUI servers;
* ``cli``: the ``vdm`` command (``python -m vdm_app``).

The ComfyUI nodes (the pack's ``nodes/`` folder) and all of these call the same job functions.
"""
