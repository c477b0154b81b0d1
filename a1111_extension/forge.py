"""reForge / Forge backends: the plan's model sampling and the CFG rescale on a clone of the pass's unet patcher.

Called per sampling pass from ``process_before_every_sampling``. The host resets ``p.sd_model.forge_objects`` from
its LoRA-applied copy before every pass, so the clone (and with it every patch) is dropped when the pass ends.
- model sampling: reForge object patch ``model_sampling`` (a fresh ModelSamplingDiscrete + V_PREDICTION/EPS with the
  plan's sigmas, computed from scratch so a host ZTSNR is never applied twice); Forge object patch ``predictor`` (a
  copy of the host's predictor with the plan's sigmas and prediction type).
- k-diffusion schedule: the pass's own sampler wrapper gets the same sigmas (Forge's ``ForgeScheduleLinker`` reads
  them from its predictor; reForge's CompVis wrapper keeps ``sigmas`` / ``log_sigmas`` buffers).
- DDIM / PLMS / UniPC: those samplers never ask the unet for their schedule: the CFG denoiser turns each timestep
  into a sigma through ``sd_model.alphas_cumprod`` and the updates read the same tensor (reForge also keeps a copy in
  ``CFGDenoiserTimesteps.alphas``, taken when the sampler is created; Forge recomputes ``sd_model.alphas_cumprod``
  from the loaded predictor whenever it creates one). For such a pass the plan's ``alphas_cumprod`` is put on the
  model too and the host's tensor is put back after the request (only if the host has not replaced it already).
- CFG rescale: ``set_model_sampler_post_cfg_function`` (the webui's cfg_denoised callback never fires there); Forge
  passes no ``cond_scale`` to post-cfg functions: the pass's ``cfg_scale`` (``hr_cfg`` in the hires pass) is used.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from ..vpred_core.settings import SamplingPlan
from .guidance import post_cfg_rescale

logger = logging.getLogger(__name__)
REFORGE, FORGE = "reforge", "forge"
FORGE_PREDICTION_TYPES = {"v": "v_prediction", "eps": "epsilon"}
HOST_PREDICTION_TYPES = {"v_prediction": "v", "epsilon": "eps"}
SAVED_ATTR = "vpred_saved_pass_alphas"


def unet_model(sd_model):
    return getattr(getattr(getattr(sd_model, "forge_objects", None), "unet", None), "model", None)


def host_prediction(sd_model) -> str | None:
    """The prediction type the loaded unet samples with (reForge: its model_sampling class; Forge: its predictor)."""
    model = unet_model(sd_model)
    predictor = getattr(model, "predictor", None)
    if predictor is not None:
        return HOST_PREDICTION_TYPES.get(getattr(predictor, "prediction_type", None))
    sampling = getattr(model, "model_sampling", None)
    if sampling is None:
        return None
    from ldm_patched.modules import model_sampling as ms

    if isinstance(sampling, ms.V_PREDICTION):
        return "v"
    return "eps" if isinstance(sampling, ms.EPS) else None


# ---- the pass's alphas_cumprod for DDIM / PLMS / UniPC


@dataclass(frozen=True)
class SavedAlphas:
    host: object
    installed: torch.Tensor


def is_timestep_sampler(sampler) -> bool:
    """A webui CompVis timestep sampler (its CFG denoiser estimates eps from timesteps)."""
    wrap_cfg = getattr(sampler, "model_wrap_cfg", None)
    return bool(getattr(wrap_cfg, "classic_ddim_eps_estimation", False))


def host_alphas(sd_model):
    """The host's own ``alphas_cumprod`` (not the one installed here); None when the model has none."""
    saved = getattr(sd_model, SAVED_ATTR, None)
    current = getattr(sd_model, "alphas_cumprod", None)
    if saved is not None and current is saved.installed:
        return saved.host
    return current


def install_pass_alphas(p, sigmas: torch.Tensor) -> None:
    """Give this pass's timestep sampler the plan's schedule (``sigmas`` ascending, as the object patch has them)."""
    sd_model = p.sd_model
    host = host_alphas(sd_model)
    device = host.device if isinstance(host, torch.Tensor) else torch.device("cpu")
    abar = (1.0 / (sigmas.double() ** 2 + 1.0)).float().to(device)
    setattr(sd_model, SAVED_ATTR, SavedAlphas(host, abar))
    sd_model.alphas_cumprod = abar
    wrap_cfg = getattr(p.sampler, "model_wrap_cfg", None)
    if hasattr(wrap_cfg, "alphas"):
        wrap_cfg.alphas = abar


def restore(sd_model) -> bool:
    """Put the host's tensor back unless the host already replaced ours (also after a request that raised)."""
    saved = getattr(sd_model, SAVED_ATTR, None)
    if saved is None:
        return False
    delattr(sd_model, SAVED_ATTR)
    if getattr(sd_model, "alphas_cumprod", None) is not saved.installed:
        return False
    if saved.host is None:
        delattr(sd_model, "alphas_cumprod")
    else:
        sd_model.alphas_cumprod = saved.host
    return True


def repair(models) -> int:
    """Undo the pass alphas an earlier request left on any of ``models``; returns how many were restored."""
    return sum(restore(model) for model in models if getattr(model, SAVED_ATTR, None) is not None)


# ---- the unet patches


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


def host_abar(sd_model):
    """The host's schedule tensor the plan is computed from (its original when it keeps one)."""
    original = getattr(sd_model, "alphas_cumprod_original", None)
    return original if original is not None else host_alphas(sd_model)


def update_sampler_schedule(sampler, sigmas, predictor=None) -> None:
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


def patch_unet(p, host: str, plan: SamplingPlan | None, table_sigmas, settings) -> None:
    """Clone the pass's unet patcher, attach the patches and put the clone in place for this pass.
    ``table_sigmas`` are the plan's sigmas as the host's tables hold them."""
    unet = p.sd_model.forge_objects.unet.clone()
    if plan is not None:
        sampler = getattr(p, "sampler", None)
        if host == FORGE:
            predictor = _forge_predictor(unet, plan, table_sigmas)
            unet.add_object_patch("predictor", predictor)
            update_sampler_schedule(sampler, table_sigmas, predictor)
        else:
            unet.add_object_patch("model_sampling", _reforge_model_sampling(unet, plan, table_sigmas))
            update_sampler_schedule(sampler, table_sigmas)
        if is_timestep_sampler(sampler):
            install_pass_alphas(p, table_sigmas)
    if settings.cfg_rescale.enabled:
        unet.set_model_sampler_post_cfg_function(make_post_cfg(settings.cfg_rescale, pass_cfg_scale(p)))
    p.sd_model.forge_objects.unet = unet


def make_post_cfg(cfg_settings, fallback_scale: float):
    """A post-cfg function closing over this request's settings (no global state)."""

    def vpred_rescale_post_cfg(args):
        return post_cfg_rescale(args, cfg_settings, fallback_scale)

    return vpred_rescale_post_cfg
