"""Trailing timesteps for the webui's DDIM / PLMS / UniPC samplers (leading+1 in the host: 20 steps end at 951).

The host offers no hook between creating a txt2img sampler and asking it for timesteps, so
``CompVisSampler.get_timesteps`` is wrapped for the duration of a generation. The wrapper reads the request
state from ``p`` and defers to the host for every request that did not ask for another spacing, and it is
removed in postprocess.
"""

from __future__ import annotations

import functools

from .logic_sampling import webui_timesteps
from .state import get_state

ORIGINAL_ATTR = "vpred_original_get_timesteps"
HOST_SPACING = "host"


def _sampler_class():
    try:
        from modules import sd_samplers_timesteps
    except ImportError:
        return None
    cls = getattr(sd_samplers_timesteps, "CompVisSampler", None)
    return cls if cls is not None and hasattr(cls, "get_timesteps") else None


def spacing_for(p) -> str:
    state = get_state(p)
    if state is None or not state.request.enabled:
        return HOST_SPACING
    return state.settings.sampling.spacing


def install() -> bool:
    """Wrap get_timesteps once (idempotent); True when the wrapper is in place."""
    cls = _sampler_class()
    if cls is None:
        return False
    if hasattr(cls.get_timesteps, ORIGINAL_ATTR):
        return True
    original = cls.get_timesteps

    @functools.wraps(original)
    def get_timesteps(self, p, steps):
        spacing = spacing_for(p)
        if spacing == HOST_SPACING:
            return original(self, p, steps)
        alphas = p.sd_model.alphas_cumprod
        return webui_timesteps(spacing, steps, alphas.shape[0]).to(alphas.device)

    setattr(get_timesteps, ORIGINAL_ATTR, original)
    cls.get_timesteps = get_timesteps
    return True


def uninstall() -> None:
    cls = _sampler_class()
    if cls is not None and hasattr(cls.get_timesteps, ORIGINAL_ATTR):
        cls.get_timesteps = getattr(cls.get_timesteps, ORIGINAL_ATTR)
