"""Per-request CFG-denoiser callbacks: empty-negative zeroing (all hosts) and CFG rescale (A1111).

One ``RequestCallbacks`` object is created per generation and registered through ``script_callbacks``; it acts
only while the running denoiser belongs to its own ``p`` and is removed in postprocess. Leftovers of a crashed
generation are inert and removed when the next one starts (``remove_stale``).
"""

from __future__ import annotations

import logging

from .logic_cfg import layout_matches, rescale_eps_outputs, rescale_x0_outputs
from .logic_uncond import rows_to_zero, zero_uncond_rows

logger = logging.getLogger(__name__)
CALLBACK_LIST_KEYS = ("callbacks_cfg_denoiser", "callbacks_cfg_denoised")
CFG_SCALE_MULTIPLIER = "cond_scale_miltiplier"  # (sic) set on CFGDenoiser by A1111 1.10 DDIM CFG++


def current_negatives(p) -> list[str]:
    if getattr(p, "is_hr_pass", False) and getattr(p, "hr_negative_prompts", None):
        return p.hr_negative_prompts
    return list(getattr(p, "negative_prompts", None) or [])


class RequestCallbacks:
    """CFG hooks bound to one processing object."""

    def __init__(self, p, settings, rescale_here: bool):
        self.p = p
        self.settings = settings
        self.rescale_here = rescale_here and settings.cfg_rescale.enabled
        self.zero_uncond = settings.uncond.mode == "zero"
        self._step = None

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
        if self.zero_uncond:
            params.text_uncond = zero_uncond_rows(
                params.text_uncond, rows_to_zero(current_negatives(self.p), "zero")
            )
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


def remove_stale() -> int:
    """Remove RequestCallbacks left registered by a generation that never reached postprocess."""
    from modules import script_callbacks

    removed = 0
    for key in CALLBACK_LIST_KEYS:
        callbacks = script_callbacks.callback_map.get(key, [])
        for entry in [c for c in callbacks if isinstance(getattr(c.callback, "__self__", None), RequestCallbacks)]:
            callbacks.remove(entry)
            removed += 1
    if removed:
        logger.info("V-Pred: removed %d callbacks left by an interrupted generation", removed)
    return removed
