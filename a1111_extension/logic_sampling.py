"""Host-free decisions for the per-checkpoint model-sampling override and the trailing start."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from vpred_core.sampling.schedules import (
    ScheduleSpec,
    is_zero_terminal_snr,
    rescale_zero_terminal_snr,
    sigma_schedule,
    sigmas_from_alphas_cumprod,
    timesteps_for_spacing,
)
from vpred_core.settings import AUTO, ModelSamplingSettings

HOST_ZTSNR_LABEL = "Zero Terminal SNR"
HOST_DEFAULT_SCHEDULE_LABEL = "Default"
SIGMA_MAX_RTOL = 1e-4
# k-diffusion schedulers (webui names and labels, lower case) whose first sigma is below the model's sigma_max.
SCHEDULERS_NOT_STARTING_AT_SIGMA_MAX = frozenset({
    "ddim", "align_your_steps", "align your steps", "align_your_steps_custom", "align your steps custom",
    "align_your_steps_gits", "align your steps gits", "align_your_steps_11", "align your steps 11",
    "align_your_steps_32", "align your steps 32", "turbo",
})


@dataclass(frozen=True)
class Detected:
    """What inspection found for a checkpoint (None = unknown)."""

    prediction: str | None = None
    ztsnr: bool | None = None
    linear_start: float | None = None
    linear_end: float | None = None


@dataclass(frozen=True)
class SamplingPlan:
    """Resolved per-checkpoint model sampling: prediction (None keeps the host's), ZTSNR and the schedule."""

    prediction: str | None
    ztsnr: bool
    spec: ScheduleSpec
    betas_from_host: bool = False

    def summary(self) -> str:
        pred = self.prediction or "host"
        betas = "host betas" if self.betas_from_host else f"beta_end {self.spec.linear_end:g}"
        return f"{pred}, ZTSNR {'on' if self.ztsnr else 'off'}, {betas}"

    def is_noop(self, host_prediction: str | None, host_ztsnr: bool) -> bool:
        """True when the host would sample exactly like this on its own."""
        same_prediction = self.prediction is None or self.prediction == host_prediction
        return same_prediction and self.ztsnr == host_ztsnr and self.betas_from_host


def detected_from_inspection(result) -> Detected:
    """Detected values from a core InspectionResult (fields decided only by defaults count as unknown)."""
    stated = result.stated_fields() if result is not None else {}
    return Detected(
        prediction=stated.get("prediction"),
        ztsnr=stated.get("ztsnr"),
        linear_start=stated.get("linear_start"),
        linear_end=stated.get("linear_end"),
    )


def resolve_plan(
    settings: ModelSamplingSettings, detected: Detected, beta_end_auto: bool, host_ztsnr: bool
) -> SamplingPlan:
    """Forced values win; ``auto`` takes the detected value and, when nothing was detected, the host's own
    (prediction None = keep the host's, ZTSNR = the host's global setting); beta_end auto takes the detected."""
    prediction = settings.resolve_prediction(detected.prediction)
    if settings.ztsnr == AUTO and detected.ztsnr is None:
        ztsnr = host_ztsnr
    else:
        ztsnr = settings.resolve_ztsnr(detected.ztsnr)
    betas = {}
    if beta_end_auto:
        betas = {k: v for k, v in (("linear_start", detected.linear_start), ("linear_end", detected.linear_end)) if v}
        settings = replace(settings, **betas)
    return SamplingPlan(prediction, ztsnr, settings.schedule_spec(ztsnr), beta_end_auto and not betas)


def host_schedule_setting_to_force(host_setting: str) -> str | None:
    """A1111 override_settings value that stops the host's global ZTSNR (the plan owns ZTSNR), or None."""
    return HOST_DEFAULT_SCHEDULE_LABEL if host_setting == HOST_ZTSNR_LABEL else None


def plan_alphas_cumprod(plan: SamplingPlan, host_abar: torch.Tensor | None = None) -> torch.Tensor:
    """The plan's alphas_cumprod (float64 maths) in the dtype/device of ``host_abar``.

    With betas left to the host (beta_end auto, nothing detected) the host's own non-ZTSNR schedule is the base,
    ZTSNR-rescaled by the core when the plan wants it; otherwise the plan's ScheduleSpec."""
    if plan.betas_from_host and host_abar is not None and not is_zero_terminal_snr(host_abar):
        abar = host_abar.detach().cpu().to(torch.float64)  # MPS has no float64: do the maths on the CPU
        abar = rescale_zero_terminal_snr(abar, plan.spec.terminal) if plan.ztsnr else abar
    else:
        abar = plan.spec.alphas_cumprod()
    if host_abar is None:
        return abar.float()
    return abar.to(device=host_abar.device, dtype=host_abar.dtype)


def plan_sigmas(plan: SamplingPlan, host_abar: torch.Tensor | None = None) -> torch.Tensor:
    """float32 VE sigmas of the plan (ascending), as the patcher's model_sampling stores them."""
    return sigmas_from_alphas_cumprod(plan_alphas_cumprod(plan, host_abar).cpu().double()).float()


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


def starts_at_sigma_max(first_sigma: float, sigma_max: float) -> bool:
    return abs(first_sigma - sigma_max) <= SIGMA_MAX_RTOL * sigma_max
