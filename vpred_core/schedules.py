"""Beta schedules, cumulative alphas and k-diffusion (VE) sigmas, all in float64.

Sources: Ho et al. 2020 (linear betas), Rombach et al. 2022 / CompVis ``make_beta_schedule`` ("scaled_linear"
= linspace of square roots, squared), Nichol & Dhariwal 2021 (cosine), Karras et al. 2022 / k-diffusion
(VE sigma = sqrt((1 - abar) / abar) and log-sigma interpolation between discrete timesteps).
"""

from __future__ import annotations

import math

import torch

NUM_TRAIN_TIMESTEPS = 1000
SD_LINEAR_START = 0.00085
SD_LINEAR_END = 0.012
COSINE_OFFSET_S = 0.008
COSINE_MAX_BETA = 0.999
BETA_SCHEDULE_IDS = ("scaled_linear", "linear", "cosine")
SCHEDULE_DTYPE = torch.float64


def betas_scaled_linear(linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """beta_t = linspace(sqrt(start), sqrt(end), T)**2 (CompVis/SD "scaled_linear", float64)."""
    return torch.linspace(math.sqrt(linear_start), math.sqrt(linear_end), timesteps, dtype=SCHEDULE_DTYPE) ** 2


def betas_linear(linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """beta_t = linspace(start, end, T) (Ho et al. 2020 "linear", float64)."""
    return torch.linspace(linear_start, linear_end, timesteps, dtype=SCHEDULE_DTYPE)


def betas_cosine(timesteps: int, s: float = COSINE_OFFSET_S) -> torch.Tensor:
    """beta_t = min(1 - f(t+1)/f(t), 0.999), f(t) = cos((t/T + s)/(1 + s) * pi/2)**2 (Nichol & Dhariwal 2021)."""
    steps = torch.arange(timesteps + 1, dtype=SCHEDULE_DTYPE) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=COSINE_MAX_BETA)


def make_betas(
    kind: str = "scaled_linear",
    linear_start: float = SD_LINEAR_START,
    linear_end: float = SD_LINEAR_END,
    timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """Betas for a schedule id in BETA_SCHEDULE_IDS (float64, length ``timesteps``)."""
    validate_beta_args(kind, linear_start, linear_end, timesteps)
    if kind == "scaled_linear":
        return betas_scaled_linear(linear_start, linear_end, timesteps)
    if kind == "linear":
        return betas_linear(linear_start, linear_end, timesteps)
    return betas_cosine(timesteps)


def validate_beta_args(kind: str, linear_start: float, linear_end: float, timesteps: int) -> None:
    """Raise ValueError naming the bad beta-schedule argument."""
    if kind not in BETA_SCHEDULE_IDS:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULE_IDS}, got {kind!r}")
    if not isinstance(timesteps, int) or timesteps < 2:
        raise ValueError(f"timesteps must be an integer >= 2, got {timesteps!r}")
    if not 0.0 < linear_start < 1.0 or not 0.0 < linear_end < 1.0:
        raise ValueError(f"linear_start/linear_end must be in (0, 1), got {linear_start!r}, {linear_end!r}")
    if linear_start > linear_end:
        raise ValueError(f"linear_start ({linear_start}) must not exceed linear_end ({linear_end})")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{i<=t} (1 - beta_i) (Ho et al. 2020 eq. 4), float64."""
    return torch.cumprod(1.0 - betas.to(SCHEDULE_DTYPE), dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) (k-diffusion VE sigma); +inf where abar_t == 0."""
    abar = alphas_cumprod.to(SCHEDULE_DTYPE)
    return ((1.0 - abar) / abar).sqrt()


def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """abar = 1 / (1 + sigma**2) (inverse of the VE sigma); 0 where sigma is +inf."""
    return 1.0 / (1.0 + sigmas.to(SCHEDULE_DTYPE) ** 2)


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """Fractional timestep of ``sigma`` by linear interpolation of log sigma (k-diffusion DiscreteSchedule)."""
    log_sigma = sigma.to(log_sigmas.dtype).log()
    dists = log_sigma - log_sigmas[:, None]
    if quantize:
        nearest = dists.abs().nan_to_num(nan=math.inf).argmin(dim=0)
        return torch.where(torch.isposinf(log_sigma), log_sigmas.shape[0] - 1, nearest).view(sigma.shape)
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    w = torch.where(torch.isfinite(w), w, (log_sigma >= high).to(w.dtype))
    t = (1 - w) * low_idx + w * high_idx
    return torch.where(torch.isposinf(log_sigma), float(log_sigmas.shape[0] - 1), t).view(sigma.shape)


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """sigma(t) = exp(lerp(log_sigmas[floor t], log_sigmas[ceil t], frac t)) (k-diffusion DiscreteSchedule)."""
    t = t.to(log_sigmas.dtype)
    low_idx, high_idx = t.floor().long(), t.ceil().long()
    w = t.frac()
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    log_sigma = torch.where(w == 0, low, (1 - w) * low + w * high)
    return log_sigma.exp()
