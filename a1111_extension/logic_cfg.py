"""Host-free CFG rescale for the webui's two CFG layouts, built on vpred_core.sampling.cfg.rescale_cfg_denoised.

A1111 ``CFGDenoiser`` (cfg_denoised callback): ``x_out`` = [cond outputs..., uncond outputs (B)], the images'
conds given by ``conds_list`` [[(index, weight), ...] per image]; ``combine_denoised`` later forms
u + scale * sum_j w_j (c_j - u). We rewrite the cond entries so that this host combination yields the rescaled
result (exact, before mask blending and live preview). k-diffusion samplers hand x0 (VE x, sigma); the DDIM /
PLMS / UniPC samplers hand eps with VP x_t and integer timesteps, converted through alphas_cumprod.

Patcher hosts (reForge / Forge) post-cfg function: ``denoised`` is already x_cfg; the effective cond is
u + (denoised - u) / scale so that earlier post-cfg edits and composition weights are respected.
"""

from __future__ import annotations

import torch

from vpred_core.sampling.cfg import rescale_cfg_denoised, stats_dtype
from vpred_core.sampling.prediction import append_dims, eps_from_x0, x0_from_eps
from vpred_core.settings import CfgRescaleSettings

MIN_WEIGHT_SUM = 1e-8


def _rescaled(x, sigma, cond_x0, uncond_x0, scale: float, settings: CfgRescaleSettings) -> torch.Tensor:
    return rescale_cfg_denoised(
        x, sigma, cond_x0, uncond_x0, scale, settings.phi, settings.space, settings.window()
    )


def _effective_cond(x_out: torch.Tensor, conds_list, uncond: torch.Tensor):
    """(cond_eff, weight_sum) per image: u + sum_j w_j (c_j - u) and sum_j w_j."""
    effs, sums = [], []
    for i, conds in enumerate(conds_list):
        delta = sum(float(w) * (x_out[idx] - uncond[i]) for idx, w in conds)
        effs.append(uncond[i] + delta)
        sums.append(sum(float(w) for _, w in conds))
    return torch.stack(effs), sums


def layout_matches(x_out: torch.Tensor, conds_list) -> bool:
    """True for the plain [conds..., uncond(B)] layout (not the 3-chunk edit-model layout)."""
    n_cond = sum(len(c) for c in conds_list)
    return x_out.shape[0] == n_cond + len(conds_list)


def rescale_x0_outputs(x_in, sigma_in, x_out, conds_list, cond_scale: float, settings: CfgRescaleSettings):
    """New x_out (k-diffusion, x0 outputs) whose host CFG combination equals the rescaled guidance."""
    batch = len(conds_list)
    uncond = x_out[-batch:]
    cond_eff, sums = _effective_cond(x_out, conds_list, uncond)
    x_cfg = uncond + cond_scale * (cond_eff - uncond)
    final = _rescaled(x_in[-batch:], sigma_in[-batch:], cond_eff, uncond, cond_scale, settings)
    return _apply_deltas(x_out, conds_list, final - x_cfg, cond_scale, sums)


def _apply_deltas(x_out, conds_list, diff, cond_scale: float, sums) -> torch.Tensor:
    out = x_out.clone()
    for i, conds in enumerate(conds_list):
        denom = cond_scale * sums[i]
        if abs(denom) < MIN_WEIGHT_SUM:
            continue
        for idx, _ in conds:
            out[idx] = out[idx] + diff[i] / denom
    return out


def _vp_coefficients(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, ndim: int):
    """(alpha, s) = (sqrt(abar), sqrt(1 - abar)) shaped for broadcasting, and sigma = sqrt((1 - abar) / abar)."""
    abar = alphas_cumprod.to(timesteps.device)[timesteps.long()].to(stats_dtype(timesteps.device))
    alpha, s = abar.sqrt(), (1.0 - abar).sqrt()
    return append_dims(alpha, ndim), append_dims(s, ndim), ((1.0 - abar) / abar).sqrt()


def rescale_eps_outputs(x_in, t_in, x_out, conds_list, cond_scale, settings, alphas_cumprod):
    """New x_out (DDIM/PLMS/UniPC, eps outputs at integer timesteps) with the rescale done on x0 in VE terms."""
    alpha, s, sigma = _vp_coefficients(alphas_cumprod, t_in, x_in.ndim)
    wide = stats_dtype(x_in.device)  # float64, float32 where the device has none (MPS)
    x_t = x_in.to(wide)
    x0_out = x0_from_eps(x_t, x_out.to(wide), alpha, s)
    new_x0 = rescale_x0_outputs(x_t / alpha, sigma, x0_out, conds_list, cond_scale, settings)
    return eps_from_x0(x_t, new_x0, alpha, s).to(x_out.dtype)


def post_cfg_rescale(args: dict, settings: CfgRescaleSettings, fallback_scale: float) -> torch.Tensor:
    """Body of a patcher post-cfg function: rescaled x0 from the host's args dict."""
    denoised = args["denoised"]
    uncond = args.get("uncond_denoised")
    scale = float(args.get("cond_scale", fallback_scale))
    if uncond is None or scale == 0.0:
        return denoised
    cond_eff = uncond + (denoised - uncond) / scale
    return _rescaled(args["input"], args["sigma"], cond_eff, uncond, scale, settings)
