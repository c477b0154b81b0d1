"""The pack's section in the webui settings (defaults of the accordion and the YAML auto-generation switch)."""

from __future__ import annotations

from .logic_ui import OPTION_SPECS, SETTINGS_SECTION

PHI_SLIDER = {"minimum": 0.0, "maximum": 1.0, "step": 0.05}


def _component(spec):
    import gradio as gr

    if spec.choices:
        return gr.Radio, {"choices": list(spec.choices)}
    if isinstance(spec.default, bool):
        return gr.Checkbox, {}
    return gr.Slider, PHI_SLIDER


def on_ui_settings() -> None:
    from modules import shared

    for spec in OPTION_SPECS:
        component, args = _component(spec)
        shared.opts.add_option(
            spec.option_id, shared.OptionInfo(spec.default, spec.label, component, args, section=SETTINGS_SECTION)
        )


def get_option(option_id: str, default):
    from modules import shared

    return getattr(shared.opts, option_id, default) if shared.opts is not None else default
