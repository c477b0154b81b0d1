"""ZTSNR rescale (Lin et al. Algorithm 1): closed-form properties, idempotence, diffusers agreement."""

import math

import pytest
import torch

from vpred_core.sampling.schedules import (
    DIFFUSERS_TERMINAL_ALPHAS_CUMPROD,
    HOST_CLAMP_ALPHAS_CUMPROD,
    ScheduleSpec,
    alphas_cumprod_from_betas,
    is_zero_terminal_snr,
    make_betas,
    rescale_zero_terminal_snr,
    rescale_zero_terminal_snr_betas,
)

HOST_SIGMA_MAX = 4518.7637  # ComfyUI / A1111 sigma_max under ZTSNR (DESIGN.md)
DIFFUSERS_SIGMA_MAX = 4096.0


def sd_abar(end=0.012):
    return alphas_cumprod_from_betas(make_betas("scaled_linear", 0.00085, end, 1000))


@pytest.mark.parametrize("end", [0.012, 0.024])
def test_exact_terminal_snr_is_zero_and_first_unchanged(end):
    abar = sd_abar(end)
    z = rescale_zero_terminal_snr(abar, "exact")
    assert z[-1].item() == 0.0
    assert z[0].item() == pytest.approx(abar[0].item(), rel=1e-14)
    assert bool((z[1:] < z[:-1]).all())


def test_terminal_choices_give_named_sigma_max():
    assert ScheduleSpec(ztsnr=True).sigma_max == pytest.approx(HOST_SIGMA_MAX, rel=1e-7)
    assert ScheduleSpec(ztsnr=True, terminal="diffusers").sigma_max == pytest.approx(DIFFUSERS_SIGMA_MAX, rel=1e-7)
    assert math.isinf(ScheduleSpec(ztsnr=True, terminal="exact").sigma_max)
    assert rescale_zero_terminal_snr(sd_abar())[-1].item() == HOST_CLAMP_ALPHAS_CUMPROD
    assert rescale_zero_terminal_snr(sd_abar(), "diffusers")[-1].item() == DIFFUSERS_TERMINAL_ALPHAS_CUMPROD


@pytest.mark.parametrize("terminal", ["exact", "host_clamp", "diffusers"])
def test_idempotent(terminal):
    once = rescale_zero_terminal_snr(sd_abar(), terminal)
    twice = rescale_zero_terminal_snr(once, terminal)
    assert torch.equal(once, twice)
    assert is_zero_terminal_snr(once) and not is_zero_terminal_snr(sd_abar())


def test_naive_double_application_would_shift_schedule():
    """Why the idempotence rule exists: Alg. 1 on a clamped schedule moves every alpha by a_T once more."""
    once = rescale_zero_terminal_snr(sd_abar())
    a = once.sqrt()
    naive = ((a - a[-1]) * a[0] / (a[0] - a[-1])) ** 2
    assert (naive[:-1] - once[:-1]).abs().max().item() > 1e-5


@pytest.mark.parametrize("end", [0.012, 0.024])
def test_matches_diffusers_rescale_zero_terminal_snr(end):
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

    betas = make_betas("scaled_linear", 0.00085, end, 1000)
    ref = diffusers_rescale(betas.clone())
    ours = rescale_zero_terminal_snr_betas(betas)
    assert (ours - ref).abs().max().item() < 1e-12
    ref_abar = torch.cumprod(1 - ref, 0)
    assert (rescale_zero_terminal_snr(alphas_cumprod_from_betas(betas), "exact") - ref_abar).abs().max().item() < 1e-12


def test_matches_diffusers_ddim_scheduler_alphas_cumprod():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          rescale_betas_zero_snr=True)
    ours = rescale_zero_terminal_snr(sd_abar(), "exact")
    assert (ours - sched.alphas_cumprod.double()).abs().max().item() < 1e-6  # diffusers works in float32


def test_unknown_terminal_rejected():
    with pytest.raises(ValueError, match="terminal"):
        rescale_zero_terminal_snr(sd_abar(), "zero")
