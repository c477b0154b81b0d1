"""CFG rescale (Lin et al. 2023, Alg. 2) as a ComfyUI post-CFG function working on denoised values (core maths)."""

from __future__ import annotations

import math

from ..vpred_core.sampling.cfg import SigmaWindow, rescale_cfg_denoised, validate_phi

# A sigma bound at or above this means "no upper bound" (ComfyUI sigma_max is 4518.76 with ZTSNR).
SIGMA_UNBOUNDED = 10000.0
# rescale_cfg_denoised forms x_u + w (x_c - x_u); with w = 0 and x_u = the already-guided x0 that is exactly the
# guided x0, so the rescale applies to whatever earlier CFG patches produced, with std taken from the cond x0.
GUIDED_AS_UNCOND_SCALE = 0.0


def sigma_window(model_sampling, start_percent: float, end_percent: float, sigma_high: float,
                 sigma_low: float) -> SigmaWindow:
    """Intersection of the percent window (via the model's percent_to_sigma) and the sigma window."""
    high = min(float(model_sampling.percent_to_sigma(start_percent)), _upper(sigma_high))
    low = max(float(model_sampling.percent_to_sigma(end_percent)), float(sigma_low))
    return SigmaWindow(high, min(low, high))


def _upper(sigma_high: float) -> float:
    return math.inf if sigma_high >= SIGMA_UNBOUNDED else float(sigma_high)


def is_cfg_one(cond_scale) -> bool:
    """ComfyUI's own cfg-1 test (comfy.samplers.sampling_function). There it skips the uncond pass and passes zeros as
    uncond_denoised (calc_cond_batch's empty output), never None; x_cfg = x_c, the std ratio is 1 and the rescale is
    the identity, so the post-CFG function returns ``denoised`` itself (bit-identical, no float64 round trip)."""
    return math.isclose(float(cond_scale), 1.0)


def make_post_cfg_function(phi: float, space: str, start_percent: float = 0.0, end_percent: float = 1.0,
                           sigma_high: float = SIGMA_UNBOUNDED, sigma_low: float = 0.0):
    """post_cfg_function(args) -> denoised: rescales args["denoised"] in ``space`` with the cond x0's std."""
    validate_phi(phi)
    everywhere = start_percent <= 0.0 and end_percent >= 1.0 and sigma_high >= SIGMA_UNBOUNDED and sigma_low <= 0.0

    def rescale_post_cfg(args):
        guided = args["denoised"]
        if is_cfg_one(args["cond_scale"]):
            return guided
        window = None if everywhere else sigma_window(args["model"].model_sampling, start_percent, end_percent,
                                                      sigma_high, sigma_low)
        return rescale_cfg_denoised(args["input"], args["sigma"], args["cond_denoised"], guided,
                                    GUIDED_AS_UNCOND_SCALE, phi, space, window)

    return rescale_post_cfg
