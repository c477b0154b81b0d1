"""Paths and names shared by the ComfyUI host tests (no ComfyUI import here)."""

import os
from pathlib import Path

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "vpred_ztsnr_pack"
CHECKPOINT_NAME = "tiny_vpred_sd15.safetensors"
CHECKPOINT_METADATA = {"modelspec.prediction_type": "v", "ss_zero_terminal_snr": "True"}


def host_node(nodes, name: str, *args):
    """Outputs tuple of a ComfyUI built-in node, V3 (``execute``) or V1 (``FUNCTION``) as the host version has it."""
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    if hasattr(cls, "GET_SCHEMA"):
        return cls.execute(*args).result
    return getattr(cls(), cls.FUNCTION)(*args)
