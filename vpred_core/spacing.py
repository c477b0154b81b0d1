"""Timestep spacings and sigma schedules (Lin et al. 2023, Table 2; diffusers ``timestep_spacing``).

For n steps of T training timesteps (descending):
- leading:  arange(0, n) * (T // n) + offset, reversed      (SD/diffusers "leading"; 20 steps: 950..0, +1 offset)
- leading_plus_one: leading with offset 1                     (A1111 DDIM/PLMS/UniPC: 20 steps -> 951..1)
- linspace: round(linspace(0, T - 1, n)), reversed           (10 steps: 999, 888, ..., 0)
- trailing: round(arange(T, 0, -T / n)) - 1                   (5 steps: 999, 799, 599, 399, 199)
Only trailing and linspace start at t = T - 1, the step where a ZTSNR schedule has SNR 0.
"""

from __future__ import annotations

import numpy as np
import torch

SPACING_IDS = ("trailing", "linspace", "leading", "leading_plus_one")
WEBUI_TIMESTEP_OFFSET = 1


def validate_steps(steps: int, timesteps: int) -> None:
    """Raise ValueError unless 1 <= steps <= timesteps."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be an integer in [1, {timesteps}], got {steps!r}")


def timesteps_leading(steps: int, timesteps: int = 1000, steps_offset: int = 0) -> torch.Tensor:
    """t_i = i * (T // n) + offset, i = n-1..0 (diffusers "leading")."""
    validate_steps(steps, timesteps)
    ratio = timesteps // steps
    return torch.from_numpy((np.arange(0, steps) * ratio)[::-1].copy() + steps_offset).long()


def timesteps_linspace(steps: int, timesteps: int = 1000) -> torch.Tensor:
    """t_i = round(linspace(0, T - 1, n))[::-1] (diffusers "linspace")."""
    validate_steps(steps, timesteps)
    return torch.from_numpy(np.linspace(0, timesteps - 1, steps).round()[::-1].copy()).long()


def timesteps_trailing(steps: int, timesteps: int = 1000) -> torch.Tensor:
    """t_i = round(arange(T, 0, -T / n)) - 1 (diffusers "trailing", Lin et al. 2023 sec. 3.3)."""
    validate_steps(steps, timesteps)
    return torch.from_numpy(np.round(np.arange(timesteps, 0, -timesteps / steps)).astype(np.int64) - 1)


def timesteps_for_spacing(spacing: str, steps: int, timesteps: int = 1000, steps_offset: int = 0) -> torch.Tensor:
    """Descending int64 timesteps for a spacing id in SPACING_IDS."""
    if spacing == "trailing":
        return timesteps_trailing(steps, timesteps)
    if spacing == "linspace":
        return timesteps_linspace(steps, timesteps)
    if spacing == "leading":
        return timesteps_leading(steps, timesteps, steps_offset)
    if spacing == "leading_plus_one":
        return timesteps_leading(steps, timesteps, WEBUI_TIMESTEP_OFFSET)
    raise ValueError(f"spacing must be one of {SPACING_IDS}, got {spacing!r}")


def sigmas_for_timesteps(timesteps: torch.Tensor, sigmas_table: torch.Tensor) -> torch.Tensor:
    """[sigma(t_0), ..., sigma(t_{n-1}), 0] taken from the model's own sigma table (no interpolation)."""
    chosen = sigmas_table[timesteps.long().clamp(0, sigmas_table.shape[0] - 1)]
    return torch.cat([chosen, chosen.new_zeros(1)])


def validate_denoise(denoise: float) -> None:
    """Raise ValueError unless 0 < denoise <= 1."""
    if not 0.0 < float(denoise) <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise!r}")


def sigma_schedule(
    sigmas_table: torch.Tensor, steps: int, spacing: str = "trailing", denoise: float = 1.0
) -> torch.Tensor:
    """Sampling sigmas (length steps + 1, last 0). Partial denoise keeps the last ``steps`` of a schedule of
    ``int(steps / denoise)`` steps (ComfyUI's convention), so denoise 1 starts exactly at sigma_max."""
    validate_denoise(denoise)
    total = max(steps, int(steps / float(denoise)))
    full = sigmas_for_timesteps(timesteps_for_spacing(spacing, total, sigmas_table.shape[0]), sigmas_table)
    return full[-(steps + 1):]
