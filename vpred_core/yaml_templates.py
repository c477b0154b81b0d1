"""Template table and the patches that turn a ``yaml_configs/`` template into a checkpoint's config.

Templates are v-prediction configs with the structure the webuis instantiate (``config.model``). A template is
loaded once, then patched per checkpoint: prediction (``parameterization`` for ldm, scaling/weighting targets
for sgm), beta schedule and ``linear_start``/``linear_end``.
"""

from __future__ import annotations

import copy
import functools
import os

import yaml

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "yaml_configs")
LDM, SGM = "ldm", "sgm"

# (family, variant) -> (template file, config style)
TEMPLATES = {
    ("sd1", "base"): ("sd1_v.yaml", LDM),
    ("sd1", "inpaint"): ("sd1_inpaint_v.yaml", LDM),
    ("sd2", "base"): ("sd2_v.yaml", LDM),
    ("sd2", "inpaint"): ("sd2_inpaint_v.yaml", LDM),
    ("sdxl", "base"): ("sdxl_v.yaml", SGM),
    ("sdxl", "inpaint"): ("sdxl_inpaint_v.yaml", SGM),
    ("sdxl_refiner", "base"): ("sdxl_refiner_v.yaml", SGM),
}
NO_TEMPLATE_REASONS = {
    "instruct_pix2pix": "instruct-pix2pix: A1111's model class accepts only eps/x0 "
                        "(modules/models/diffusion/ddpm_edit.py:85), so no v config exists; eps needs none",
}
SGM_MODULE = "sgm.modules.diffusionmodules."
SGM_TARGETS = {
    "v": (SGM_MODULE + "denoiser_scaling.VScaling", SGM_MODULE + "denoiser_weighting.VWeighting"),
    "eps": (SGM_MODULE + "denoiser_scaling.EpsScaling", SGM_MODULE + "denoiser_weighting.EpsWeighting"),
}
# Our beta schedule ids -> ldm make_beta_schedule names ("linear" there means sqrt-linear squared).
LDM_BETA_NAMES = {"scaled_linear": "linear", "linear": "sqrt_linear", "cosine": "cosine"}
SGM_BETA_SCHEDULES = ("scaled_linear",)  # LegacyDDPMDiscretization only knows this one


class TemplateError(ValueError):
    """No template fits, or the settings cannot be expressed in the host's config."""


def template_for(family: str, variant: str) -> tuple[str, str]:
    """(file name, style) for an architecture; TemplateError with the reason when there is none."""
    if (family, variant) in TEMPLATES:
        return TEMPLATES[(family, variant)]
    reason = NO_TEMPLATE_REASONS.get(variant, f"no template for {family} {variant}")
    raise TemplateError(reason)


@functools.cache
def load_template(name: str, template_dir: str = TEMPLATE_DIR) -> dict:
    """Parsed template (cached; callers get deep copies through :func:`build_config`)."""
    with open(os.path.join(template_dir, name), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def build_config(family: str, variant: str, prediction: str, beta_schedule: str, linear_start: float,
                 linear_end: float) -> tuple[dict, str]:
    """The patched ``{"model": ...}`` mapping and the template name."""
    name, style = template_for(family, variant)
    config = copy.deepcopy(load_template(name))
    params = config["model"]["params"]
    if style == LDM:
        _patch_ldm(params, prediction, beta_schedule, linear_start, linear_end)
    else:
        _patch_sgm(params, prediction, beta_schedule, linear_start, linear_end)
    return config, name


def _patch_ldm(params: dict, prediction: str, beta_schedule: str, start: float, end: float) -> None:
    if prediction == "v":
        params["parameterization"] = "v"
    else:
        params.pop("parameterization", None)
    params["linear_start"], params["linear_end"] = start, end
    if beta_schedule not in LDM_BETA_NAMES:
        raise TemplateError(f"beta schedule {beta_schedule!r} has no ldm equivalent")
    if beta_schedule != "scaled_linear":
        params["beta_schedule"] = LDM_BETA_NAMES[beta_schedule]


def _patch_sgm(params: dict, prediction: str, beta_schedule: str, start: float, end: float) -> None:
    if beta_schedule not in SGM_BETA_SCHEDULES:
        raise TemplateError(f"beta schedule {beta_schedule!r} cannot be expressed in an SDXL webui config")
    denoiser = params["denoiser_config"]["params"]
    scaling, weighting = SGM_TARGETS[prediction]
    denoiser["scaling_config"]["target"] = scaling
    denoiser["weighting_config"]["target"] = weighting
    discretization = denoiser["discretization_config"].setdefault("params", {})
    discretization["linear_start"], discretization["linear_end"] = start, end
