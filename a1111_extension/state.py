"""Per-request state, kept on the processing object ``p`` (never in module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from vpred_core.settings import SamplingPlan

from .logic_ui import UiRequest

STATE_ATTR = "vpred_request_state"


@dataclass
class RequestState:
    """What one generation asked for and what was applied, so that postprocess can undo it."""

    request: UiRequest
    host: str
    host_ztsnr: bool
    plan: SamplingPlan | None = None
    callbacks: object | None = None
    timesteps_patched: bool = False

    @property
    def settings(self):
        return self.request.settings


def get_state(p) -> RequestState | None:
    return getattr(p, STATE_ATTR, None)


def set_state(p, state: RequestState | None) -> None:
    setattr(p, STATE_ATTR, state)
