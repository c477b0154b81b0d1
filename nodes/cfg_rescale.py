"""CFG Rescale node (Lin et al. 2023, Alg. 2) as a ComfyUI post-CFG function."""

from __future__ import annotations

import math

from ..vpred_core.sampling.cfg import (
    DEFAULT_RESCALE_PHI,
    RESCALE_SPACE_IDS,
    SigmaWindow,
    rescale_cfg_denoised,
    validate_phi,
)
from .common import CATEGORY, PATCHED_MODEL_TOOLTIP, combo, display_name, float_input, model_input, node_id

PHI_STEP = 0.01
PERCENT_STEP = 0.001
SIGMA_STEP = 0.01
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


def make_post_cfg_function(phi: float, space: str, start_percent: float = 0.0, end_percent: float = 1.0,
                           sigma_high: float = SIGMA_UNBOUNDED, sigma_low: float = 0.0):
    """post_cfg_function(args) -> denoised: rescales args["denoised"] in ``space`` with the cond x0's std."""
    validate_phi(phi)

    def rescale_post_cfg(args):
        guided = args["denoised"]
        if args.get("uncond_denoised") is None:
            return guided  # cfg == 1: uncond skipped, x_cfg == x_c and the std ratio is 1
        window = sigma_window(args["model"].model_sampling, start_percent, end_percent, sigma_high, sigma_low)
        return rescale_cfg_denoised(args["input"], args["sigma"], args["cond_denoised"], guided,
                                    GUIDED_AS_UNCOND_SCALE, phi, space, window)

    return rescale_post_cfg


class CfgRescale:
    """Rescale classifier-free guidance (phi, space, optional window) without using the single cfg-function slot."""

    NODE_ID = node_id("CFGRescale")
    DISPLAY_NAME = display_name("CFG Rescale")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (PATCHED_MODEL_TOOLTIP,)
    FUNCTION = "patch"
    DESCRIPTION = ("CFG rescale (Lin et al. 2023, Algorithm 2): x = phi * x_cfg * std(x_cond) / std(x_cfg) + "
                   "(1 - phi) * x_cfg, std per sample over all non-batch dims, in the chosen space (v by default, "
                   "as ComfyUI's RescaleCFG). Runs as a post-CFG function on denoised values in float64, so it "
                   "composes with other CFG patches and stays exact at sigma 4518; a no-op at cfg 1.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": model_input(),
                "phi": float_input(DEFAULT_RESCALE_PHI, 0.0, 1.0, PHI_STEP,
                                   "Rescale strength: 0 = plain CFG, 1 = full rescale; 0.7 is the paper's value."),
                "space": combo(RESCALE_SPACE_IDS, "v", "Space whose std is matched: v (v-prediction output, as "
                               "ComfyUI RescaleCFG), x0 (denoised) or eps (noise, as diffusers on eps models)."),
            },
            "optional": {
                "start_percent": float_input(0.0, 0.0, 1.0, PERCENT_STEP,
                                             "Apply from this fraction of the schedule (0 = first step)."),
                "end_percent": float_input(1.0, 0.0, 1.0, PERCENT_STEP,
                                           "Apply up to this fraction of the schedule (1 = last step)."),
                "sigma_high": float_input(SIGMA_UNBOUNDED, 0.0, SIGMA_UNBOUNDED, SIGMA_STEP,
                                          f"Apply only at sigma <= this (>= {SIGMA_UNBOUNDED:g} = no bound)."),
                "sigma_low": float_input(0.0, 0.0, SIGMA_UNBOUNDED, SIGMA_STEP, "Apply only at sigma >= this."),
            },
        }

    def patch(self, model, phi, space, start_percent=0.0, end_percent=1.0, sigma_high=SIGMA_UNBOUNDED,
              sigma_low=0.0):
        patched = model.clone()
        fn = make_post_cfg_function(phi, space, start_percent, end_percent, sigma_high, sigma_low)
        patched.set_model_sampler_post_cfg_function(fn)
        return (patched,)
