"""Test support: k-diffusion's real sampling/external modules via the core's loader (see kdiffusion_compat)."""

import functools

import pytest


@functools.cache
def kdiffusion():
    """(k_diffusion.sampling, k_diffusion.external), or skip when k-diffusion is not installed."""
    from vpred_core.cli.kdiffusion import load_kdiffusion

    try:
        return load_kdiffusion()
    except ImportError as exc:  # pragma: no cover - the CI installs it
        pytest.skip(f"k-diffusion unavailable: {exc}")
