"""ComfyUI glue for model sampling: read what a MODEL already is, resolve ``auto`` settings, and build a
ComfyUI model_sampling object whose sigma table is the core's float64 schedule.

ComfyUI is imported lazily inside functions so that the node schemas import without it.
"""

from __future__ import annotations

import logging

from ..vpred_core.sampling.schedules import ScheduleSpec
from ..vpred_core.settings import Detected, ModelSamplingSettings, SamplingPlan, resolve_model_sampling
from .common import DETECTED_SETTINGS_KEY

logger = logging.getLogger(__name__)

# ComfyUI's make_beta_schedule names -> core BETA_SCHEDULE_IDS (ComfyUI "linear" is the SD scaled-linear one).
COMFY_TO_CORE_BETA = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine"}
COMFY_DEFAULT_BETA = "linear"
# ZTSNR schedules clamp abar_T to ~4.9e-8 (sigma_max 4518); ordinary SD schedules end near sigma 14.6.
ZTSNR_SIGMA_MAX_THRESHOLD = 1000.0
COMFY_PREDICTION_CLASSES = {"v": "V_PREDICTION", "eps": "EPS"}
HOST_SOURCE = "ComfyUI model detection"


def host_prediction(model_sampling) -> str | None:
    """Prediction id of a ComfyUI model_sampling object (V_PREDICTION before EPS: it subclasses EPS)."""
    import comfy.model_sampling as cms

    if isinstance(model_sampling, (cms.EDM, cms.CONST, cms.X0)):
        return None
    if isinstance(model_sampling, cms.V_PREDICTION):
        return "v"
    if isinstance(model_sampling, cms.EPS):
        return "eps"
    return None


def host_detected(model) -> Detected:
    """Settings of a MODEL as ComfyUI loaded it (its model_sampling object and model_config)."""
    ms = model.get_model_object("model_sampling")
    config = getattr(getattr(model, "model", None), "model_config", None)
    sampling_settings = dict(getattr(config, "sampling_settings", None) or {})
    beta = COMFY_TO_CORE_BETA.get(sampling_settings.get("beta_schedule", COMFY_DEFAULT_BETA))
    sigmas = getattr(ms, "sigmas", None)
    ztsnr = getattr(ms, "zsnr", None)
    if ztsnr is None and sigmas is not None:
        ztsnr = float(sigmas[-1]) > ZTSNR_SIGMA_MAX_THRESHOLD
    return Detected(
        prediction=host_prediction(ms),
        ztsnr=None if ztsnr is None else bool(ztsnr),
        beta_schedule=beta,
        linear_start=getattr(ms, "linear_start", None),
        linear_end=getattr(ms, "linear_end", None),
        timesteps=getattr(ms, "num_timesteps", None),
        source=HOST_SOURCE,
    )


def stated_settings(model) -> Detected:
    """What the pack's checkpoint loader found the file (or the probe) to state, recorded on the model; else nothing."""
    recorded = getattr(model, "model_options", {}).get(DETECTED_SETTINGS_KEY)
    return recorded if isinstance(recorded, Detected) else Detected()


def resolve_plan(model, settings: ModelSamplingSettings, beta_auto: bool) -> SamplingPlan:
    """The core's resolution (forced > stated > ComfyUI's own) for a MODEL; ValueError when no prediction is known."""
    plan = resolve_model_sampling(settings, stated_settings(model), host_detected(model), beta_auto)
    if plan.prediction is None:
        raise ValueError("prediction is 'auto' but the model's prediction type is unknown; choose 'v' or 'eps'")
    if plan.prediction not in COMFY_PREDICTION_CLASSES:
        raise ValueError(f"prediction {plan.prediction!r} is not supported by this node; choose 'v' or 'eps'")
    return plan


def model_sampling_class(prediction: str):
    """ModelSamplingDiscrete combined with ComfyUI's V_PREDICTION or EPS, as the built-in node does."""
    import comfy.model_sampling as cms

    prediction_type = getattr(cms, COMFY_PREDICTION_CLASSES[prediction])
    name = f"VPredZTSNRModelSampling_{prediction}"
    return type(name, (cms.ModelSamplingDiscrete, prediction_type), {"__module__": __name__})


def build_model_sampling(prediction: str, spec: ScheduleSpec):
    """A ComfyUI model_sampling object whose sigmas are ``spec.sigmas()`` (core float64, stored as float32)."""
    if spec.terminal == "exact" and spec.ztsnr:
        raise ValueError("terminal 'exact' gives sigma_max = inf, which ComfyUI samplers cannot use")
    sampling = model_sampling_class(prediction)(None)
    sampling.set_sigmas(spec.sigmas())
    sampling.num_timesteps = spec.timesteps
    sampling.linear_start, sampling.linear_end, sampling.zsnr = spec.linear_start, spec.linear_end, spec.ztsnr
    return sampling


def patch_model_sampling(model, settings: ModelSamplingSettings, beta_auto: bool = True):
    """clone() + add_object_patch("model_sampling", ...) with resolved settings; returns (model, plan)."""
    plan = resolve_plan(model, settings, beta_auto)
    patched = model.clone()
    patched.add_object_patch("model_sampling", build_model_sampling(plan.prediction, plan.spec))
    logger.debug("model sampling: %s (%s)", plan.summary(), plan.describe_sources())
    return patched, plan


def describe(plan: SamplingPlan) -> str:
    """One line describing an applied model sampling."""
    prediction, spec = plan.prediction, plan.spec
    ztsnr = f"ZTSNR on ({spec.terminal}, sigma_max {spec.sigma_max:.2f})" if spec.ztsnr else "ZTSNR off"
    return (f"prediction={prediction}, {ztsnr}, betas={spec.beta_schedule} "
            f"{spec.linear_start:g}..{spec.linear_end:g} over {spec.timesteps} steps")

