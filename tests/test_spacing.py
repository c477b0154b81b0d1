"""Timestep spacings: exact integers, diffusers' DDIMScheduler.set_timesteps, sigma schedules."""

import numpy as np
import pytest
import torch

from vpred_core.sampling.schedules import ScheduleSpec, dense_sigmas, sigma_schedule, timesteps_for_spacing


def test_exact_integers():
    assert timesteps_for_spacing("trailing", 5).tolist() == [999, 799, 599, 399, 199]
    assert timesteps_for_spacing("trailing", 10).tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert timesteps_for_spacing("linspace", 10).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert timesteps_for_spacing("leading", 10).tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    plus_one = timesteps_for_spacing("leading_plus_one", 20).tolist()
    assert plus_one[0] == 951 and plus_one[-1] == 1 and 999 not in plus_one


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
@pytest.mark.parametrize("steps", [1, 5, 7, 20, 30, 50, 999])
def test_matches_diffusers_ddim(spacing, steps):
    from diffusers import DDIMScheduler

    offset = 1 if spacing == "leading" else 0
    sched = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(steps)
    assert timesteps_for_spacing(spacing, steps, steps_offset=offset).tolist() == sched.timesteps.tolist()


@pytest.mark.parametrize("steps", [1, 2, 20, 37])
def test_trailing_schedule_starts_at_sigma_max(steps):
    table = ScheduleSpec(ztsnr=True).sigmas().float()
    sig = sigma_schedule(table, steps, "trailing")
    assert sig.shape == (steps + 1,) and sig[0].item() == table[-1].item() and sig[-1].item() == 0.0
    assert bool((sig[1:] < sig[:-1]).all())


def test_leading_never_reaches_sigma_max():
    table = ScheduleSpec(ztsnr=True).sigmas()
    assert sigma_schedule(table, 20, "leading_plus_one")[0].item() < table[-1].item() / 10


def test_partial_denoise_keeps_tail():
    table = ScheduleSpec().sigmas()
    full = sigma_schedule(table, 20, "trailing")
    half = sigma_schedule(table, 10, "trailing", denoise=0.5)
    assert torch.equal(half, full[-11:])


def comfy_normal_reference(table: torch.Tensor, steps: int) -> np.ndarray:
    """ComfyUI's normal_scheduler idea in numpy: linspace of timesteps T-1..0, sigma = exp(interp(log sigma))."""
    t = np.linspace(table.shape[0] - 1, 0, steps)
    return np.append(np.exp(np.interp(t, np.arange(table.shape[0]), table.double().log().numpy())), 0.0)


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading", "leading_plus_one"])
@pytest.mark.parametrize(("steps", "denoise"), [(50, 0.04), (1200, 1.0), (1001, 1.0), (3, 0.001)])
def test_more_steps_than_timesteps_continue_like_comfy_normal(spacing, steps, denoise):
    """KSampler steps 50 / denoise 0.04 asks a scheduler for 1250 steps; steps 1200 for 1200: no error, distinct
    decreasing sigmas, the tail of a dense schedule that starts exactly at sigma_max (issue 8 item 4)."""
    table = ScheduleSpec(ztsnr=True).sigmas().float()
    sig = sigma_schedule(table, steps, spacing, denoise)
    total = int(steps / denoise)
    assert sig.shape == (steps + 1,) and sig.dtype == table.dtype and sig[-1].item() == 0.0
    assert bool((sig[1:] < sig[:-1]).all())
    full = dense_sigmas(table, total)
    assert full[0].item() == table[-1].item() and torch.equal(sig, full[-(steps + 1):])
    np.testing.assert_allclose(full.double().numpy(), comfy_normal_reference(table, total), rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_schedule_meets_integer_spacing_at_t_steps(dtype):
    """At exactly T steps every spacing lists every timestep; the dense rule gives the same table entries, bit for
    bit (whole timesteps take the table value, not exp(log(sigma)))."""
    table = ScheduleSpec(ztsnr=True).sigmas().to(dtype)
    assert torch.equal(dense_sigmas(table, 1000), sigma_schedule(table, 1000, "trailing"))
    assert torch.equal(sigma_schedule(table, 1000, "linspace"), sigma_schedule(table, 1000, "trailing"))


def test_dense_schedule_exact_terminal_stays_finite_below_the_top():
    """With abar_T = 0 (sigma_T = inf) the steps between t = T-2 and T-1 are finite (alpha interpolated) and
    decreasing; only the first sigma is inf."""
    table = ScheduleSpec(ztsnr=True, terminal="exact").sigmas().float()
    sig = sigma_schedule(table, 2500)
    assert torch.isinf(sig[0]) and bool(torch.isfinite(sig[1:]).all()) and bool((sig[1:] < sig[:-1]).all())
    assert sig[1].item() > table[-2].item()


@pytest.mark.parametrize("bad", [dict(steps=0), dict(denoise=0.0), dict(denoise=1.5), dict(spacing="karras"),
                                 dict(steps=2000, spacing="karras"), dict(steps=2.5), dict(steps=True)])
def test_bad_arguments(bad):
    args = dict(sigmas_table=ScheduleSpec().sigmas(), steps=10, spacing="trailing", denoise=1.0) | bad
    with pytest.raises(ValueError):
        sigma_schedule(**args)
