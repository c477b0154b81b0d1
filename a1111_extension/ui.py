"""The accordion (gradio) and its infotext paste-back fields."""

from __future__ import annotations

import logging

import gradio as gr

from vpred_core.sampling.cfg import RESCALE_SPACE_IDS
from vpred_core.sampling.uncond import UNCOND_MODE_IDS
from vpred_core.settings import PREDICTION_SETTING_IDS, ZTSNR_SETTING_IDS

from . import yaml_auto
from .logic_ui import ARG_NAMES, ui_values_from_infotext

logger = logging.getLogger(__name__)
TITLE = "V-Pred / ZTSNR"
PHI_STEP = 0.05


def build_components(script, defaults: dict) -> list:
    """Create the accordion; return its inputs in ARG_NAMES order."""
    d = defaults
    eid = script.elem_id
    with gr.Accordion(TITLE, open=False, elem_id=eid("vpred_accordion")):
        enabled = gr.Checkbox(label="Enable", value=d["enabled"], elem_id=eid("vpred_enabled"))
        with gr.Row():
            prediction = gr.Radio(list(PREDICTION_SETTING_IDS), value=d["prediction"], label="Prediction",
                                  elem_id=eid("vpred_prediction"))
            ztsnr = gr.Radio(list(ZTSNR_SETTING_IDS), value=d["ztsnr"], label="Zero terminal SNR",
                             elem_id=eid("vpred_ztsnr"))
        with gr.Row():
            beta_end = gr.Number(value=d["beta_end"], label="beta_end override (0 = auto)",
                                 elem_id=eid("vpred_beta_end"))
            trailing = gr.Checkbox(value=d["trailing"], label="Trailing start (first step at t = T)",
                                   elem_id=eid("vpred_trailing"))
        with gr.Row():
            phi = gr.Slider(0.0, 1.0, value=d["phi"], step=PHI_STEP, label="CFG rescale phi (0 = off)",
                            elem_id=eid("vpred_phi"))
            space = gr.Radio(list(RESCALE_SPACE_IDS), value=d["space"], label="Rescale space",
                             elem_id=eid("vpred_space"))
        with gr.Row():
            sigma_high = gr.Number(value=d["sigma_high"], label="Rescale window: sigma high (0 = no limit)",
                                   elem_id=eid("vpred_sigma_high"))
            sigma_low = gr.Number(value=d["sigma_low"], label="Rescale window: sigma low",
                                  elem_id=eid("vpred_sigma_low"))
        uncond = gr.Radio(list(UNCOND_MODE_IDS), value=d["uncond"], label="Empty negative prompt",
                          elem_id=eid("vpred_uncond"))
        with gr.Row():
            button = gr.Button("Write YAMLs for all v-pred checkpoints", elem_id=eid("vpred_write_yamls"))
            status = gr.HTML()
        button.click(fn=yaml_auto.write_all_status, inputs=[], outputs=[status])
    return [enabled, prediction, ztsnr, beta_end, trailing, phi, space, sigma_high, sigma_low, uncond]


def _getter(name: str):
    def get(params: dict):
        try:
            values = ui_values_from_infotext(params)
        except ValueError as exc:
            logger.warning("V-Pred: ignoring pasted parameters: %s", exc)
            return None
        return None if values is None else values[name]

    return get


def infotext_fields(components: list) -> list:
    """(component, getter) pairs for the webui's paste-back."""
    return [(component, _getter(name)) for name, component in zip(ARG_NAMES, components, strict=True)]
