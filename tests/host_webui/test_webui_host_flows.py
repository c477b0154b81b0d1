"""A1111 img2img and hires-fix flows with the host's real processing objects (``WEBUI_PATH``; A1111 layout).

The request runs in ``process_images`` / ``process_images_inner`` order: ``before_process``, ``process``, the host's
own ``p.init`` (img2img builds its sampler there, before the per-batch ``apply_alpha_schedule_override``),
``process_batch``, ``apply_alpha_schedule_override``; hires fix: ``sample_hr_pass``'s sampler creation then
``before_hr``. The sampler the host built is asked for its schedule; ``postprocess`` must restore the model.
A1111 1.9+/1.10+ only (skipped elsewhere): per-pass schedulers (``p.scheduler`` / ``p.hr_scheduler``) with the
trailing ``sampler_noise_scheduler_override``, and a real "DDIM CFG++" run with the CFG rescale."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from webui_host_env import (
    FORCED_ZTSNR_ARGS,
    PHI,
    SIGMA_MAX_RTOL,
    WEBUI_PATH,
    ZTSNR_SIGMA_MAX,
    host_import,
    is_forge_family,
    load_vpred_script,
    tiny_ldm_model,
)

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

STEPS = 20
SIZE = 64
TRAIN_TIMESTEPS = 1000
ZTSNR_TERMINAL_ABAR_MAX = 1e-6  # the host clamp is 4.9e-8; the default schedule ends at 4.7e-3
FULL_DENOISE = 1.0
HR_SCALE = 2.0


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


# --- A1111 1.9+ per-pass schedulers (``p.scheduler`` / ``p.hr_scheduler``) and the trailing override -------------
HIRES_DENOISE = 0.5
KARRAS, AYS = "Karras", "Align Your Steps"


def _needs_host_schedulers():
    processing = host_import("modules.processing")
    fields = getattr(processing.StableDiffusionProcessingTxt2Img, "__dataclass_fields__", {})
    if importlib.util.find_spec("modules.sd_schedulers") is None or "hr_scheduler" not in fields:
        pytest.skip("this webui has no per-pass schedulers (p.hr_scheduler: A1111 1.9+)")
    if AYS not in host_import("modules.sd_schedulers").schedulers_map:
        pytest.skip("this webui has no Align Your Steps scheduler (A1111 1.10+)")


def _core_trailing(sampler, steps):
    from vpred_core.sampling.schedules import sigma_schedule

    table = sampler.model_wrap.sigmas.cpu()
    return sigma_schedule(table.double(), steps, "trailing").to(table.dtype)


def _karras(sampler, steps):
    k_sampling = host_import("k_diffusion.sampling")
    sigmas = sampler.model_wrap.sigmas
    return k_sampling.get_sigmas_karras(steps, sigmas[0].item(), sigmas[-1].item(), rho=7.0, device="cpu")


def _expected_pass_sigmas(scheduler, sampler, steps):
    """What the pass samples: the core's trailing sigmas for AYS (the pack's override), Karras' own otherwise."""
    return _core_trailing(sampler, steps) if scheduler == AYS else _karras(sampler, steps)


@pytest.mark.parametrize("hires_denoise", [FULL_DENOISE, HIRES_DENOISE], ids=["hires-denoise-1", "hires-denoise-0.5"])
@pytest.mark.parametrize(("first", "hires"), [(KARRAS, AYS), (AYS, KARRAS)], ids=["karras-then-ays", "ays-then-karras"])
def test_trailing_override_follows_each_pass_scheduler(loaded_script, tmp_path, first, hires, hires_denoise):
    """The host calls ``p.sampler_noise_scheduler_override`` for both passes: the pack's trailing sigmas are there
    only for the pass whose scheduler (AYS) does not start at sigma_max; the Karras pass keeps the host's own."""
    _needs_host_schedulers()
    _, data = loaded_script
    sd_samplers = host_import("modules.sd_samplers")
    sd_samplers_common = host_import("modules.sd_samplers_common")
    from vpred_ztsnr_webui.trailing_override import TrailingSigmas

    model = tiny_ldm_model(tmp_path, markers=("v_pred",))
    before = _snapshot(model)
    script, p = data.script_class(), _txt2img_hr(model, "Euler")
    p.scheduler, p.hr_scheduler, p.denoising_strength = first, hires, hires_denoise
    _run_until_sampling(script, p, FORCED_ZTSNR_ARGS)
    # first pass: Txt2Img.sample creates the sampler, KDiffusionSampler.sample -> get_sigmas(p, steps)
    p.sampler = sd_samplers.create_sampler(p.sampler_name, p.sd_model)
    assert isinstance(p.sampler_noise_scheduler_override, TrailingSigmas) == (first == AYS)
    first_sigmas = p.sampler.get_sigmas(p, STEPS)
    torch.testing.assert_close(first_sigmas, _expected_pass_sigmas(first, p.sampler, STEPS).float())
    assert float(first_sigmas[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)  # both start at t = T
    # hires pass: sample_hr_pass -> new sampler, scripts.before_hr, sample_img2img(steps=hr steps or p.steps)
    p.is_hr_pass = True
    p.sampler = sd_samplers.create_sampler(p.hr_sampler_name or p.sampler_name, p.sd_model)
    script.before_hr(p, *FORCED_ZTSNR_ARGS)
    assert isinstance(p.sampler_noise_scheduler_override, TrailingSigmas) == (hires == AYS)
    steps, t_enc = sd_samplers_common.setup_img2img_steps(p, p.hr_second_pass_steps or p.steps)
    assert steps == int(STEPS / min(hires_denoise, 0.999)) and t_enc == STEPS - 1
    sched = p.sampler.get_sigmas(p, steps)[steps - t_enc - 1:]  # sample_img2img's sigma_sched
    expected = _expected_pass_sigmas(hires, p.sampler, steps)[steps - t_enc - 1:]
    torch.testing.assert_close(sched, expected.float())
    assert len(sched) == STEPS + 1 and float(sched[-1]) == 0.0
    if hires_denoise == FULL_DENOISE:
        assert float(sched[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    else:  # the hires pass starts partway down its schedule (the tail of a steps / denoise schedule)
        assert float(sched[0]) < ZTSNR_SIGMA_MAX * 0.5
    if hires == AYS:  # without the pack the host's AYS starts at its own 14.6, far below the ZTSNR sigma_max
        p.sampler_noise_scheduler_override = None
        assert float(p.sampler.get_sigmas(p, steps)[0]) < ZTSNR_SIGMA_MAX * 0.01
        p.sampler_noise_scheduler_override = TrailingSigmas(p)
    p.is_hr_pass = False
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    assert p.sampler_noise_scheduler_override is None
    _assert_restored(model, before)


def test_another_extension_override_is_kept(loaded_script, tmp_path):
    _needs_host_schedulers()
    _, data = loaded_script
    model = tiny_ldm_model(tmp_path, markers=("v_pred",))
    script, p = data.script_class(), _txt2img_hr(model, "Euler")

    def theirs(steps):
        return torch.linspace(1.0, 0.0, steps + 1)

    p.scheduler, p.hr_scheduler, p.sampler_noise_scheduler_override = AYS, AYS, theirs
    _run_until_sampling(script, p, FORCED_ZTSNR_ARGS)
    assert p.sampler_noise_scheduler_override is theirs
    p.is_hr_pass = True
    script.before_hr(p, *FORCED_ZTSNR_ARGS)
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    assert p.sampler_noise_scheduler_override is theirs


# --- A1111 1.10 "DDIM CFG++": the host combines with cond_scale * cond_scale_miltiplier (sic) = cfg / 12.5 --------
CFGPP_SAMPLER = "DDIM CFG++"
CFGPP_DIVISOR = 12.5
CFG_SCALE = 7.0
# enabled, prediction, ztsnr, beta_end, trailing, phi, space, sigma_high, sigma_low, uncond
RESCALE_ONLY_ARGS = (True, "auto", "off", 0, False, PHI, "v", 0, 0, "host_default")


def _multicond(tensors):
    prompt_parser = host_import("modules.prompt_parser")
    scheduled = [[prompt_parser.ScheduledPromptConditioning(STEPS, t)] for t in tensors]
    batch = [[prompt_parser.ComposableScheduledPromptConditioning(s)] for s in scheduled]
    return prompt_parser.MulticondLearnedConditioning(shape=(len(tensors),), batch=batch), scheduled


def _record_inner_model(inner, calls):
    """Record what the host's CFGDenoiser hands to / gets from the model (before the cfg_denoised callbacks)."""
    host_forward = inner.forward

    def forward(x, t, cond):
        out = host_forward(x, t, cond=cond)
        calls.append((x.clone(), t.clone(), out.clone()))
        return out

    inner.forward = forward


def _non_zero_output_layers(unet):
    """ldm zero-initialises the UNet's output conv and the transformers' proj_out: give them random weights so
    that the output depends on the input and on the text conditioning (cond != uncond)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in unet.parameters():
            if param.dim() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _vp_to_x0(x_t, eps, abar):
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def test_ddim_cfgpp_rescale_uses_the_host_scale_multiplier(loaded_script, tmp_path, monkeypatch):
    """A real DDIM CFG++ run (the host's ddim_cfgpp sets cond_scale_miltiplier = 1 / 12.5 on the real
    CFGDenoiserTimesteps): the rescaled x_out combined by the host equals the core's rescale at cfg / 12.5."""
    _, data = loaded_script
    sd_samplers = host_import("modules.sd_samplers")
    callbacks = host_import("modules.script_callbacks")
    if CFGPP_SAMPLER not in sd_samplers.all_samplers_map:
        pytest.skip("this webui has no DDIM CFG++ sampler (A1111 1.10+)")
    from vpred_core.sampling.cfg import rescale_cfg_denoised

    model = tiny_ldm_model(tmp_path, markers=("v_pred",))
    devices = host_import("modules.devices")
    for name in ("dtype", "dtype_unet", "dtype_inference"):  # sd_models.load_model with --no-half on the CPU
        monkeypatch.setattr(devices, name, torch.float32)
    model.model.diffusion_model.dtype = torch.float32  # sd_models.repair_config (--no-half): use_fp16 off
    model.model.conditioning_key = "crossattn"  # as an SD1 checkpoint (the tiny model has no text encoder)
    _non_zero_output_layers(model.model.diffusion_model)
    script, p = data.script_class(), _txt2img_hr(model, CFGPP_SAMPLER)
    p.enable_hr, p.batch_size, p.cfg_scale = False, 2, CFG_SCALE
    _run_until_sampling(script, p, RESCALE_ONLY_ARGS)
    p.sampler = sampler = sd_samplers.create_sampler(p.sampler_name, p.sd_model)  # Txt2Img.sample
    denoiser = sampler.model_wrap_cfg
    assert type(denoiser).__name__ == "CFGDenoiserTimesteps" and denoiser.cond_scale_miltiplier == 1.0
    calls, rescaled, multipliers = [], [], []
    _record_inner_model(sampler.model_wrap, calls)

    def after_ours(params):  # registered after the pack's callbacks (script.process): sees the rescaled x_out
        rescaled.append(params.x.clone())
        multipliers.append(denoiser.cond_scale_miltiplier)

    callbacks.on_cfg_denoised(after_ours)
    torch.manual_seed(0)
    cond, _ = _multicond(torch.randn(2, 77, 768) * 10)
    _, uncond = _multicond(torch.zeros(2, 77, 768))
    x = torch.randn(2, 4, SIZE // 8, SIZE // 8)
    p.fill_fields_from_opts()  # process_images_inner
    p.rng = host_import("modules.rng").ImageRNG(x.shape[1:], [0, 1])
    try:
        sampler.sample(p, x, cond, uncond, steps=STEPS, image_conditioning=p.txt2img_image_conditioning(x))
    finally:
        callbacks.remove_callbacks_for_function(after_ours)
        script.postprocess(p, None, *RESCALE_ONLY_ARGS)
    assert multipliers[0] == pytest.approx(1 / CFGPP_DIVISOR) and len(calls) == len(rescaled) > 1
    x_in, t_in, raw = (v.double() for v in calls[0])
    out = rescaled[0].double()
    abar = model.alphas_cumprod.double()[t_in[2:].long()].view(-1, 1, 1, 1)
    x_t, scale = x_in[2:], CFG_SCALE / CFGPP_DIVISOR
    host_eps = out[2:] + CFG_SCALE * multipliers[0] * (out[:2] - out[2:])  # combine_denoised
    got = _vp_to_x0(x_t, host_eps, abar)
    sigma, x_ve = ((1 - abar) / abar).sqrt().view(-1), x_t / abar.sqrt()
    cond_x0, uncond_x0 = _vp_to_x0(x_t, raw[:2], abar), _vp_to_x0(x_t, raw[2:], abar)
    expected = rescale_cfg_denoised(x_ve, sigma, cond_x0, uncond_x0, scale, PHI, "v")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    unscaled = rescale_cfg_denoised(x_ve, sigma, cond_x0, uncond_x0, CFG_SCALE, PHI, "v")
    assert not torch.allclose(got, unscaled, rtol=1e-3, atol=1e-3)  # cfg / 12.5, not cfg
    plain = uncond_x0 + scale * (cond_x0 - uncond_x0)
    assert not torch.allclose(got, plain, rtol=1e-3, atol=1e-3)  # and the rescale did act

