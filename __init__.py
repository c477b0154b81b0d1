"""ComfyUI entry point of the v-pred / ZTSNR pack (``custom_nodes/<dir>/__init__.py``).

Outside ComfyUI (pytest, the webui, plain Python) ``comfy`` is not importable and the mappings stay empty, so
importing this file never fails. Inside the pack only relative imports are used: ComfyUI owns the top-level
module name ``nodes``.
"""

import logging

logger = logging.getLogger(__name__)

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

try:
    import comfy  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    comfy = None

if comfy is not None and __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_trailing_scheduler

    register_trailing_scheduler()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
