"""ComfyUI entry point of the v-pred / ZTSNR pack (``custom_nodes/<dir>/__init__.py``), on ComfyUI's V3 schema.

ComfyUI (v0.3.48 and later) loads ``comfy_entrypoint``; it must be the only registration here, because a V1
``NODE_CLASS_MAPPINGS`` would win over it (``nodes.load_custom_node``). Outside ComfyUI (pytest, the webui, plain
Python) ``comfy_api`` is not importable and nothing is defined, so importing this file never fails. Inside the pack
only relative imports are used: ComfyUI owns the top-level module name ``nodes``.
"""

import logging

logger = logging.getLogger(__name__)

MIN_COMFYUI = "0.3.48"  # first release whose comfy_api.v0_0_2 exports io and ComfyExtension (the V3 schema)

try:
    import comfy_api  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    comfy_api = None

if comfy_api is not None and __package__:
    try:
        from .nodes.comfy_nodes import VPredZTSNRExtension, extension
    except ModuleNotFoundError as exc:
        if exc.name != "comfy_api.v0_0_2":
            raise
        logger.warning("V-Pred ZTSNR nodes need ComfyUI >= %s (comfy_api.v0_0_2); not loaded", MIN_COMFYUI)
    else:

        async def comfy_entrypoint() -> VPredZTSNRExtension:
            """The pack's ComfyExtension (ComfyUI awaits this when it loads the custom node)."""
            return extension()

        __all__ = ["comfy_entrypoint"]
