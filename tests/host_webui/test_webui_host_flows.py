"""A1111 img2img and hires-fix flows with the host's real processing objects (``WEBUI_PATH``; A1111 layout).

The request runs in ``process_images`` / ``process_images_inner`` order: ``before_process``, ``process``, the host's
own ``p.init`` (img2img builds its sampler there, before the per-batch ``apply_alpha_schedule_override``),
``process_batch``, ``apply_alpha_schedule_override``; hires fix: ``sample_hr_pass``'s sampler creation then
``before_hr``. The sampler the host built is asked for its schedule; ``postprocess`` must restore the model."""

from __future__ import annotations

import pytest
import torch
from webui_host_env import WEBUI_PATH, host_import, is_forge_family, load_vpred_script, tiny_ldm_model

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

STEPS = 20
SIZE = 64
TRAIN_TIMESTEPS = 1000
ZTSNR_SIGMA_MAX = 4518.76
SIGMA_MAX_RTOL = 1e-3
ZTSNR_TERMINAL_ABAR_MAX = 1e-6  # the host clamp is 4.9e-8; the default schedule ends at 4.7e-3
FULL_DENOISE = 1.0
HR_SCALE = 2.0
# enabled, prediction, ztsnr, beta_end, trailing, phi, space, sigma_high, sigma_low, uncond
ENABLED_ARGS = (True, "auto", "auto", 0, True, 0.7, "v", 0, 0, "zero")
FORCED_ZTSNR_ARGS = (True, "auto", "on", 0, True, 0.7, "v", 0, 0, "zero")


@pytest.fixture(scope="module")
def loaded_script():
    if is_forge_family():
        pytest.skip("A1111 model flow; reForge / Forge models carry forge_objects (test_webui_host_reforge.py)")
    return load_vpred_script()


def _common(sampler_name):
    return dict(prompt="", negative_prompt="", width=SIZE, height=SIZE, steps=STEPS, cfg_scale=7.0,
                sampler_name=sampler_name, seed=0, do_not_save_samples=True, do_not_save_grid=True)


def _img2img(model, sampler_name):
    processing = host_import("modules.processing")
    image = host_import("PIL.Image").new("RGB", (SIZE, SIZE), (128, 64, 32))
    return processing.StableDiffusionProcessingImg2Img(
        sd_model=model, init_images=[image], denoising_strength=FULL_DENOISE, **_common(sampler_name)
    )


def _txt2img_hr(model, sampler_name):
    processing = host_import("modules.processing")
    return processing.StableDiffusionProcessingTxt2Img(
        sd_model=model, enable_hr=True, hr_scale=HR_SCALE, hr_upscaler="Latent", denoising_strength=FULL_DENOISE,
        **_common(sampler_name)
    )


def _run_until_sampling(script, p, args):
    """process_images_inner up to p.sample (seeds fixed, no prompt encoding)."""
    sd_models = host_import("modules.sd_models")
    script.before_process(p, *args)
    p.setup_prompts()
    p.all_seeds, p.all_subseeds = [0], [0]
    script.process(p, *args)
    p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
    script.process_batch(p, *args, batch_number=0, prompts=p.all_prompts, seeds=p.all_seeds, subseeds=[0])
    sd_models.apply_alpha_schedule_override(p.sd_model, p)


def _snapshot(model):
    return model.alphas_cumprod_original.clone(), model.parameterization


def _assert_schedule(p, sampler):
    if hasattr(sampler, "get_timesteps"):
        assert type(sampler.model_wrap).__name__ == "CompVisTimestepsVDenoiser"
        assert int(sampler.get_timesteps(p, STEPS).max()) == TRAIN_TIMESTEPS - 1
        assert float(sampler.model_wrap_cfg.alphas[-1]) < ZTSNR_TERMINAL_ABAR_MAX  # captured at sampler creation
        assert float(sampler.model_wrap.inner_model.alphas_cumprod[-1]) < ZTSNR_TERMINAL_ABAR_MAX
        return
    assert type(sampler.model_wrap).__name__ == "CompVisVDenoiser"
    sigmas = sampler.get_sigmas(p, STEPS)
    steps, t_enc = host_import("modules.sd_samplers_common").setup_img2img_steps(p, STEPS)
    assert float(sigmas[steps - t_enc - 1]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)


def _assert_restored(model, before):
    timesteps_mod = host_import("modules.sd_samplers_timesteps")
    torch.testing.assert_close(model.alphas_cumprod_original, before[0], rtol=0, atol=0)
    assert model.parameterization == before[1]
    assert not hasattr(timesteps_mod.CompVisSampler.get_timesteps, "vpred_original_get_timesteps")


@pytest.mark.parametrize("sampler_name", ["Euler", "DDIM"])
def test_img2img_sampler_built_in_init_uses_the_pack_schedule(loaded_script, tmp_path, sampler_name):
    _, data = loaded_script
    model = tiny_ldm_model(tmp_path, markers=("v_pred",))  # ZTSNR only from the accordion
    before = _snapshot(model)
    script, p = data.script_class(), _img2img(model, sampler_name)
    _run_until_sampling(script, p, FORCED_ZTSNR_ARGS)
    assert p.init_latent is not None  # the host's init ran (VAE encode) and built p.sampler
    _assert_schedule(p, p.sampler)
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    _assert_restored(model, before)


@pytest.mark.parametrize("sampler_name", ["Euler", "DDIM"])
def test_hires_pass_sampler_uses_the_pack_schedule(loaded_script, tmp_path, sampler_name):
    _, data = loaded_script
    sd_samplers = host_import("modules.sd_samplers")
    model = tiny_ldm_model(tmp_path, markers=("v_pred",))
    before = _snapshot(model)
    script, p = data.script_class(), _txt2img_hr(model, sampler_name)
    _run_until_sampling(script, p, FORCED_ZTSNR_ARGS)
    assert p.hr_upscale_to_x == int(SIZE * HR_SCALE)
    p.is_hr_pass = True  # sample_hr_pass: new sampler, then scripts.before_hr
    p.sampler = sd_samplers.create_sampler(p.hr_sampler_name or p.sampler_name, p.sd_model)
    script.before_hr(p, *FORCED_ZTSNR_ARGS)
    _assert_schedule(p, p.sampler)
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    _assert_restored(model, before)


def test_hires_pass_on_another_checkpoint(loaded_script, tmp_path):
    """The hires checkpoint is another model object: before_hr installs the plan there and rebuilds the sampler;
    postprocess restores it and the next request repairs the first one."""
    _, data = loaded_script
    sd_samplers = host_import("modules.sd_samplers")
    first = tiny_ldm_model(tmp_path, "first", markers=("v_pred",))
    first_before = _snapshot(first)
    script, p = data.script_class(), _txt2img_hr(first, "Euler")
    _run_until_sampling(script, p, FORCED_ZTSNR_ARGS)
    second = tiny_ldm_model(tmp_path, "second", markers=("v_pred",))  # set as shared.sd_model
    second_before = _snapshot(second)
    p.is_hr_pass = True
    p.sampler = sd_samplers.create_sampler(p.sampler_name, p.sd_model)
    script.before_hr(p, *FORCED_ZTSNR_ARGS)
    _assert_schedule(p, p.sampler)
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    _assert_restored(second, second_before)
    host_import("modules.sd_models").model_data.set_sd_model(first)
    nxt = _txt2img_hr(first, "Euler")
    data.script_class().before_process(nxt, False, *FORCED_ZTSNR_ARGS[1:])
    _assert_restored(first, first_before)


@pytest.mark.parametrize("state_dict_has_alphas", [False, True], ids=["no-alphas-in-state-dict", "own-alphas"])
def test_weights_of_another_checkpoint_loaded_mid_request(loaded_script, tmp_path, state_dict_has_alphas):
    """reload_model_weights reuses the model object for a checkpoint with the same config (hires checkpoint,
    refiner) and fires model_loaded_callback: the plan of the first checkpoint must not stay on it."""
    _, data = loaded_script
    callbacks = host_import("modules.script_callbacks")
    model = tiny_ldm_model(tmp_path, markers=("v_pred",))
    model.parameterization = "eps"  # a v-pred checkpoint loaded without its YAML: the pack supplies "v"
    before = _snapshot(model)
    script, p = data.script_class(), _txt2img_hr(model, "Euler")
    _run_until_sampling(script, p, FORCED_ZTSNR_ARGS)
    assert model.parameterization == "v"
    model.sd_checkpoint_info = type(model.sd_checkpoint_info)(filename=str(tmp_path / "other.safetensors"))
    own = before[0] * 0.5  # load_model_weights: alphas_cumprod_original = the (state-dict loaded) buffer
    model.alphas_cumprod_original = own if state_dict_has_alphas else model.alphas_cumprod
    callbacks.model_loaded_callback(model)
    assert model.parameterization == before[1]
    expected = own if state_dict_has_alphas else before[0]
    torch.testing.assert_close(model.alphas_cumprod_original, expected, rtol=0, atol=0)
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    assert model.parameterization == before[1]
