"""reForge timestep samplers (DDIM / PLMS / UniPC), img2img and hires passes with the pack's patch.

Those samplers turn each timestep into a sigma through ``sd_model.alphas_cumprod`` (and the DDIM / PLMS / UniPC
updates read it too); the pass's object patch alone would leave them on the host's schedule. Checked on reForge's
own samplers (``create_sampler``) and model object (see test_webui_host_reforge.py): trailing timesteps reach
t=999, the alphas the sampler reads map t=999 to the ZTSNR sigma_max and back to t=999 through the patched
``model_sampling``, and the host's alphas / timesteps are back after the request (also after one that raised)."""

from __future__ import annotations

import pytest
import torch
from test_webui_host_reforge import (
    _P,
    DISABLED_ARGS,
    FORCED_ZTSNR_ARGS,
    SIGMA_MAX_RTOL,
    STEPS,
    ZTSNR_SIGMA_MAX,
    _forge_loaded_model,
    _sampling_pass,
    _start,
    reforge,  # noqa: F401 - module fixture
)
from webui_host_env import WEBUI_PATH, host_import

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

TIMESTEP_SAMPLERS = ("DDIM", "PLMS", "UniPC")
LAST_T = 999
HOST_LAST_T = 951  # leading+1 spacing of the webui for 20 steps


def _sampler_alphas(p):
    """(alphas the CFG denoiser turns timesteps into sigmas with, reForge's copy taken at sampler creation)."""
    wrap_cfg = p.sampler.model_wrap_cfg
    return wrap_cfg.inner_model.inner_model.alphas_cumprod, wrap_cfg.alphas


def _assert_pass_reaches_t_max(p, patched):
    timesteps = p.sampler.get_timesteps(p, STEPS)
    assert int(timesteps.max()) == LAST_T
    ms = patched.get_model_object("model_sampling")
    for alphas in _sampler_alphas(p):
        sigma = ((1 - alphas[LAST_T]) / alphas[LAST_T]) ** 0.5
        assert float(sigma) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
        assert round(float(ms.timestep(sigma.view(1).to(ms.sigmas)))) == LAST_T


def _assert_host_again(p, sd_model, host_alphas):
    timesteps_mod = host_import("modules.sd_samplers_timesteps")
    assert not hasattr(timesteps_mod.CompVisSampler.get_timesteps, "vpred_original_get_timesteps")
    assert sd_model.alphas_cumprod is host_alphas
    assert int(p.sampler.get_timesteps(p, STEPS).max()) == HOST_LAST_T


@pytest.mark.parametrize("sampler_name", TIMESTEP_SAMPLERS)
def test_timestep_sampler_reaches_t_max_and_is_restored(reforge, tmp_path, sampler_name):  # noqa: F811
    sd_model = _forge_loaded_model(reforge, tmp_path, markers=("v_pred",))
    host_alphas = sd_model.alphas_cumprod
    script, p = reforge.data.script_class(), _P(sd_model)
    _start(script, p, FORCED_ZTSNR_ARGS)
    patched = _sampling_pass(reforge, script, p, FORCED_ZTSNR_ARGS, sampler_name)
    _assert_pass_reaches_t_max(p, patched)
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    _assert_host_again(p, sd_model, host_alphas)


def test_img2img_sampler_built_in_init(reforge, tmp_path):  # noqa: F811
    """img2img creates its sampler in ``init`` (before the pass); ``sample_img2img`` noises the init latent with
    ``shared.sd_model.alphas_cumprod`` at the first timestep: t=999 there (denoising 1.0)."""
    sd_model = _forge_loaded_model(reforge, tmp_path, markers=("v_pred",))
    host_alphas = sd_model.alphas_cumprod
    script, p = reforge.data.script_class(), _P(sd_model)
    p.denoising_strength = 1.0
    _start(script, p, FORCED_ZTSNR_ARGS)
    p.sampler = reforge.sd_samplers.create_sampler("DDIM", sd_model)  # StableDiffusionProcessingImg2Img.init
    sampler = p.sampler
    p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
    x = torch.zeros((1, 4, 8, 8))
    script.process_before_every_sampling(p, *FORCED_ZTSNR_ARGS, x=x, noise=x, c=None, uc=None)
    assert p.sampler is sampler
    steps, t_enc = host_import("modules.sd_samplers_common").setup_img2img_steps(p, STEPS)
    timesteps = p.sampler.get_timesteps(p, steps)
    first_t = int(timesteps[t_enc])
    assert first_t == LAST_T
    shared_abar = host_import("modules.shared").sd_model.alphas_cumprod
    assert float(((1 - shared_abar[first_t]) / shared_abar[first_t]) ** 0.5) == \
        pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    _assert_pass_reaches_t_max(p, p.sd_model.forge_objects.unet)
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    _assert_host_again(p, sd_model, host_alphas)


def test_hires_second_pass_gets_the_plan_again(reforge, tmp_path):  # noqa: F811
    """The hires pass creates another sampler and runs process_before_every_sampling again: the plan's alphas are
    computed from the host's (not from the first pass's) and the host's tensor is back at the end."""
    sd_model = _forge_loaded_model(reforge, tmp_path, markers=("v_pred",))
    host_alphas = sd_model.alphas_cumprod
    script, p = reforge.data.script_class(), _P(sd_model)
    _start(script, p, FORCED_ZTSNR_ARGS)
    first = _sampling_pass(reforge, script, p, FORCED_ZTSNR_ARGS, "DDIM")
    first_alphas = sd_model.alphas_cumprod
    _assert_pass_reaches_t_max(p, first)
    p.is_hr_pass = True
    second = _sampling_pass(reforge, script, p, FORCED_ZTSNR_ARGS, "UniPC")
    _assert_pass_reaches_t_max(p, second)
    torch.testing.assert_close(sd_model.alphas_cumprod, first_alphas, rtol=0, atol=0)
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    _assert_host_again(p, sd_model, host_alphas)


def test_raised_timestep_pass_is_repaired_by_the_next_request(reforge, tmp_path):  # noqa: F811
    sd_model = _forge_loaded_model(reforge, tmp_path, markers=("v_pred",))
    host_alphas = sd_model.alphas_cumprod
    script, crashed = reforge.data.script_class(), _P(sd_model)
    _start(script, crashed, FORCED_ZTSNR_ARGS)
    _sampling_pass(reforge, script, crashed, FORCED_ZTSNR_ARGS, "DDIM")  # ... sampling raised: no postprocess
    assert sd_model.alphas_cumprod is not host_alphas
    nxt, p = reforge.data.script_class(), _P(sd_model)
    _start(nxt, p, DISABLED_ARGS)
    _sampling_pass(reforge, nxt, p, DISABLED_ARGS, "DDIM")
    _assert_host_again(p, sd_model, host_alphas)
