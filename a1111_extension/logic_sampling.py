"""Host-free decisions for the per-checkpoint model-sampling override and the trailing start."""

from __future__ import annotations

import torch

from vpred_core.sampling.schedules import (
    sigma_schedule,
    timesteps_for_spacing,
)

HOST_ZTSNR_LABEL = "Zero Terminal SNR"
HOST_DEFAULT_SCHEDULE_LABEL = "Default"
# k-diffusion schedulers (webui names and labels, lower case) whose first sigma is below the model's sigma_max.
SCHEDULERS_NOT_STARTING_AT_SIGMA_MAX = frozenset({
    "ddim", "align_your_steps", "align your steps", "align_your_steps_custom", "align your steps custom",
    "align_your_steps_gits", "align your steps gits", "align_your_steps_11", "align your steps 11",
    "align_your_steps_32", "align your steps 32", "turbo",
})


def host_schedule_setting_to_force(host_setting: str) -> str | None:
    """A1111 override_settings value that stops the host's global ZTSNR (the plan owns ZTSNR), or None."""
    return HOST_DEFAULT_SCHEDULE_LABEL if host_setting == HOST_ZTSNR_LABEL else None


def wants_trailing(spacing: str) -> bool:
    return spacing == "trailing"


def scheduler_needs_trailing_override(scheduler_name: str | None) -> bool:
    """True for k-diffusion schedulers that do not start at sigma_max (the others already start at t = T)."""
    return bool(scheduler_name) and scheduler_name.strip().lower() in SCHEDULERS_NOT_STARTING_AT_SIGMA_MAX


def trailing_sigmas(sigmas_table: torch.Tensor, steps: int) -> torch.Tensor:
    """Trailing-spaced k-diffusion sigmas (steps + 1, first = sigma_max, last 0) from the model's own table."""
    table = sigmas_table.detach().cpu().double()  # MPS has no float64: do the maths on the CPU
    return sigma_schedule(table, int(steps), "trailing").to(device=sigmas_table.device, dtype=sigmas_table.dtype)


def webui_timesteps(spacing: str, steps: int, timesteps: int = 1000) -> torch.Tensor:
    """Ascending timesteps in the layout the webui's DDIM/PLMS/UniPC loops expect (host: 1, 51, ..., 951)."""
    return torch.flip(timesteps_for_spacing(spacing, int(steps), timesteps), dims=[0])
