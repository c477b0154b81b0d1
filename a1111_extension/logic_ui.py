"""Host-free UI model: argument order, option ids, settings <-> UI values, infotext paste-back, XYZ overrides."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from vpred_core.sampling.cfg import RESCALE_SPACE_IDS
from vpred_core.sampling.uncond import UNCOND_MODE_IDS
from vpred_core.settings import (
    PREDICTION_SETTING_IDS,
    ZTSNR_SETTING_IDS,
    CfgRescaleSettings,
    ModelSamplingSettings,
    PackSettings,
    SamplingSettings,
    UncondSettings,
    from_infotext,
    infotext_key,
    to_infotext,
)

OPTION_PREFIX = "vpred_"
SETTINGS_SECTION = ("vpred_ztsnr", "V-Pred / ZTSNR")
AUTO_BETA_END = 0.0
NO_SIGMA_LIMIT = 0.0
TRAILING = "trailing"
HOST_SPACING = "host"
ENABLED_KEY = infotext_key("enabled")
RESOLVED_KEY = infotext_key("resolved")
XYZ_ATTR = "vpred_xyz_overrides"

# Order of the values the accordion passes to process(); must match ui.build_components().
ARG_NAMES = (
    "enabled", "prediction", "ztsnr", "beta_end", "trailing",
    "phi", "space", "sigma_high", "sigma_low", "uncond",
)


@dataclass(frozen=True)
class OptionSpec:
    """One webui setting of the pack: id suffix, default, label and (for radios) the choices."""

    key: str
    default: object
    label: str
    choices: tuple = ()

    @property
    def option_id(self) -> str:
        return OPTION_PREFIX + self.key


OPTION_SPECS = (
    OptionSpec("enabled", True, "Enable the V-Pred / ZTSNR accordion by default"),
    OptionSpec("prediction", "auto", "Default prediction type", PREDICTION_SETTING_IDS),
    OptionSpec("ztsnr", "auto", "Default zero terminal SNR", ZTSNR_SETTING_IDS),
    OptionSpec("trailing", True, "Trailing start (first step at t = T) by default"),
    OptionSpec("phi", 0.0, "Default CFG rescale phi (0 = off)"),
    OptionSpec("space", "v", "CFG rescale space (v matches ComfyUI RescaleCFG)", RESCALE_SPACE_IDS),
    OptionSpec("uncond", "host_default", "Default empty-negative mode", UNCOND_MODE_IDS),
    OptionSpec(
        "auto_yaml", True,
        "Write a crafted <checkpoint>.yaml beside v-pred checkpoints that have none (never overwrites); "
        "makes a stock webui load them as v-pred",
    ),
)
OPTION_DEFAULTS = {spec.key: spec.default for spec in OPTION_SPECS}


def defaults_from_options(get_option) -> dict:
    """UI defaults {arg name: value}; ``get_option(option_id, default)`` reads the host's settings."""
    values = {key: get_option(OPTION_PREFIX + key, default) for key, default in OPTION_DEFAULTS.items()}
    values.update(beta_end=AUTO_BETA_END, sigma_high=NO_SIGMA_LIMIT, sigma_low=NO_SIGMA_LIMIT)
    return {name: values[name] for name in ARG_NAMES}


@dataclass(frozen=True)
class UiRequest:
    """What the accordion asked for: enabled flag, pack settings and whether beta_end was left on auto."""

    enabled: bool
    settings: PackSettings
    beta_end_auto: bool


def _sigma_high(value) -> float:
    value = float(value or 0.0)
    return math.inf if value <= NO_SIGMA_LIMIT else value


def args_to_request(args, overrides: dict | None = None) -> UiRequest:
    """UiRequest from the accordion's positional values (ARG_NAMES order) plus XYZ overrides by arg name."""
    values = dict(zip(ARG_NAMES, args, strict=False))
    values.update(overrides or {})
    beta_end = float(values["beta_end"] or AUTO_BETA_END)
    sampling = ModelSamplingSettings(prediction=values["prediction"], ztsnr=values["ztsnr"])
    if beta_end > AUTO_BETA_END:
        sampling = replace(sampling, linear_end=beta_end)
    settings = PackSettings(
        model_sampling=sampling,
        sampling=SamplingSettings(spacing=TRAILING if values["trailing"] else HOST_SPACING),
        cfg_rescale=CfgRescaleSettings(
            phi=float(values["phi"]), space=values["space"],
            sigma_high=_sigma_high(values["sigma_high"]), sigma_low=float(values["sigma_low"] or 0.0),
        ),
        uncond=UncondSettings(mode=values["uncond"]),
    )
    return UiRequest(bool(values["enabled"]), settings, beta_end <= AUTO_BETA_END)


def infotext_for(settings: PackSettings, resolved: str) -> dict[str, str]:
    """Prefixed infotext entries: the core's settings keys plus the enabled flag and a resolved summary."""
    return {ENABLED_KEY: "True", **to_infotext(settings), RESOLVED_KEY: resolved}


def has_pack_infotext(params: dict) -> bool:
    """True when pasted parameters carry any of the pack's prefixed keys."""
    return any(str(key).startswith(infotext_key("")) for key in params)


def ui_values_from_infotext(params: dict) -> dict | None:
    """{arg name: UI value} for pasted parameters, or None when the infotext has no pack keys.

    Raises ValueError (naming the key) for malformed values."""
    if not has_pack_infotext(params):
        return None
    settings = from_infotext(params)
    ms, cfg = settings.model_sampling, settings.cfg_rescale
    return {
        "enabled": str(params.get(ENABLED_KEY, "True")).strip().lower() == "true",
        "prediction": ms.prediction,
        "ztsnr": ms.ztsnr,
        "beta_end": ms.linear_end,
        "trailing": settings.sampling.spacing != HOST_SPACING,
        "phi": cfg.phi,
        "space": cfg.space,
        "sigma_high": NO_SIGMA_LIMIT if math.isinf(cfg.sigma_high) else cfg.sigma_high,
        "sigma_low": cfg.sigma_low,
        "uncond": settings.uncond.mode,
    }


# XYZ axes: (axis label, arg name, value parser, choices or None)
XYZ_AXES = (
    ("VPred CFG rescale phi", "phi", float, None),
    ("VPred uncond mode", "uncond", str, UNCOND_MODE_IDS),
    ("VPred ZTSNR", "ztsnr", str, ZTSNR_SETTING_IDS),
)


def xyz_override(current: dict | None, arg_name: str, value) -> dict:
    """New overrides dict with ``arg_name`` set (XYZ also enables the pack for that cell)."""
    return {**(current or {}), arg_name: value, "enabled": True}
