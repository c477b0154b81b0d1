"""Shared naming, input-spec helpers and the ComfyUI-facing constants of the node pack.

Nothing here imports ComfyUI, so node schemas can be inspected (and tested) without a host.
"""

from __future__ import annotations

ID_PREFIX = "VPredZTSNR_"
DISPLAY_PREFIX = "V-Pred ZTSNR: "
CATEGORY = "sampling/v-pred ztsnr"
# model_options key under which the pack's checkpoint loader records what it detected (copied by clone()).
DETECTED_SETTINGS_KEY = "vpred_ztsnr_detected"
MAX_STEPS = 1000
MAX_TIMESTEPS = 10000
BETA_STEP = 0.00001
BETA_ROUND = 0.000001


def node_id(name: str) -> str:
    """Prefixed, stable node id (ComfyUI silently skips ids that clash with built-ins)."""
    return ID_PREFIX + name


def display_name(name: str) -> str:
    """Prefixed display name shown in the node browser."""
    return DISPLAY_PREFIX + name


def combo(choices, default: str, tooltip: str) -> tuple:
    """A COMBO input spec: (list of ids, options)."""
    return (list(choices), {"default": default, "tooltip": tooltip})


def float_input(default: float, low: float, high: float, step: float, tooltip: str, **extra) -> tuple:
    """A FLOAT input spec with range, step and tooltip."""
    return ("FLOAT", {"default": default, "min": low, "max": high, "step": step, "tooltip": tooltip, **extra})


def int_input(default: int, low: int, high: int, tooltip: str) -> tuple:
    """An INT input spec with range and tooltip."""
    return ("INT", {"default": default, "min": low, "max": high, "tooltip": tooltip})


def model_input(tooltip: str = "The diffusion model to patch (it is cloned, never changed in place).") -> tuple:
    return ("MODEL", {"tooltip": tooltip})


PATCHED_MODEL_TOOLTIP = "A patched clone of the input model."
