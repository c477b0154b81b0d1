"""What the user asks, in every form the webui offers: the accordion, the settings section, pasted infotext, XYZ-grid
axes and API arguments. One host-free model of the arguments (:data:`ARGS`, :func:`request_from_args`,
:class:`UiRequest`) serves all of them; gradio is imported only where components are built.

API (``/sdapi/v1/txt2img`` / ``img2img``): ``"alwayson_scripts": {"V-Pred / ZTSNR": {"args": [...]}}`` takes either
the values in :data:`ARG_NAMES` order (positional, as the webui fills script arguments; missing trailing values keep
their defaults) or one dict of named values, e.g. ``{"args": [{"ztsnr": "on", "phi": 0.7}]}``: unknown names and
bad values are errors (logged, recorded as ``VPred error`` in the infotext, and the pack is off for that image).
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass

from ..vpred_core.sampling.cfg import RESCALE_SPACE_IDS
from ..vpred_core.sampling.denoiser import FIRST_STEP_IDS
from ..vpred_core.sampling.schedules import (
    BETA_SCHEDULE_IDS,
    NUM_TRAIN_TIMESTEPS,
    SD_LINEAR_END,
    SD_LINEAR_START,
    TERMINAL_IDS,
)
from ..vpred_core.sampling.uncond import UNCOND_MODE_IDS
from ..vpred_core.settings import (
    AUTO,
    HOST,
    PREDICTION_SETTING_IDS,
    TRAILING,
    ZTSNR_SETTING_IDS,
    CfgRescaleSettings,
    ModelSamplingSettings,
    PackSettings,
    SamplingSettings,
    UncondSettings,
    from_infotext,
    has_pack_infotext,
    infotext_key,
    to_infotext,
)

logger = logging.getLogger(__name__)

TITLE = "V-Pred / ZTSNR"
OPTION_PREFIX = "vpred_"
SETTINGS_SECTION = ("vpred_ztsnr", "V-Pred / ZTSNR")
XYZ_ATTR = "vpred_xyz_overrides"
AUTO_BETA = 0.0  # beta_end / linear_start 0 = not forced
NO_SIGMA_LIMIT = 0.0  # rescale window sigma_high 0 = no upper limit
WEBUI_SPACING_IDS = (AUTO, TRAILING, HOST)
BETA_SCHEDULE_CHOICES = (AUTO,) + BETA_SCHEDULE_IDS
DETECTION_KEY = infotext_key("detection")
ERROR_KEY = infotext_key("error")
INFO_ONLY_KEYS = (DETECTION_KEY, ERROR_KEY)


@dataclass(frozen=True)
class Setting:
    """One accordion input or webui option: name (API dict key, XYZ mapping; the option id adds the prefix),
    default, label and choices (radios)."""

    name: str
    default: object
    label: str
    choices: tuple = ()

    @property
    def option_id(self) -> str:
        return OPTION_PREFIX + self.name


# The order the webui passes the values to the Script (and API positional args); new inputs are appended.
ARGS = (
    Setting("enabled", True, "Enable"),
    Setting("prediction", AUTO, "Prediction", PREDICTION_SETTING_IDS),
    Setting("ztsnr", AUTO, "Zero terminal SNR", ZTSNR_SETTING_IDS),
    Setting("beta_end", AUTO_BETA, "beta_end (linear end; 0 = auto)"),
    Setting("spacing", AUTO, "Timestep spacing (auto = trailing where v / ZTSNR is applied)", WEBUI_SPACING_IDS),
    Setting("phi", 0.0, "CFG rescale phi (0 = off)"),
    Setting("space", "v", "Rescale space", RESCALE_SPACE_IDS),
    Setting("sigma_high", NO_SIGMA_LIMIT, "Rescale window: sigma high (0 = no limit)"),
    Setting("sigma_low", 0.0, "Rescale window: sigma low"),
    Setting("uncond", "host_default", "Empty negative prompt", UNCOND_MODE_IDS),
    Setting("terminal", "host_clamp", "ZTSNR terminal (exact = abar_T 0, first step x0 = -v)", TERMINAL_IDS),
    Setting("first_step", AUTO, "First step from SNR 0 (auto = DDIM step when the schedule starts there)",
        FIRST_STEP_IDS),
    Setting("beta_schedule", AUTO, "Beta schedule (auto = detected, else the webui's)", BETA_SCHEDULE_CHOICES),
    Setting("linear_start", AUTO_BETA, "linear_start (0 = SD default 0.00085)"),
)
ARG_NAMES = tuple(arg.name for arg in ARGS)
ARG_DEFAULTS = {arg.name: arg.default for arg in ARGS}
LEGACY_TRAILING_FLAG = {True: TRAILING, False: HOST}  # before 0.2 slot 4 was a "trailing" checkbox


OPTION_SPECS = (
    Setting("enabled", True, "Enable the V-Pred / ZTSNR accordion by default (it acts only on checkpoints that "
                                "state v-prediction / ZTSNR, or on what you force)"),
    Setting("prediction", AUTO, "Default prediction type", PREDICTION_SETTING_IDS),
    Setting("ztsnr", AUTO, "Default zero terminal SNR", ZTSNR_SETTING_IDS),
    Setting("spacing", AUTO, "Default timestep spacing", WEBUI_SPACING_IDS),
    Setting("terminal", "host_clamp", "Default ZTSNR terminal", TERMINAL_IDS),
    Setting("first_step", AUTO, "Default first step from SNR 0", FIRST_STEP_IDS),
    Setting("phi", 0.0, "Default CFG rescale phi (0 = off)"),
    Setting("space", "v", "CFG rescale space (v matches ComfyUI RescaleCFG)", RESCALE_SPACE_IDS),
    Setting("uncond", "host_default", "Default empty-negative mode", UNCOND_MODE_IDS),
    Setting("auto_yaml", True, "Write a crafted <checkpoint>.yaml beside v-pred checkpoints that have none (never "
                                  "overwrites); makes a stock webui load them as v-pred"),
    Setting("probe", True, "Probe the weights of a checkpoint that states no prediction type (a few UNet calls on "
                              "load, cached per file)"),
)
OPTION_DEFAULTS = {spec.name: spec.default for spec in OPTION_SPECS}


def defaults_from_options(get_option) -> dict:
    """UI defaults {arg name: value}; ``get_option(option_id, default)`` reads the host's settings."""
    values = dict(ARG_DEFAULTS)
    values.update({key: get_option(OPTION_PREFIX + key, default) for key, default in OPTION_DEFAULTS.items()
                   if key in values})
    return values


@dataclass(frozen=True)
class UiRequest:
    """What the accordion asked for: enabled flag, pack settings and whether the betas were left on auto."""

    enabled: bool
    settings: PackSettings
    betas_auto: bool


def _number(values: dict, name: str) -> float:
    try:
        return float(values[name] or 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {values[name]!r}") from None


def _values_from_args(args, defaults: dict | None) -> dict:
    values = dict(defaults or ARG_DEFAULTS)
    if len(args) >= 1 and isinstance(args[0], dict):
        unknown = sorted(set(args[0]) - set(ARG_NAMES))
        if unknown:
            raise ValueError(f"unknown argument(s) {unknown}; known: {list(ARG_NAMES)}")
        values.update(args[0])
    else:
        values.update(zip(ARG_NAMES, args, strict=False))
    if isinstance(values["spacing"], bool):
        values["spacing"] = LEGACY_TRAILING_FLAG[values["spacing"]]
    return values


def request_from_args(args, overrides: dict | None = None, defaults: dict | None = None) -> UiRequest:
    """UiRequest from the accordion's values (ARG_NAMES order) or one dict of named values, plus XYZ overrides.
    ValueError names the argument for a bad value."""
    values = _values_from_args(args, defaults)
    values.update(overrides or {})
    beta_end, linear_start = _number(values, "beta_end"), _number(values, "linear_start")
    schedule = values["beta_schedule"]
    betas_auto = schedule == AUTO and beta_end <= AUTO_BETA and linear_start <= AUTO_BETA
    try:
        sampling = ModelSamplingSettings(
            prediction=values["prediction"], ztsnr=values["ztsnr"],
            beta_schedule="scaled_linear" if schedule == AUTO else schedule,
            linear_start=linear_start if linear_start > AUTO_BETA else SD_LINEAR_START,
            linear_end=beta_end if beta_end > AUTO_BETA else SD_LINEAR_END,
            timesteps=NUM_TRAIN_TIMESTEPS, terminal=values["terminal"])
        settings = PackSettings(
            model_sampling=sampling,
            sampling=SamplingSettings(spacing=values["spacing"], first_step=values["first_step"]),
            cfg_rescale=CfgRescaleSettings(phi=_number(values, "phi"), space=values["space"],
                                           sigma_high=_sigma_high(values["sigma_high"]),
                                           sigma_low=_number(values, "sigma_low")),
            uncond=UncondSettings(mode=values["uncond"]),
        )
    except ValueError as exc:
        raise ValueError(f"V-Pred / ZTSNR arguments: {exc}") from None
    return UiRequest(bool(values["enabled"]), settings, betas_auto)


def _sigma_high(value) -> float:
    value = float(value or 0.0)
    return math.inf if value <= NO_SIGMA_LIMIT else value


def validation_message(*values) -> str:
    """HTML warning for the accordion's current values (ARG_NAMES order), "" when they are valid."""
    try:
        request_from_args(values)
    except ValueError as exc:
        return f"<p style='color: var(--error-text-color, #c00)'>{html.escape(str(exc))}</p>"
    return ""


# ---- infotext


def infotext_for(applied: PackSettings, detection: str = "") -> dict[str, str]:
    """The applied settings as prefixed infotext keys (a paste forces exactly them), plus where the model-sampling
    values came from (information only, never pasted)."""
    entries = to_infotext(applied)
    if detection:
        entries[DETECTION_KEY] = detection
    return entries


def ui_values_from_infotext(params: dict) -> dict:
    """{arg name: UI value} for pasted parameters. Without any ``VPred`` key the pack is switched off (the image
    was made without it, so the host alone reproduces it) and nothing else is touched (None values).
    Raises ValueError (naming the key) for malformed values."""
    if not has_pack_infotext({k: v for k, v in params.items() if k not in INFO_ONLY_KEYS}):
        return {name: (False if name == "enabled" else None) for name in ARG_NAMES}
    settings = from_infotext(params)
    ms, cfg, sampling = settings.model_sampling, settings.cfg_rescale, settings.sampling
    betas_given = infotext_key("linear end") in params
    return {
        "enabled": True,
        "prediction": ms.prediction,
        "ztsnr": ms.ztsnr,
        "beta_end": ms.linear_end if betas_given else AUTO_BETA,
        "spacing": sampling.spacing if sampling.spacing in WEBUI_SPACING_IDS else TRAILING,
        "phi": cfg.phi,
        "space": cfg.space,
        "sigma_high": NO_SIGMA_LIMIT if math.isinf(cfg.sigma_high) else cfg.sigma_high,
        "sigma_low": cfg.sigma_low,
        "uncond": settings.uncond.mode,
        "terminal": ms.terminal,
        "first_step": sampling.first_step,
        "beta_schedule": ms.beta_schedule if betas_given else AUTO,
        "linear_start": ms.linear_start if betas_given else AUTO_BETA,
    }


# ---- XYZ grid axes: (axis label, arg name, value parser, choices or None)
XYZ_AXES = (
    ("VPred CFG rescale phi", "phi", float, None),
    ("VPred uncond mode", "uncond", str, UNCOND_MODE_IDS),
    ("VPred ZTSNR", "ztsnr", str, ZTSNR_SETTING_IDS),
    ("VPred first step", "first_step", str, FIRST_STEP_IDS),
    ("VPred spacing", "spacing", str, WEBUI_SPACING_IDS),
)
XYZ_MODULE_NAMES = ("xyz_grid.py", "xy_grid.py")


def xyz_override(current: dict | None, arg_name: str, value) -> dict:
    """New overrides dict with ``arg_name`` set (an XYZ value also enables the pack for that cell)."""
    return {**(current or {}), arg_name: value, "enabled": True}


def _xyz_module():
    from modules import scripts

    for data in scripts.scripts_data:
        if data.script_class.__module__ in XYZ_MODULE_NAMES and hasattr(data.module, "AxisOption"):
            return data.module
    return None


def _xyz_apply(arg_name: str):
    def apply(p, value, _values):
        setattr(p, XYZ_ATTR, xyz_override(getattr(p, XYZ_ATTR, None), arg_name, value))

    return apply


def add_xyz_axes() -> int:
    """Append the pack's axes to the built-in XYZ grid script once (``on_before_ui``); return how many were added."""
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
        module.axis_options.append(module.AxisOption(label, parser, _xyz_apply(arg_name), **kwargs))
        added += 1
    return added


# ---- webui settings section


def get_option(option_id: str, default):
    """The webui setting ``option_id`` (its default outside a running webui)."""
    try:
        from modules import shared
    except ImportError:
        return default
    return getattr(shared.opts, option_id, default) if getattr(shared, "opts", None) is not None else default


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    for spec in OPTION_SPECS:
        if spec.choices:
            component, args = gr.Radio, {"choices": list(spec.choices)}
        elif isinstance(spec.default, bool):
            component, args = gr.Checkbox, {}
        else:
            component, args = gr.Slider, {"minimum": 0.0, "maximum": 1.0, "step": 0.05}
        shared.opts.add_option(
            spec.option_id, shared.OptionInfo(spec.default, spec.label, component, args, section=SETTINGS_SECTION)
        )


# ---- the accordion (gradio)

PHI_STEP = 0.05


def build_components(elem_id, defaults: dict, on_write_yamls, on_show_detection) -> list:
    """Create the accordion; return its inputs in ARG_NAMES order. ``elem_id`` is the Script's elem_id."""
    import gradio as gr

    d = defaults
    made = {}

    def radio(name, **kw):
        arg = ARGS[ARG_NAMES.index(name)]
        made[name] = gr.Radio(list(arg.choices), value=d[name], label=arg.label, elem_id=elem_id(f"vpred_{name}"), **kw)

    def number(name):
        arg = ARGS[ARG_NAMES.index(name)]
        made[name] = gr.Number(value=d[name], label=arg.label, elem_id=elem_id(f"vpred_{name}"))

    with gr.Accordion(TITLE, open=False, elem_id=elem_id("vpred_accordion")):
        made["enabled"] = gr.Checkbox(label=ARGS[0].label, value=d["enabled"], elem_id=elem_id("vpred_enabled"))
        with gr.Row():
            radio("prediction")
            radio("ztsnr")
            radio("terminal")
        with gr.Row():
            made["beta_schedule"] = gr.Dropdown(list(BETA_SCHEDULE_CHOICES), value=d["beta_schedule"],
                                                label=ARGS[ARG_NAMES.index("beta_schedule")].label,
                                                elem_id=elem_id("vpred_beta_schedule"))
            number("linear_start")
            number("beta_end")
        with gr.Row():
            radio("spacing")
            radio("first_step")
        with gr.Row():
            made["phi"] = gr.Slider(0.0, 1.0, value=d["phi"], step=PHI_STEP, label=ARGS[5].label,
                                    elem_id=elem_id("vpred_phi"))
            radio("space")
        with gr.Row():
            number("sigma_high")
            number("sigma_low")
        radio("uncond")
        warning = gr.HTML()
        with gr.Row():
            detect = gr.Button("Show detection for the loaded checkpoint", elem_id=elem_id("vpred_show_detection"))
            write = gr.Button("Write YAMLs for all v-pred checkpoints", elem_id=elem_id("vpred_write_yamls"))
        status = gr.HTML()
        detect.click(fn=on_show_detection, inputs=[], outputs=[status])
        write.click(fn=on_write_yamls, inputs=[], outputs=[status])
    components = [made[name] for name in ARG_NAMES]
    for component in components:
        component.change(fn=validation_message, inputs=components, outputs=[warning])
    return components


def _paste_getter(name: str):
    def get(params: dict):
        try:
            return ui_values_from_infotext(params)[name]
        except ValueError as exc:
            logger.warning("V-Pred: ignoring pasted parameters: %s", exc)
            return None

    return get


def infotext_fields(components: list) -> list:
    """(component, getter) pairs for the webui's paste-back (and the API's ``infotext`` field)."""
    return [(component, _paste_getter(name)) for name, component in zip(ARG_NAMES, components, strict=True)]
