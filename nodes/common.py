"""Names shared by the pack's ComfyUI modules: node ids, display names, the category, model_options keys.

Nothing here imports ComfyUI.
"""

from __future__ import annotations

ID_PREFIX = "VPredZTSNR_"
DISPLAY_PREFIX = "V-Pred ZTSNR: "
CATEGORY = "sampling/v-pred ztsnr"
# model_options key under which the pack's checkpoint loader records what the file states (copied by clone()).
DETECTED_SETTINGS_KEY = "vpred_ztsnr_detected"


def node_id(name: str) -> str:
    """Prefixed, stable node id (ComfyUI silently skips ids that clash with built-ins)."""
    return ID_PREFIX + name


def display_name(name: str) -> str:
    """Prefixed display name shown in the node browser."""
    return DISPLAY_PREFIX + name
