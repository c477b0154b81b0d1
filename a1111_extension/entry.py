"""Registration of the extension's callbacks; called by ``scripts/vpred_ztsnr.py`` every time the webui loads it
(the webui clears all callbacks before (re)loading scripts)."""

from __future__ import annotations


def register() -> None:
    from modules import script_callbacks

    from . import a1111_model, options, xyz, yaml_auto

    script_callbacks.on_ui_settings(options.on_ui_settings)
    script_callbacks.on_before_ui(xyz.add_axes)
    script_callbacks.on_model_loaded(yaml_auto.on_model_loaded)
    script_callbacks.on_model_loaded(a1111_model.on_model_loaded)
    script_callbacks.on_app_started(yaml_auto.on_app_started)
