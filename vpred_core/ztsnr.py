"""Zero terminal SNR rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", Algorithm 1) with an explicit, named choice of what the terminal step stores.

Terminal choices (``TERMINAL_IDS``):
- ``exact``: abar_T = 0 exactly (sigma_T = inf); only VP-space samplers and the terminal-step helper in
  :mod:`vpred_core.terminal` can use it.
- ``host_clamp``: abar_T = 4.8973451890853435e-08, sigma_max = 4518.76, what ComfyUI, A1111 and reForge use.
- ``diffusers``: abar_T = 2**-24, sigma_max = 4096, what diffusers' Euler uses (and what an fp16 downcast gives).

Idempotence: applying Algorithm 1 to a schedule whose terminal abar is already (near) zero would shift every
alpha by a_T once more (reForge does this twice). :func:`rescale_zero_terminal_snr` therefore detects a schedule
that is already ZTSNR (terminal abar <= ``ALREADY_ZTSNR_MAX_ALPHAS_CUMPROD``) and only re-applies the terminal
choice to it, so applying it any number of times gives the same result.
"""

from __future__ import annotations

import torch

from .schedules import SCHEDULE_DTYPE

HOST_CLAMP_ALPHAS_CUMPROD = 4.8973451890853435e-08
DIFFUSERS_TERMINAL_ALPHAS_CUMPROD = 2.0**-24
ALREADY_ZTSNR_MAX_ALPHAS_CUMPROD = 1e-6
TERMINAL_IDS = ("exact", "host_clamp", "diffusers")
TERMINAL_ALPHAS_CUMPROD = {
    "exact": 0.0,
    "host_clamp": HOST_CLAMP_ALPHAS_CUMPROD,
    "diffusers": DIFFUSERS_TERMINAL_ALPHAS_CUMPROD,
}


def terminal_alphas_cumprod(terminal: str) -> float:
    """abar stored at t = T for a terminal id (exact 0, the hosts' clamp or diffusers' 2**-24)."""
    if terminal not in TERMINAL_ALPHAS_CUMPROD:
        raise ValueError(f"terminal must be one of {TERMINAL_IDS}, got {terminal!r}")
    return TERMINAL_ALPHAS_CUMPROD[terminal]


def is_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> bool:
    """True when abar_T <= 1e-6, i.e. the schedule already reaches (clamped) zero terminal SNR."""
    return float(alphas_cumprod[-1]) <= ALREADY_ZTSNR_MAX_ALPHAS_CUMPROD


def rescaled_sqrt_alphas_cumprod(sqrt_abar: torch.Tensor) -> torch.Tensor:
    """a' = (a - a_T) * a_0 / (a_0 - a_T) with a = sqrt(abar) (Lin et al. 2023, Algorithm 1)."""
    a_0, a_t = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    return (sqrt_abar - a_t) * a_0 / (a_0 - a_t)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor, terminal: str = "host_clamp") -> torch.Tensor:
    """abar' = ((sqrt(abar) - sqrt(abar_T)) * sqrt(abar_0) / (sqrt(abar_0) - sqrt(abar_T)))**2, terminal set
    to the named choice (Lin et al. 2023, Alg. 1; idempotent, see module docstring)."""
    terminal_value = terminal_alphas_cumprod(terminal)
    abar = alphas_cumprod.to(SCHEDULE_DTYPE).clone()
    if not is_zero_terminal_snr(abar):
        abar = rescaled_sqrt_alphas_cumprod(abar.sqrt()) ** 2
    abar[-1] = terminal_value
    return abar


def rescale_zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Betas of the exact ZTSNR schedule: beta_t = 1 - abar'_t / abar'_{t-1} (as diffusers'
    ``rescale_zero_terminal_snr``; beta_T = 1)."""
    abar = rescale_zero_terminal_snr(torch.cumprod(1.0 - betas.to(SCHEDULE_DTYPE), 0), terminal="exact")
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas
