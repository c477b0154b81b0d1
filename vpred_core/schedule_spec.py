"""A model's training noise schedule as one frozen value: betas kind, linear_start/end, T, ZTSNR and terminal."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import (
    NUM_TRAIN_TIMESTEPS,
    SD_LINEAR_END,
    SD_LINEAR_START,
    alphas_cumprod_from_betas,
    make_betas,
    sigmas_from_alphas_cumprod,
    validate_beta_args,
)
from .ztsnr import rescale_zero_terminal_snr, terminal_alphas_cumprod


@dataclass(frozen=True)
class ScheduleSpec:
    """Training schedule of a model; ``alphas_cumprod()`` and ``sigmas()`` are float64."""

    beta_schedule: str = "scaled_linear"
    linear_start: float = SD_LINEAR_START
    linear_end: float = SD_LINEAR_END
    timesteps: int = NUM_TRAIN_TIMESTEPS
    ztsnr: bool = False
    terminal: str = "host_clamp"

    def __post_init__(self):
        validate_beta_args(self.beta_schedule, self.linear_start, self.linear_end, self.timesteps)
        terminal_alphas_cumprod(self.terminal)

    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t of the betas, ZTSNR-rescaled (Lin et al. Alg. 1) with the terminal choice when ``ztsnr``."""
        betas = make_betas(self.beta_schedule, self.linear_start, self.linear_end, self.timesteps)
        abar = alphas_cumprod_from_betas(betas)
        return rescale_zero_terminal_snr(abar, self.terminal) if self.ztsnr else abar

    def sigmas(self) -> torch.Tensor:
        """VE sigmas sqrt((1 - abar)/abar), ascending; the last is +inf for an exact ZTSNR terminal."""
        return sigmas_from_alphas_cumprod(self.alphas_cumprod())

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas()[-1])

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas()[0])
