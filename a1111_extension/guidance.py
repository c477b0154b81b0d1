"""Guidance in the webuis' CFG denoisers: CFG rescale on their batch layouts and the empty-negative modes.

Host-free maths (tested in CI), built on ``vpred_core.sampling.cfg.rescale_cfg_denoised``:
- A1111 ``CFGDenoiser`` (``cfg_denoised`` callback): ``x_out`` = [cond outputs..., uncond outputs (B)], the images'
  conds given by ``conds_list`` [[(index, weight), ...] per image]; ``combine_denoised`` later forms
  u + scale * sum_j w_j (c_j - u). The cond entries are rewritten so that this host combination yields the rescaled
  result (exact, before mask blending and live preview). k-diffusion samplers hand x0 (VE x, sigma); the DDIM /
  PLMS / UniPC samplers hand eps with VP x_t and integer timesteps, converted through alphas_cumprod.
- reForge / Forge post-cfg function: ``denoised`` is already x_cfg; the effective cond is u + (denoised - u) / scale,
  so earlier post-cfg edits and AND-composition weights are respected.
- Empty negatives: "," rewriting (``comma``) and zeroing of the flagged uncond rows (``zero``; SDXL: cross-attention
  and the 1280 pooled dims of ``vector``, size/crop embeddings kept) through the core's ``vpred_core.sampling.uncond``.

:class:`RequestCallbacks` registers one request's ``on_cfg_denoiser`` / ``on_cfg_denoised`` callbacks (the zeroing on
every host, the rescale on A1111, where reForge / Forge never call ``cfg_denoised``); it acts only while the running
denoiser belongs to its own ``p`` and is removed in postprocess; leftovers of a crashed request are removed when the
next one starts (:func:`remove_stale_callbacks`).
"""

from __future__ import annotations

import logging

import torch

from ..vpred_core.sampling.cfg import rescale_cfg_denoised, stats_dtype
from ..vpred_core.sampling.prediction import append_dims, eps_from_x0, x0_from_eps
from ..vpred_core.sampling.uncond import (
    negative_text_for_mode,
    should_zero_uncond,
    zero_cross_attention,
    zero_sdxl_vector,
)
from ..vpred_core.settings import CfgRescaleSettings, PackSettings

logger = logging.getLogger(__name__)

MIN_WEIGHT_SUM = 1e-8
CROSSATTN_KEY = "crossattn"
VECTOR_KEY = "vector"
CALLBACK_LIST_KEYS = ("callbacks_cfg_denoiser", "callbacks_cfg_denoised")
CFG_SCALE_MULTIPLIER = "cond_scale_miltiplier"  # (sic) set on CFGDenoiser by A1111 1.10 DDIM CFG++


# ---- CFG rescale on the host layouts


def _rescaled(x, sigma, cond_x0, uncond_x0, scale: float, settings: CfgRescaleSettings) -> torch.Tensor:
    return rescale_cfg_denoised(x, sigma, cond_x0, uncond_x0, scale, settings.phi, settings.space, settings.window())


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
    """Body of a patcher post-cfg function: rescaled x0 from the host's args dict (a no-op without an uncond)."""
    denoised = args["denoised"]
    uncond = args.get("uncond_denoised")
    scale = float(args.get("cond_scale", fallback_scale))
    if uncond is None or scale == 0.0:
        return denoised
    cond_eff = uncond + (denoised - uncond) / scale
    return _rescaled(args["input"], args["sigma"], cond_eff, uncond, scale, settings)


# ---- empty negatives


def rewrite_negatives(prompts: list[str] | None, mode: str) -> list[str] | None:
    """Negative prompts with empty entries replaced by "," in ``comma`` mode (others unchanged)."""
    if prompts is None:
        return None
    return [negative_text_for_mode(text, mode) for text in prompts]


def rows_to_zero(prompts: list[str] | None, mode: str) -> list[bool]:
    """Per-image flags: True where the negative is empty and the mode is ``zero``."""
    return [should_zero_uncond(text, mode) for text in (prompts or [])]


def zero_uncond_rows(uncond, rows: list[bool]):
    """Uncond batch with the flagged rows zeroed: a tensor (SD1/SD2 cross-attention) entirely; a dict (SDXL) in
    ``crossattn`` and the first 1280 pooled dims of ``vector`` only, keeping the size/crop embeddings.
    Returns ``uncond`` unchanged when no row is flagged or the batch size does not match."""
    if not any(rows):
        return uncond
    tensor = uncond[CROSSATTN_KEY] if isinstance(uncond, dict) else uncond
    if tensor.shape[0] != len(rows):
        return uncond
    mask = torch.tensor(rows, device=tensor.device)
    if not isinstance(uncond, dict):
        return zero_cross_attention(uncond, mask)
    out = _copy_dict_like(uncond)
    out[CROSSATTN_KEY] = zero_cross_attention(uncond[CROSSATTN_KEY], mask)
    if VECTOR_KEY in uncond:
        out[VECTOR_KEY] = zero_sdxl_vector(uncond[VECTOR_KEY], rows=mask)
    return out


def _copy_dict_like(uncond):
    """Copy of a dict, or of a dict subclass (A1111's DictWithShape keeps a ``shape``)."""
    if type(uncond) is dict:
        return dict(uncond)
    try:
        return type(uncond)(dict(uncond), uncond.shape)
    except (TypeError, AttributeError):
        return dict(uncond)


# ---- the request's CFG-denoiser callbacks


def current_negatives(p) -> list[str]:
    if getattr(p, "is_hr_pass", False) and getattr(p, "hr_negative_prompts", None):
        return p.hr_negative_prompts
    return list(getattr(p, "negative_prompts", None) or [])


class RequestCallbacks:
    """CFG hooks bound to one processing object: uncond zeroing (all hosts) and CFG rescale (A1111)."""

    def __init__(self, p, settings: PackSettings, rescale_here: bool, on_step=None):
        self.p = p
        self.settings = settings
        self.rescale_here = rescale_here and settings.cfg_rescale.enabled
        self.zero_uncond = settings.uncond.mode == "zero"
        self.on_step = on_step  # called with p before each denoiser call (the refiner may have switched models)
        self._step = None

    @property
    def needed(self) -> bool:
        return self.zero_uncond or self.rescale_here or self.on_step is not None

    def register(self) -> None:
        from modules import script_callbacks

        script_callbacks.on_cfg_denoiser(self.on_denoiser)
        if self.rescale_here:
            script_callbacks.on_cfg_denoised(self.on_denoised)

    def remove(self) -> None:
        from modules import script_callbacks

        script_callbacks.remove_callbacks_for_function(self.on_denoiser)
        script_callbacks.remove_callbacks_for_function(self.on_denoised)

    def on_denoiser(self, params) -> None:
        denoiser = getattr(params, "denoiser", None)
        self._step = None
        if denoiser is None or getattr(denoiser, "p", None) is not self.p:
            return
        if self.on_step is not None:
            self.on_step(self.p, denoiser)
        if self.zero_uncond:
            params.text_uncond = zero_uncond_rows(params.text_uncond, rows_to_zero(current_negatives(self.p), "zero"))
        self._step = (denoiser, params.x, params.sigma)

    def on_denoised(self, params) -> None:
        if self._step is None:
            return
        denoiser, x_in, sigma_in = self._step
        self._step = None
        new = self._rescaled(denoiser, x_in, sigma_in, params.x)
        if new is not None:
            params.x.copy_(new)

    def _rescaled(self, denoiser, x_in, sigma_in, x_out):
        from modules import prompt_parser

        extra = denoiser.sampler.sampler_extra_args
        conds_list, _ = prompt_parser.reconstruct_multicond_batch(extra["cond"], denoiser.step)
        if not layout_matches(x_out, conds_list) or x_in.shape[0] != x_out.shape[0]:
            return None
        # A1111 1.10 "DDIM CFG++" combines with cond_scale * cond_scale_miltiplier (sic, the host's name)
        scale = float(extra.get("cond_scale", self.p.cfg_scale)) * float(getattr(denoiser, CFG_SCALE_MULTIPLIER, 1.0))
        cfg = self.settings.cfg_rescale
        alphas = getattr(denoiser, "alphas", None)
        if alphas is not None:
            return rescale_eps_outputs(x_in, sigma_in, x_out, conds_list, scale, cfg, alphas)
        return rescale_x0_outputs(x_in, sigma_in, x_out, conds_list, scale, cfg)


def remove_stale_callbacks() -> int:
    """Remove RequestCallbacks left registered by a generation that never reached postprocess."""
    from modules import script_callbacks

    stale = {entry.callback for key in CALLBACK_LIST_KEYS for entry in script_callbacks.callback_map.get(key, [])
             if isinstance(getattr(entry.callback, "__self__", None), RequestCallbacks)}
    removed = len(stale)
    for callback in stale:
        # the host's own removal: A1111 1.10+ also keeps a sorted copy (ordered_callbacks_map) that is reused while
        # its length matches, so removing from callback_map alone would leave a stale entry there and hide the
        # next callback another script registers
        script_callbacks.remove_callbacks_for_function(callback)
    if removed:
        logger.info("V-Pred: removed %d callbacks left by an interrupted generation", removed)
    return removed
