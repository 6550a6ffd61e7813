"""comfyui-vdm: ComfyUI entry point. Registers the pack's nodes; does nothing outside ComfyUI."""
WEB_DIRECTORY = "./web"  # help pages: web/docs/<node_id>.md

try:  # inside ComfyUI
    from comfy_api.latest import ComfyExtension  # noqa: F401
except ImportError:  # imported outside ComfyUI (tests, tools): nothing to register
    pass
else:
    from .nodes import comfy_entrypoint  # noqa: F401
