"""vdm_app — the front ends of comfyui-vdm over the math library ``vdm_core``.

* ``spec``: every node's inputs declared once (name, type, default, range, tooltip);
* ``node_functions``: the nodes as functions on plain values, dispatched by node id (no ComfyUI imports);
  ``clips``: ComfyUI's IMAGE/AUDIO layouts and clip files; ``models``: loading, dtype, the out-of-memory
  policy; ``autograd_weights``: weights made usable by autograd under inference mode;
* ``lib``: the math library ``vdm_core``, imported lazily from where this package was loaded;
* ``graph``, ``executor``, ``batch``, ``remote``: ``vdm run`` — an API-format workflow's prompt graph, run
  here without ComfyUI, once per clip of a folder, or queued on ComfyUI servers;
* ``cli``: the ``vdm`` command (``python -m vdm_app``).

The ComfyUI nodes (the pack's ``nodes/`` folder) and all of these call the same node functions.
"""
