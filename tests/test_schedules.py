"""Beta schedules, alphas_cumprod and sigmas against closed forms and diffusers' own schedulers."""

import math

import pytest
import torch

from vpred_core.sampling.schedules import (
    alphas_cumprod_from_betas,
    alphas_cumprod_from_sigmas,
    betas_cosine,
    make_betas,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
)

HOST_SD_SIGMA_MAX = 14.614642  # sigma_max A1111/ComfyUI report for SD 1.x (float32 tables)
HOST_SD_SIGMA_MIN = 0.0291675  # sigma_min likewise
FLOAT32_TABLE_REL = 2e-5


def test_scaled_linear_endpoints_and_dtype():
    betas = make_betas("scaled_linear", 0.00085, 0.012, 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-14)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-14)
    roots = betas.sqrt()
    step = (0.012**0.5 - 0.00085**0.5) / 999
    assert torch.allclose(roots[1:] - roots[:-1], torch.full((999,), step, dtype=torch.float64))


def test_sd_sigma_range_closed_form():
    sigmas = sigmas_from_alphas_cumprod(alphas_cumprod_from_betas(make_betas()))
    beta_0 = 0.00085
    assert sigmas[0].item() == pytest.approx(math.sqrt(beta_0 / (1 - beta_0)), rel=1e-14)
    assert sigmas[-1].item() == pytest.approx(HOST_SD_SIGMA_MAX, rel=FLOAT32_TABLE_REL)
    assert sigmas[0].item() == pytest.approx(HOST_SD_SIGMA_MIN, rel=FLOAT32_TABLE_REL)
    assert bool((sigmas[1:] > sigmas[:-1]).all())


@pytest.mark.parametrize("kind,end", [("scaled_linear", 0.012), ("scaled_linear", 0.024), ("linear", 0.012),
                                      ("cosine", 0.012)])
def test_matches_diffusers_alphas_cumprod(kind, end):
    from diffusers import DDPMScheduler

    name = {"cosine": "squaredcos_cap_v2"}.get(kind, kind)
    ref = DDPMScheduler(beta_schedule=name, beta_start=0.00085, beta_end=end).alphas_cumprod.double()
    ours = alphas_cumprod_from_betas(make_betas(kind, 0.00085, end, 1000))
    assert (ours - ref).abs().max().item() < 1e-6  # diffusers builds betas in float32


def test_cosine_cap():
    assert betas_cosine(1000).max().item() <= 0.999


@pytest.mark.parametrize("bad", [dict(kind="sqrt"), dict(linear_start=0.02, linear_end=0.01), dict(timesteps=1),
                                 dict(linear_end=1.5)])
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        make_betas(**bad)


def test_sigma_abar_roundtrip():
    abar = alphas_cumprod_from_betas(make_betas())
    assert torch.allclose(alphas_cumprod_from_sigmas(sigmas_from_alphas_cumprod(abar)), abar, rtol=1e-12)
    assert alphas_cumprod_from_sigmas(torch.tensor([math.inf], dtype=torch.float64)).item() == 0.0


def test_sigma_t_interpolation_roundtrip():
    log_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod_from_betas(make_betas())).log()
    t = torch.tensor([0.0, 10.25, 500.5, 998.75, 999.0], dtype=torch.float64)
    assert torch.allclose(sigma_to_t(t_to_sigma(t, log_sigmas), log_sigmas), t, atol=1e-9)
    assert sigma_to_t(t_to_sigma(torch.tensor([400.4]), log_sigmas), log_sigmas, quantize=True).item() == 400


def test_sigma_to_t_at_infinite_terminal():
    abar = alphas_cumprod_from_betas(make_betas())
    abar[-1] = 0.0
    log_sigmas = sigmas_from_alphas_cumprod(abar).log()
    inf = torch.tensor([math.inf], dtype=torch.float64)
    assert sigma_to_t(inf, log_sigmas).item() == 999
    assert sigma_to_t(inf, log_sigmas, quantize=True).item() == 999
    assert math.isinf(t_to_sigma(torch.tensor([999.0]), log_sigmas).item())
