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
    FORCED_ZTSNR,
    STEPS,
    enabled_args,
    reforge,  # noqa: F401 - module fixture
)
from webui_forge import P, reforge_model, sampling_pass, start
from webui_host_env import SIGMA_MAX_RTOL, WEBUI_PATH, ZTSNR_SIGMA_MAX, host_import, pack

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

TIMESTEP_SAMPLERS = ("DDIM", "PLMS", "UniPC")
LOOP_SAMPLERS = ("DDIM", "PLMS")  # their loop walks the timesteps list; UniPC walks its own grid from t = T
LAST_T = 999
HOST_LAST_T = 951  # leading+1 spacing of the webui for 20 steps
TRAILING = [0, *range(49, 1000, 50)]  # ascending, steps + 1 entries: the loop starts at t = T and ends at t = 0


def _args():
    return enabled_args(**FORCED_ZTSNR)


def _sampler_alphas(p):
    """(alphas the CFG denoiser turns timesteps into sigmas with, reForge's copy taken at sampler creation)."""
    wrap_cfg = p.sampler.model_wrap_cfg
    return wrap_cfg.inner_model.inner_model.alphas_cumprod, wrap_cfg.alphas


def _assert_pass_maps_t_max(p, patched, sampler_name):
    timesteps = p.sampler.get_timesteps(p, STEPS)
    if sampler_name in LOOP_SAMPLERS:
        assert timesteps.tolist() == TRAILING
    else:
        assert int(timesteps.max()) == HOST_LAST_T  # UniPC: left to the host (only the count is read)
    ms = patched.get_model_object("model_sampling")
    for alphas in _sampler_alphas(p):
        sigma = ((1 - alphas[LAST_T]) / alphas[LAST_T]) ** 0.5
        assert float(sigma) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
        assert round(float(ms.timestep(sigma.view(1).to(ms.sigmas)))) == LAST_T


def _assert_host_again(sd_model, host_alphas):
    """The host's tensor is back; a sampler the host creates now is the host's own (leading+1 timesteps)."""
    assert sd_model.alphas_cumprod is host_alphas
    sampler = host_import("modules.sd_samplers").create_sampler("DDIM", sd_model)
    assert int(sampler.get_timesteps(P(sd_model), STEPS).max()) == HOST_LAST_T


@pytest.mark.parametrize("sampler_name", TIMESTEP_SAMPLERS)
def test_timestep_sampler_reaches_t_max_and_is_restored(reforge, tmp_path, sampler_name):  # noqa: F811
    sd_model = reforge_model(reforge, tmp_path, markers=("v_pred",))
    host_alphas = sd_model.alphas_cumprod
    script, p = reforge.data.script_class(), P(sd_model)
    start(script, p, _args())
    patched = sampling_pass(reforge, script, p, _args(), sampler_name)
    _assert_pass_maps_t_max(p, patched, sampler_name)
    script.postprocess(p, None, *_args())
    _assert_host_again(sd_model, host_alphas)


def test_img2img_sampler_built_in_init(reforge, tmp_path):  # noqa: F811
    """img2img creates its sampler in ``init`` (before the pass); ``sample_img2img`` noises the init latent with
    ``shared.sd_model.alphas_cumprod`` at ``timesteps[t_enc]``: the plan's alphas there, and the loop ends at t = 0
    (the host's own img2img indexing: noise at timesteps[t_enc], the first model call at timesteps[t_enc - 1])."""
    sd_model = reforge_model(reforge, tmp_path, markers=("v_pred",))
    host_alphas = sd_model.alphas_cumprod
    script, p = reforge.data.script_class(), P(sd_model)
    p.denoising_strength = 1.0
    start(script, p, _args())
    p.sampler = reforge.sd_samplers.create_sampler("DDIM", sd_model)  # StableDiffusionProcessingImg2Img.init
    sampler = p.sampler
    p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
    x = torch.zeros((1, 4, 8, 8))
    script.process_before_every_sampling(p, *_args(), x=x, noise=x, c=None, uc=None)
    assert p.sampler is sampler
    steps, t_enc = host_import("modules.sd_samplers_common").setup_img2img_steps(p, STEPS)
    timesteps = p.sampler.get_timesteps(p, steps)
    assert timesteps.tolist() == TRAILING and t_enc == STEPS - 1
    shared_abar = host_import("modules.shared").sd_model.alphas_cumprod
    plan_sigmas = p.sd_model.forge_objects.unet.get_model_object("model_sampling").sigmas.double()
    noise_t = int(timesteps[t_enc])
    torch.testing.assert_close(((1 - shared_abar[noise_t].double()) / shared_abar[noise_t].double()) ** 0.5,
                               plan_sigmas[noise_t], rtol=1e-4, atol=0)
    _assert_pass_maps_t_max(p, p.sd_model.forge_objects.unet, "DDIM")
    script.postprocess(p, None, *_args())
    _assert_host_again(sd_model, host_alphas)


def test_hires_second_pass_gets_the_plan_again(reforge, tmp_path):  # noqa: F811
    """The hires pass creates another sampler and runs process_before_every_sampling again: the plan's alphas are
    computed from the host's (not from the first pass's) and the host's tensor is back at the end."""
    sd_model = reforge_model(reforge, tmp_path, markers=("v_pred",))
    host_alphas = sd_model.alphas_cumprod
    script, p = reforge.data.script_class(), P(sd_model)
    start(script, p, _args())
    first = sampling_pass(reforge, script, p, _args(), "DDIM")
    first_alphas = sd_model.alphas_cumprod
    _assert_pass_maps_t_max(p, first, "DDIM")
    p.is_hr_pass = True
    second = sampling_pass(reforge, script, p, _args(), "UniPC")
    _assert_pass_maps_t_max(p, second, "UniPC")
    torch.testing.assert_close(sd_model.alphas_cumprod, first_alphas, rtol=0, atol=0)
    script.postprocess(p, None, *_args())
    _assert_host_again(sd_model, host_alphas)


def test_raised_timestep_pass_is_repaired_by_the_next_request(reforge, tmp_path):  # noqa: F811
    forge = pack("a1111_extension.forge")
    sd_model = reforge_model(reforge, tmp_path, markers=("v_pred",))
    host_alphas = sd_model.alphas_cumprod
    script, crashed = reforge.data.script_class(), P(sd_model)
    start(script, crashed, _args())
    sampling_pass(reforge, script, crashed, _args(), "DDIM")  # ... sampling raised: no postprocess
    assert sd_model.alphas_cumprod is not host_alphas and hasattr(sd_model, forge.SAVED_ATTR)
    disabled = enabled_args(enabled=False)
    nxt, p = reforge.data.script_class(), P(sd_model)
    start(nxt, p, disabled)
    sampling_pass(reforge, nxt, p, disabled, "DDIM")
    assert not hasattr(sd_model, forge.SAVED_ATTR)
    _assert_host_again(sd_model, host_alphas)
