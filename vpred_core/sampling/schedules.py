"""The training noise schedule and the sampling schedule, all in float64.

- betas: "scaled_linear" (CompVis/SD: linspace of square roots, squared), "linear" (Ho et al. 2020), "cosine"
  (Nichol & Dhariwal 2021); abar_t = prod(1 - beta); VE sigma = sqrt((1 - abar) / abar) and log-sigma interpolation
  between discrete timesteps (Karras et al. 2022 / k-diffusion).
- ZTSNR: Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1, with a named
  terminal: ``exact`` (abar_T = 0, sigma_T = inf), ``host_clamp`` (abar_T = 4.8973451890853435e-08, sigma_max
  4518.76: ComfyUI, A1111, reForge), ``diffusers`` (2**-24, sigma_max 4096: diffusers' Euler, an fp16 downcast).
  Idempotent: a schedule whose terminal abar is already (near) zero is only re-clamped, never shifted by a_T again
  (reForge rescales twice).
- :class:`ScheduleSpec`: a model's training schedule as one frozen value.
- Timestep spacings for n steps of T (Lin et al. 2023, Table 2; diffusers ``timestep_spacing``), descending:
  leading arange(0, n) * (T // n) + offset (20 steps: 950..0; the webuis' DDIM/PLMS/UniPC use offset 1, 951..1),
  linspace round(linspace(0, T - 1, n)), trailing round(arange(T, 0, -T / n)) - 1 (5 steps: 999, 799, ..., 199).
  Only trailing and linspace start at t = T - 1, where a ZTSNR schedule has SNR 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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
    ``int(steps / denoise)`` steps (ComfyUI's KSampler / BasicScheduler convention), so denoise 1 starts exactly at
    sigma_max.

    A schedule of more steps than training timesteps T (e.g. KSampler steps 50 at denoise 0.04: 1250 steps) has run
    out of distinct timesteps: at T steps every spacing lists every timestep T-1..0. Beyond that it continues as
    ComfyUI's ``normal`` scheduler does (:func:`dense_sigmas`) instead of raising or repeating sigmas."""
    validate_denoise(denoise)
    if spacing not in SPACING_IDS:
        raise ValueError(f"spacing must be one of {SPACING_IDS}, got {spacing!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    total = max(steps, int(steps / float(denoise)))
    timesteps = sigmas_table.shape[0]
    if total <= timesteps:
        full = sigmas_for_timesteps(timesteps_for_spacing(spacing, total, timesteps), sigmas_table)
    else:
        full = dense_sigmas(sigmas_table, total)
    return full[-(steps + 1):]


def dense_sigmas(sigmas_table: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` + 1 sigmas at evenly spaced fractional timesteps T-1 .. 0, then 0 (ComfyUI ``normal_scheduler``:
    ``linspace`` of timesteps, sigma by log-sigma interpolation of the table, as ``ModelSamplingDiscrete.sigma``).

    The first is exactly the table's sigma_max and all are distinct. Where the upper table entry is infinite (the
    ``exact`` terminal, abar_T = 0) log sigma cannot be interpolated; there alpha = 1 / sqrt(1 + sigma^2) is
    interpolated linearly from alpha_{T-2} to 0, which keeps those sigmas finite and decreasing."""
    table = sigmas_table.detach().to(device="cpu", dtype=SCHEDULE_DTYPE)
    t = torch.linspace(table.shape[0] - 1, 0, steps, dtype=SCHEDULE_DTYPE)
    low, high = t.floor().long(), t.ceil().long()
    w = t - low
    lo, hi = table[low], table[high]
    log_sigma = torch.lerp(lo.log(), hi.log(), w)
    alpha = torch.lerp(torch.rsqrt(1.0 + lo * lo), torch.rsqrt(1.0 + hi * hi), w)
    sigma = torch.where(torch.isinf(hi), (1.0 - alpha * alpha).sqrt() / alpha, log_sigma.exp())
    sigma = torch.where(w == 0, lo, sigma)
    return torch.cat([sigma, sigma.new_zeros(1)]).to(device=sigmas_table.device, dtype=sigmas_table.dtype)
