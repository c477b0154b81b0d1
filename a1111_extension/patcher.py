"""reForge / Forge: per-sampling-pass patches on a clone of the unet patcher (``process_before_every_sampling``).

The host resets ``p.sd_model.forge_objects`` from its LoRA-applied copy before every pass, so the clone (and
with it every patch) is dropped when the pass ends; nothing global is modified.
- model sampling: reForge object patch ``model_sampling`` (a fresh ModelSamplingDiscrete + V_PREDICTION/EPS with
  the plan's sigmas, computed from scratch so a host ZTSNR is never applied twice); Forge object patch
  ``predictor`` (a copy of the host's predictor with the plan's sigmas and prediction type).
- k-diffusion schedule: the pass's own sampler wrapper gets the same sigmas; a DDIM / PLMS / UniPC pass gets the
  plan's ``alphas_cumprod`` on the model (``pass_alphas``, put back in postprocess).
- CFG rescale: ``set_model_sampler_post_cfg_function`` (the A1111 cfg_denoised callback never fires there).
"""

from __future__ import annotations

import copy
import logging

from vpred_core.settings import SamplingPlan

from . import pass_alphas
from .host import FORGE
from .logic_cfg import post_cfg_rescale

logger = logging.getLogger(__name__)
FORGE_PREDICTION_TYPES = {"v": "v_prediction", "eps": "epsilon"}


def _reforge_model_sampling(unet, plan: SamplingPlan, sigmas):
    from ldm_patched.modules import model_sampling as ms

    current = unet.model.model_sampling
    if plan.prediction is None:
        kind = ms.V_PREDICTION if isinstance(current, ms.V_PREDICTION) else ms.EPS
    else:
        kind = ms.V_PREDICTION if plan.prediction == "v" else ms.EPS
    cls = type("VPredModelSampling", (ms.ModelSamplingDiscrete, kind), {})
    obj = cls(unet.model.model_config)
    obj.set_sigmas(sigmas)
    return obj


def _forge_predictor(unet, plan: SamplingPlan, sigmas):
    predictor = copy.deepcopy(unet.model.predictor)
    if plan.prediction is not None:
        predictor.prediction_type = FORGE_PREDICTION_TYPES[plan.prediction]
    predictor.set_sigmas(sigmas)
    return predictor


def _host_abar(sd_model):
    original = getattr(sd_model, "alphas_cumprod_original", None)
    return original if original is not None else pass_alphas.host_alphas(sd_model)


def _update_sampler_schedule(sampler, sigmas, predictor=None) -> None:
    """Give the pass's k-diffusion wrapper the plan's schedule: Forge's ``ForgeScheduleLinker`` reads its (read-only)
    sigmas from its ``predictor``; reForge's CompVis wrapper keeps ``sigmas`` / ``log_sigmas`` buffers."""
    wrap = getattr(sampler, "model_wrap", None)
    if wrap is None:
        return
    if predictor is not None and hasattr(wrap, "predictor"):
        wrap.predictor = predictor
        return
    if not hasattr(wrap, "sigmas") or not hasattr(wrap, "log_sigmas"):
        return
    device = wrap.sigmas.device
    wrap.sigmas = sigmas.to(device)
    wrap.log_sigmas = sigmas.log().to(device)


def pass_cfg_scale(p) -> float:
    """The scale the host's CFG uses in this pass (Forge leaves it out of the post-cfg args; its hires pass uses
    ``hr_cfg``)."""
    hr_cfg = getattr(p, "hr_cfg", None)
    if getattr(p, "is_hr_pass", False) and hr_cfg is not None:
        return float(hr_cfg)
    return float(p.cfg_scale)


def patch_unet(p, host: str, plan: SamplingPlan | None, settings) -> None:
    """Clone the pass's unet patcher, attach the patches and put the clone in place for this pass."""
    unet = p.sd_model.forge_objects.unet.clone()
    if plan is not None:
        sigmas = plan.sigmas(_host_abar(p.sd_model))
        if host == FORGE:
            predictor = _forge_predictor(unet, plan, sigmas)
            unet.add_object_patch("predictor", predictor)
            _update_sampler_schedule(getattr(p, "sampler", None), sigmas, predictor)
        else:
            unet.add_object_patch("model_sampling", _reforge_model_sampling(unet, plan, sigmas))
            _update_sampler_schedule(getattr(p, "sampler", None), sigmas)
        if pass_alphas.is_timestep_sampler(getattr(p, "sampler", None)):
            pass_alphas.install(p, sigmas)
    if settings.cfg_rescale.enabled:
        unet.set_model_sampler_post_cfg_function(make_post_cfg(settings.cfg_rescale, pass_cfg_scale(p)))
    p.sd_model.forge_objects.unet = unet


def make_post_cfg(cfg_settings, fallback_scale: float):
    """A post-cfg function closing over this request's settings (no global state)."""

    def vpred_rescale_post_cfg(args):
        return post_cfg_rescale(args, cfg_settings, fallback_scale)

    return vpred_rescale_post_cfg
