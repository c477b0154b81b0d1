"""reForge / Forge timestep samplers (DDIM / PLMS / UniPC): the pass's ``alphas_cumprod``.

Those samplers never ask the unet's ``model_sampling`` / ``predictor`` for their schedule: the CFG denoiser turns each
timestep into a sigma through ``sd_model.alphas_cumprod`` and the DDIM / PLMS / UniPC updates read the same tensor
(reForge also keeps a copy in ``CFGDenoiserTimesteps.alphas``, taken when the sampler is created; Forge recomputes
``sd_model.alphas_cumprod`` from the loaded predictor whenever it creates one). The object patch alone would leave
them on the host's schedule, so for such a pass the plan's ``alphas_cumprod`` is put on the model too, and the
host's tensor is put back after the request (only if the host has not already replaced it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SAVED_ATTR = "vpred_saved_pass_alphas"


@dataclass(frozen=True)
class SavedAlphas:
    host: object
    installed: torch.Tensor


def is_timestep_sampler(sampler) -> bool:
    """A webui CompVis timestep sampler (its CFG denoiser estimates eps from timesteps)."""
    wrap_cfg = getattr(sampler, "model_wrap_cfg", None)
    return bool(getattr(wrap_cfg, "classic_ddim_eps_estimation", False))


def host_alphas(sd_model):
    """The host's own ``alphas_cumprod`` (not the one this module installed); None when the model has none."""
    saved = getattr(sd_model, SAVED_ATTR, None)
    current = getattr(sd_model, "alphas_cumprod", None)
    if saved is not None and current is saved.installed:
        return saved.host
    return current


def install(p, sigmas: torch.Tensor) -> None:
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


def restore(sd_model) -> None:
    """Put the host's tensor back unless the host already replaced ours (also after a request that raised)."""
    saved = getattr(sd_model, SAVED_ATTR, None)
    if saved is None:
        return
    delattr(sd_model, SAVED_ATTR)
    if getattr(sd_model, "alphas_cumprod", None) is not saved.installed:
        return
    if saved.host is None:
        delattr(sd_model, "alphas_cumprod")
    else:
        sd_model.alphas_cumprod = saved.host
