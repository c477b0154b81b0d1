"""Trailing (or linspace / leading) sampling sigmas from the model's own table: the Trailing Schedule node's SIGMAS and
the ``vpred_trailing`` entry of ComfyUI's scheduler registry (KSampler's scheduler list)."""

from __future__ import annotations

import logging

import torch

from ..vpred_core.sampling.schedules import sigma_schedule

logger = logging.getLogger(__name__)

SCHEDULER_NAME = "vpred_trailing"
SIGMAS_DTYPE = torch.float32


def model_sigma_table(model_sampling) -> torch.Tensor:
    """The model's own (ascending) sigma table, as ComfyUI stores it, so sigmas[0] == sigma_max exactly (+inf for
    the exact terminal)."""
    return model_sampling.sigmas.detach().to(device="cpu", dtype=SIGMAS_DTYPE)


def schedule_sigmas(model_sampling, steps: int, spacing: str = "trailing", denoise: float = 1.0) -> torch.Tensor:
    """steps + 1 sigmas from the core's spacing; empty for denoise <= 0 (ComfyUI's convention). More steps than
    training timesteps continue as ComfyUI's ``normal`` scheduler (``vpred_core.sampling.schedules.dense_sigmas``)."""
    if denoise <= 0.0:
        return torch.zeros(0, dtype=SIGMAS_DTYPE)
    return sigma_schedule(model_sigma_table(model_sampling), int(steps), spacing, float(denoise))


def trailing_scheduler(model_sampling, steps: int) -> torch.Tensor:
    """KSampler scheduler handler: scheduler_function(model_sampling, steps) -> sigmas (trailing spacing). KSampler
    asks for int(steps / denoise) steps and keeps the last steps + 1, as for every scheduler."""
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
