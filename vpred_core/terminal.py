"""Running a k-diffusion sampler from pure noise on a (possibly exact) zero-terminal-SNR schedule.

- sigmas[0] finite: start at x = noise * sqrt(1 + sigma_0^2) (unit-variance VP sample).
- sigmas[0] = +inf (``exact`` terminal): x0 = -v(noise, T), then a DDIM step to sigmas[1]; never inf/NaN.
- ``first_step="ddim"`` (the default ``"auto"`` picks it when sigma_0 >= ``ZTSNR_SIGMA_THRESHOLD``, i.e. the
  schedule starts at (clamped) SNR 0): the first step is the first-order DDIM step and the chosen sampler runs
  on sigmas[1:]. A second-order correction across sigma 4518 -> sigma_1 multiplies model differences by about
  sigma_0 / (2 sigma_1); k-diffusion's Heun diverges there (measured: brightness std 11 instead of 0.5).
"""

from __future__ import annotations

import math

import torch

from .terminal_math import ddim_step_to, eps_from_vp, initial_noise_scale
from .ztsnr import ALREADY_ZTSNR_MAX_ALPHAS_CUMPROD

FIRST_STEP_IDS = ("auto", "ddim", "sampler")
ZTSNR_SIGMA_THRESHOLD = math.sqrt((1.0 - ALREADY_ZTSNR_MAX_ALPHAS_CUMPROD) / ALREADY_ZTSNR_MAX_ALPHAS_CUMPROD)


def uses_ddim_first_step(sigma_0: float, first_step: str) -> bool:
    """Whether the first step is taken as a DDIM step (always for an infinite sigma_0)."""
    if first_step not in FIRST_STEP_IDS:
        raise ValueError(f"first_step must be one of {FIRST_STEP_IDS}, got {first_step!r}")
    if not math.isfinite(sigma_0):
        return True
    return first_step == "ddim" or (first_step == "auto" and sigma_0 >= ZTSNR_SIGMA_THRESHOLD)


def first_x0(denoiser, noise: torch.Tensor, sigma_0: float, extra_args: dict) -> torch.Tensor:
    """x0 estimate at sigma_0 from pure noise: -v(noise, T) at sigma_0 = inf, else D(x_0, sigma_0)."""
    if not math.isfinite(sigma_0):
        return denoiser.terminal_denoised(noise, **extra_args)
    x = noise * initial_noise_scale(sigma_0)
    return denoiser(x, torch.full((noise.shape[0],), sigma_0, device=noise.device), **extra_args)


def sample_from_schedule(sampler, denoiser, noise: torch.Tensor, sigmas: torch.Tensor, first_step: str = "auto",
                         **sampler_kwargs) -> torch.Tensor:
    """Run ``sampler(denoiser, x, sigmas, **kw)`` from unit-variance ``noise`` (see module docstring)."""
    sigma_0 = float(sigmas[0])
    if not uses_ddim_first_step(sigma_0, first_step):
        return sampler(denoiser, noise * initial_noise_scale(sigma_0), sigmas, **sampler_kwargs)
    x0 = first_x0(denoiser, noise, sigma_0, sampler_kwargs.get("extra_args") or {})
    if len(sigmas) < 3:
        return x0
    x = ddim_step_to(x0, eps_from_vp(noise, x0, sigma_0), sigmas[1])
    return sampler(denoiser, x, sigmas[1:], **sampler_kwargs)
