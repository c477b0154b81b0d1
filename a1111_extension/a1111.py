"""A1111 (ldm / sgm models): the plan's model sampling on a model object for one request, and undoing it.

A1111 rebuilds ``alphas_cumprod`` from ``alphas_cumprod_original`` before every batch
(``sd_models.apply_alpha_schedule_override``), so the plan is installed as the original and applied at once (img2img
builds its sampler in ``init``, before that per-batch call); ``parameterization`` carries the prediction type. The
host's values are saved on the model object itself with the checkpoint they belong to, so every patched object can
be put back: the request keeps the objects it patched (a hires or refiner checkpoint is another cached object), and
the next request repairs every object the webui keeps (``sd_checkpoints_limit`` >= 2 caches several, and
``reuse_model_from_already_loaded`` swaps them without a ``model_loaded`` callback).

ZTSNR: with the webui's own "Zero Terminal SNR" setting on, A1111 rescales whatever ``alphas_cumprod_original`` holds
before every batch; the request then sets that setting to "Default" through ``p.override_settings`` (the host restores
it) whenever the pack may act on the model sampling, so ZTSNR is applied once, by the pack.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from ..vpred_core.settings import SamplingPlan
from .checkpoints import checkpoint_filename

logger = logging.getLogger(__name__)
SAVED_ATTR = "vpred_saved_host_schedule"
MISSING = object()
SAVED_NAMES = ("alphas_cumprod", "alphas_cumprod_original", "parameterization")
PREDICTION_ONLY = ("parameterization",)
HOST_ZTSNR_LABEL = "Zero Terminal SNR"
HOST_DEFAULT_SCHEDULE_LABEL = "Default"
NOISE_SCHEDULE_OPTION = "sd_noise_schedule"


@dataclass(frozen=True)
class SavedSchedule:
    checkpoint: str | None
    alphas_cumprod: object
    alphas_cumprod_original: object
    parameterization: object
    installed: object = None  # the plan's alphas_cumprod, to tell a leaked plan from a checkpoint's own values
    request: int | None = None  # id of the request state that installed it


def host_forces_ztsnr(opts) -> bool:
    return getattr(opts, NOISE_SCHEDULE_OPTION, HOST_DEFAULT_SCHEDULE_LABEL) == HOST_ZTSNR_LABEL


def host_prediction(sd_model) -> str | None:
    """The prediction type A1111 samples this model with (``parameterization``: ldm "eps"/"v"; sgm models get it
    from the webui's loader)."""
    value = getattr(sd_model, "parameterization", None)
    return value if value in ("eps", "v") else None


def _put_back(sd_model, saved: SavedSchedule, names=SAVED_NAMES):
    for name in names:
        value = getattr(saved, name)
        if value is not MISSING:
            setattr(sd_model, name, value)


def restore_model(sd_model) -> bool:
    """Put the host's own values back (only onto the checkpoint they came from); True if restored."""
    saved = getattr(sd_model, SAVED_ATTR, None)
    if saved is None:
        return False
    delattr(sd_model, SAVED_ATTR)
    if saved.checkpoint != checkpoint_filename(sd_model):
        return False
    _put_back(sd_model, saved)
    return True


def repair(models) -> int:
    """Undo what an earlier request left on any of ``models`` (the webui's kept objects); returns how many."""
    repaired = sum(restore_model(model) for model in models if getattr(model, SAVED_ATTR, None) is not None)
    if repaired:
        logger.info("V-Pred: restored the webui's schedule on %d model(s) left patched by an earlier request", repaired)
    return repaired


def _plan_leaked(sd_model, saved: SavedSchedule) -> bool:
    current = getattr(sd_model, "alphas_cumprod_original", getattr(sd_model, "alphas_cumprod", None))
    return (isinstance(current, torch.Tensor) and isinstance(saved.installed, torch.Tensor)
            and current.shape == saved.installed.shape and torch.equal(current.cpu(), saved.installed.cpu()))


def on_model_loaded(sd_model) -> None:
    """The host loaded another checkpoint's weights into this model object (it reuses the object only for the same
    config, so the saved host values are that checkpoint's too): the plan belonged to the previous checkpoint.
    The prediction type is put back; the schedule too unless the new state dict brought its own alphas_cumprod."""
    saved = getattr(sd_model, SAVED_ATTR, None)
    if saved is None or saved.checkpoint == checkpoint_filename(sd_model):
        return
    delattr(sd_model, SAVED_ATTR)
    _put_back(sd_model, saved, SAVED_NAMES if _plan_leaked(sd_model, saved) else PREDICTION_ONLY)
    logger.debug("V-Pred: %s loaded into a patched model; host values put back", checkpoint_filename(sd_model))


def host_alphas_cumprod(sd_model):
    """The host's own schedule tensor of a model (the saved one while a plan is installed)."""
    saved = getattr(sd_model, SAVED_ATTR, None)
    if saved is not None:
        original = saved.alphas_cumprod_original
        return original if original is not MISSING else saved.alphas_cumprod
    original = getattr(sd_model, "alphas_cumprod_original", None)
    return original if original is not None else getattr(sd_model, "alphas_cumprod", None)


def is_applied_for(sd_model, request: int) -> bool:
    saved = getattr(sd_model, SAVED_ATTR, None)
    return saved is not None and saved.request == request and saved.checkpoint == checkpoint_filename(sd_model)


def apply_plan(sd_model, plan: SamplingPlan, request: int) -> None:
    """Install the plan on the model (after restoring any earlier override), tagged with the request."""
    from modules import sd_models

    restore_model(sd_model)
    get = lambda name: getattr(sd_model, name, MISSING)  # noqa: E731
    saved = SavedSchedule(checkpoint_filename(sd_model), get("alphas_cumprod"), get("alphas_cumprod_original"),
                          get("parameterization"), request=request)
    if plan.prediction is not None:
        sd_model.parameterization = plan.prediction
    host_original = saved.alphas_cumprod_original
    base = host_original if host_original is not MISSING else saved.alphas_cumprod
    abar = plan.alphas_cumprod(base)
    setattr(sd_model, SAVED_ATTR, replace(saved, installed=abar.detach().clone()))
    if host_original is not MISSING:
        sd_model.alphas_cumprod_original = abar
        sd_models.apply_alpha_schedule_override(sd_model)
    else:
        sd_model.alphas_cumprod = abar
    logger.debug("V-Pred: applied %s to %s", plan.summary(), saved.checkpoint)


def refresh_sampler(sampler, sd_model) -> None:
    """Rebuild a sampler's model wrapper from the model's current schedule (a pass on another checkpoint)."""
    wrap_cfg = getattr(sampler, "model_wrap_cfg", None)
    if wrap_cfg is None:
        return
    wrap_cfg.model_wrap = None
    if hasattr(wrap_cfg, "alphas"):
        wrap_cfg.alphas = sd_model.alphas_cumprod
    sampler.model_wrap = wrap_cfg.inner_model
