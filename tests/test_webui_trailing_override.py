"""Per-pass trailing override (host-free): only passes whose scheduler does not start at sigma_max get it."""

import types

import pytest
import torch

from a1111_extension.logic_ui import UiRequest
from a1111_extension.state import RequestState
from a1111_extension.trailing_override import TrailingSigmas, hires_scheduler, set_trailing_override
from vpred_core.sampling.schedules import ScheduleSpec
from vpred_core.settings import PackSettings, SamplingSettings

STEPS = 10


def make_p(scheduler="Automatic", hr_scheduler=None, override=None):
    table = ScheduleSpec(ztsnr=True).sigmas().float()
    sampler = types.SimpleNamespace(model_wrap=types.SimpleNamespace(sigmas=table))
    return types.SimpleNamespace(scheduler=scheduler, hr_scheduler=hr_scheduler, sampler=sampler,
                                 sampler_noise_scheduler_override=override)


def make_state(spacing="trailing"):
    request = UiRequest(True, PackSettings(sampling=SamplingSettings(spacing)), True)
    return RequestState(request=request, host="a1111", host_ztsnr=False)


def test_first_pass_needs_it_hires_pass_does_not():
    p, state = make_p("Align Your Steps", "Karras"), make_state()
    set_trailing_override(p, state, p.scheduler)
    assert isinstance(p.sampler_noise_scheduler_override, TrailingSigmas)
    sigmas = p.sampler_noise_scheduler_override(STEPS)
    assert sigmas[0].item() == p.sampler.model_wrap.sigmas[-1].item() and sigmas[-1].item() == 0.0
    set_trailing_override(p, state, hires_scheduler(p))
    assert p.sampler_noise_scheduler_override is None


def test_hires_pass_alone_gets_it_and_next_batch_first_pass_loses_it():
    p, state = make_p("Automatic", "Align Your Steps"), make_state()
    set_trailing_override(p, state, p.scheduler)
    assert p.sampler_noise_scheduler_override is None
    set_trailing_override(p, state, hires_scheduler(p))
    assert isinstance(p.sampler_noise_scheduler_override, TrailingSigmas)
    set_trailing_override(p, state, p.scheduler)  # process_batch of the next batch
    assert p.sampler_noise_scheduler_override is None


@pytest.mark.parametrize("hr", [None, "", "Use same scheduler"])
def test_hires_scheduler_defaults_to_first_pass(hr):
    assert hires_scheduler(make_p("DDIM", hr)) == "DDIM"


def test_other_extensions_override_and_host_spacing_are_respected():
    theirs = object()
    p = make_p("Align Your Steps", override=theirs)
    set_trailing_override(p, make_state(), p.scheduler)
    set_trailing_override(p, make_state(), "Karras")
    assert p.sampler_noise_scheduler_override is theirs
    p = make_p("Align Your Steps")
    set_trailing_override(p, make_state("host"), p.scheduler)
    assert p.sampler_noise_scheduler_override is None
    assert torch.is_tensor(TrailingSigmas(make_p())(STEPS))
