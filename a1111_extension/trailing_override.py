"""Trailing sigmas through ``p.sampler_noise_scheduler_override`` for the passes whose scheduler does not start
at sigma_max (host-free: works on the processing object only)."""

from __future__ import annotations

from .logic_sampling import scheduler_needs_trailing_override, trailing_sigmas, wants_trailing
from .state import RequestState

SAME_SCHEDULER_LABEL = "Use same scheduler"  # A1111 1.9+ hires scheduler choice meaning "as the first pass"


class TrailingSigmas:
    """``p.sampler_noise_scheduler_override`` for schedulers that do not start at sigma_max."""

    def __init__(self, p):
        self.p = p

    def __call__(self, steps):
        return trailing_sigmas(self.p.sampler.model_wrap.sigmas.cpu(), steps)


def hires_scheduler(p) -> str | None:
    """The hires pass's scheduler (A1111 1.9+ ``hr_scheduler``; None/"Use same scheduler" = the first pass's)."""
    name = getattr(p, "hr_scheduler", None)
    return getattr(p, "scheduler", None) if name in (None, "", SAME_SCHEDULER_LABEL) else name


def set_trailing_override(p, state: RequestState, scheduler_name: str | None) -> None:
    """Install the trailing sigmas for a pass whose scheduler does not start at sigma_max; remove ours for a pass
    whose scheduler does (A1111 calls the override for both passes). Another extension's override is kept."""
    needed = wants_trailing(state.settings.sampling.spacing) and scheduler_needs_trailing_override(scheduler_name)
    current = getattr(p, "sampler_noise_scheduler_override", None)
    if needed and current is None:
        p.sampler_noise_scheduler_override = TrailingSigmas(p)
    elif not needed and isinstance(current, TrailingSigmas):
        p.sampler_noise_scheduler_override = None
