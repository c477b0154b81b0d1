"""Timestep spacings: exact integers, diffusers' DDIMScheduler.set_timesteps, sigma schedules."""

import pytest
import torch

from vpred_core.sampling.schedules import ScheduleSpec, sigma_schedule, timesteps_for_spacing


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


@pytest.mark.parametrize("bad", [dict(steps=0), dict(denoise=0.0), dict(denoise=1.5), dict(spacing="karras")])
def test_bad_arguments(bad):
    args = dict(sigmas_table=ScheduleSpec().sigmas(), steps=10, spacing="trailing", denoise=1.0) | bad
    with pytest.raises(ValueError):
        sigma_schedule(**args)
