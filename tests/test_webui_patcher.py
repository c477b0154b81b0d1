"""Host-free parts of the reForge / Forge patcher (no webui needed)."""

import types

import torch

from a1111_extension import patcher

SIGMAS = torch.tensor([0.03, 1.0, 14.6])
CFG, HR_CFG = 7.0, 3.0


class _ReadOnlyLinker(torch.nn.Module):
    """Like Forge's ForgeScheduleLinker: sigmas are a read-only view of its predictor."""

    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    @property
    def sigmas(self):
        return self.predictor.sigmas

    @property
    def log_sigmas(self):
        return self.predictor.sigmas.log()


class _Predictor(torch.nn.Module):
    def __init__(self, sigmas):
        super().__init__()
        self.register_buffer("sigmas", sigmas)


def test_schedule_of_a_linker_follows_the_new_predictor():
    sampler = types.SimpleNamespace(model_wrap=_ReadOnlyLinker(_Predictor(torch.ones(3))))
    new = _Predictor(SIGMAS)
    patcher._update_sampler_schedule(sampler, SIGMAS, new)
    assert sampler.model_wrap.predictor is new and torch.equal(sampler.model_wrap.sigmas, SIGMAS)


def test_schedule_of_a_compvis_wrapper_is_replaced():
    wrap = types.SimpleNamespace(sigmas=torch.ones(3), log_sigmas=torch.zeros(3))
    patcher._update_sampler_schedule(types.SimpleNamespace(model_wrap=wrap), SIGMAS)
    assert torch.equal(wrap.sigmas, SIGMAS) and torch.allclose(wrap.log_sigmas, SIGMAS.log())


def test_pass_cfg_scale_uses_hr_cfg_only_in_the_hires_pass():
    p = types.SimpleNamespace(cfg_scale=CFG, hr_cfg=HR_CFG, is_hr_pass=False)
    assert patcher.pass_cfg_scale(p) == CFG
    p.is_hr_pass = True
    assert patcher.pass_cfg_scale(p) == HR_CFG
    assert patcher.pass_cfg_scale(types.SimpleNamespace(cfg_scale=CFG, is_hr_pass=True)) == CFG
