"""Trailing schedule node (SIGMAS for SamplerCustom) and the matching KSampler scheduler entry."""

from __future__ import annotations

import logging

import torch

from ..vpred_core.sampling.schedules import SPACING_IDS, sigma_schedule
from .common import CATEGORY, MAX_STEPS, combo, display_name, float_input, int_input, model_input, node_id

logger = logging.getLogger(__name__)

SCHEDULER_NAME = "vpred_trailing"
DEFAULT_STEPS = 20
DENOISE_STEP = 0.01
SIGMAS_DTYPE = torch.float32


def model_sigma_table(model_sampling) -> torch.Tensor:
    """The model's own (ascending) sigma table, as ComfyUI stores it, so sigmas[0] == sigma_max exactly."""
    return model_sampling.sigmas.detach().to(device="cpu", dtype=SIGMAS_DTYPE)


def schedule_sigmas(model_sampling, steps: int, spacing: str = "trailing", denoise: float = 1.0) -> torch.Tensor:
    """steps + 1 sigmas from the core's spacing; empty for denoise <= 0 (ComfyUI's convention)."""
    if denoise <= 0.0:
        return torch.zeros(0, dtype=SIGMAS_DTYPE)
    return sigma_schedule(model_sigma_table(model_sampling), int(steps), spacing, float(denoise))


def trailing_scheduler(model_sampling, steps: int) -> torch.Tensor:
    """KSampler scheduler handler: scheduler_function(model_sampling, steps) -> sigmas (trailing spacing)."""
    return schedule_sigmas(model_sampling, steps, "trailing")


def register_trailing_scheduler() -> bool:
    """Add ``vpred_trailing`` to ComfyUI's scheduler registry (comfy.samplers.SCHEDULER_HANDLERS, looked up by
    calculate_sigmas at call time, and the SCHEDULER_NAMES list KSampler's combo shows). Idempotent; adds
    entries only, never replaces a function. Returns False when the registry is not there."""
    import comfy.samplers as samplers

    handlers = getattr(samplers, "SCHEDULER_HANDLERS", None)
    handler_type = getattr(samplers, "SchedulerHandler", None)
    names = getattr(samplers, "SCHEDULER_NAMES", None)
    if not isinstance(handlers, dict) or handler_type is None or not isinstance(names, list):
        logger.warning("ComfyUI has no scheduler registry; '%s' is only available as a node", SCHEDULER_NAME)
        return False
    handlers.setdefault(SCHEDULER_NAME, handler_type(trailing_scheduler, use_ms=True))
    if SCHEDULER_NAME not in names:
        names.append(SCHEDULER_NAME)
    return True


class TrailingSchedule:
    """SIGMAS with trailing (or linspace/leading) timestep spacing from the model's own sigma table."""

    NODE_ID = node_id("TrailingSchedule")
    DISPLAY_NAME = display_name("Trailing Schedule")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("steps + 1 sigmas ending in 0; with trailing/linspace and denoise 1 the first is exactly "
                       "the model's sigma_max, so the initial noise is scaled by sqrt(1 + sigma_max^2).",)
    FUNCTION = "get_sigmas"
    DESCRIPTION = ("Sigmas for SamplerCustom with diffusers-style timestep spacing (Lin et al. 2023 sec. 3.3). "
                   "'trailing' starts at t = 999, where a ZTSNR model has SNR 0. Also available in KSampler as "
                   f"the scheduler '{SCHEDULER_NAME}'.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": model_input("Model whose (patched) sigma table the schedule is taken from."),
            "steps": int_input(DEFAULT_STEPS, 1, MAX_STEPS, "Number of sampling steps."),
            "spacing": combo(SPACING_IDS, "trailing", "Timestep spacing: trailing [999, 949, ...], linspace "
                             "[999, ..., 0], leading [950, ..., 0], leading_plus_one [951, ..., 1] (webui DDIM)."),
            "denoise": float_input(1.0, 0.0, 1.0, DENOISE_STEP, "Fraction of the schedule to run (img2img); "
                                   "keeps the last steps of int(steps / denoise) steps, as BasicScheduler does."),
        }}

    def get_sigmas(self, model, steps, spacing, denoise):
        return (schedule_sigmas(model.get_model_object("model_sampling"), steps, spacing, denoise),)
