"""XYZ-grid axes (phi, uncond mode, ZTSNR) added to the built-in script's module at UI build time."""

from __future__ import annotations

import logging

from .logic_ui import XYZ_ATTR, XYZ_AXES, xyz_override

logger = logging.getLogger(__name__)
XYZ_MODULE_NAMES = ("xyz_grid.py", "xy_grid.py")


def _xyz_module():
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ in XYZ_MODULE_NAMES and hasattr(data.module, "AxisOption"):
            return data.module
    return None


def _apply(arg_name: str):
    def apply(p, value, _values):
        setattr(p, XYZ_ATTR, xyz_override(getattr(p, XYZ_ATTR, None), arg_name, value))

    return apply


def add_axes() -> int:
    """Append the pack's axes once; return how many were added."""
    module = _xyz_module()
    if module is None:
        logger.info("V-Pred: XYZ grid script not found; no axes added")
        return 0
    existing = {option.label for option in module.axis_options}
    added = 0
    for label, arg_name, parser, choices in XYZ_AXES:
        if label in existing:
            continue
        kwargs = {"choices": (lambda c=choices: list(c))} if choices else {}
        module.axis_options.append(module.AxisOption(label, parser, _apply(arg_name), **kwargs))
        added += 1
    return added
