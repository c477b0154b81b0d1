"""A1111 img2img and hires-fix requests through the host's own ``process_images`` (``WEBUI_PATH``; A1111 layout, see
webui_a1111.py), and the paths around them.

img2img builds its sampler in ``init`` (before the per-batch ``apply_alpha_schedule_override``), the hires pass
creates another sampler in ``sample_hr_pass``: each pass must sample with the plan (what the recorder saw at the
denoiser: v, the ZTSNR alphas, the first sigma / timestep). Another checkpoint's weights loaded into the same model
object mid-request (``model_loaded_callback``) get the host's values back. A1111 1.9+/1.10+ only (skipped
elsewhere): per-pass schedulers (``p.scheduler`` / ``p.hr_scheduler``) with the pack's trailing
``sampler_noise_scheduler_override``, and a real "DDIM CFG++" run with the CFG rescale."""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch
import webui_a1111
from webui_host_env import (
    WEBUI_PATH,
    host_import,
    is_forge_family,
    load_vpred_script,
    pack,
    script_args,
    tiny_ldm_model,
)

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

STEPS = 20
ZTSNR_SIGMA_MAX = 4518.76
SIGMA_RTOL = 1e-3
ZTSNR_TERMINAL_ABAR_MAX = 1e-6  # the host clamp is 4.9e-8; the default schedule ends at 4.7e-3
FULL_DENOISE = 1.0
PHI = 0.7
V_ONLY = ("v_pred",)  # the checkpoint states v; ZTSNR comes from the accordion
FORCED_ZTSNR = {"ztsnr": "on"}
# img2img / hires at denoising 1.0: setup_img2img_steps gives t_enc = 19; the host noises to timesteps[t_enc] and its
# DDIM loop evaluates from timesteps[t_enc - 1] (its own indexing, the same with its leading+1 layout: 951 / 901)
IMG2IMG_DDIM_CALLS = list(range(899, 0, -50))


@pytest.fixture(scope="module")
def loaded_script():
    if is_forge_family():
        pytest.skip("A1111 model flow; reForge / Forge models carry forge_objects (test_webui_host_reforge*.py)")
    return load_vpred_script()


@pytest.fixture
def a1111(loaded_script, tmp_path):
    models = webui_a1111.Models(str(tmp_path))
    yield types.SimpleNamespace(data=loaded_script[1], make=models.make, tmp_path=tmp_path)
    models.close()


def _assert_plan(one_pass):
    assert one_pass.parameterization == "v"
    assert float(one_pass.alphas_cumprod[-1]) < ZTSNR_TERMINAL_ABAR_MAX
    if one_pass.denoiser_alphas is not None:  # CFGDenoiserTimesteps.alphas: taken when the sampler was created
        assert float(one_pass.denoiser_alphas[-1]) < ZTSNR_TERMINAL_ABAR_MAX


def _assert_starts_at_terminal(one_pass, sampler_name):
    if sampler_name == "DDIM":
        assert one_pass.call_values() == IMG2IMG_DDIM_CALLS
    else:
        assert one_pass.first == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_RTOL)


@pytest.mark.parametrize("sampler_name", ["Euler", "DDIM"])
def test_img2img_sampler_built_in_init_uses_the_plan(a1111, sampler_name):
    model = a1111.make("img2img", V_ONLY)
    webui_a1111.use_model(model)
    before = webui_a1111.snapshot(model)
    p = webui_a1111.img2img(model, sampler_name, STEPS, denoising_strength=FULL_DENOISE)
    result = webui_a1111.generate(a1111.data, p, script_args(**FORCED_ZTSNR))
    assert p.init_latent is not None  # the host's init ran (VAE encode) and built p.sampler there
    (one_pass,) = result.passes
    _assert_plan(one_pass)
    _assert_starts_at_terminal(one_pass, sampler_name)
    webui_a1111.assert_restored(model, before)


@pytest.mark.parametrize("sampler_name", ["Euler", "DDIM"])
def test_hires_pass_sampler_uses_the_plan(a1111, sampler_name):
    model = a1111.make("hires", V_ONLY)
    webui_a1111.use_model(model)
    before = webui_a1111.snapshot(model)
    p = webui_a1111.txt2img(model, sampler_name, STEPS, enable_hr=True, hr_scale=2.0, hr_upscaler="Latent",
                            denoising_strength=FULL_DENOISE)
    result = webui_a1111.generate(a1111.data, p, script_args(**FORCED_ZTSNR))
    first, hires = result.passes
    for one_pass in (first, hires):
        _assert_plan(one_pass)
    if sampler_name == "DDIM":
        assert first.call_values() == list(range(999, 0, -50))
    else:
        assert first.first == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_RTOL)
    _assert_starts_at_terminal(hires, sampler_name)
    webui_a1111.assert_restored(model, before)


@pytest.mark.parametrize("state_dict_has_alphas", [False, True], ids=["no-alphas-in-state-dict", "own-alphas"])
def test_weights_of_another_checkpoint_loaded_mid_request(a1111, state_dict_has_alphas):
    """reload_model_weights reuses the model object for a checkpoint with the same config (hires checkpoint,
    refiner) and fires model_loaded_callback: the plan of the first checkpoint must not stay on it."""
    callbacks = host_import("modules.script_callbacks")
    model = tiny_ldm_model(a1111.tmp_path, markers=V_ONLY)
    model.parameterization = "eps"  # a v-pred checkpoint loaded without its YAML: the pack supplies "v"
    before = webui_a1111.snapshot(model)
    args = script_args(**FORCED_ZTSNR)
    script = a1111.data.script_class()
    p = webui_a1111.txt2img(model, "Euler", STEPS)
    script.before_process(p, *args)
    script.process(p, *args)
    assert model.parameterization == "v"
    model.sd_checkpoint_info = type(model.sd_checkpoint_info)(filename=str(a1111.tmp_path / "other.safetensors"))
    own = before[0] * 0.5  # load_model_weights: alphas_cumprod_original = the (state-dict loaded) buffer
    model.alphas_cumprod_original = own if state_dict_has_alphas else model.alphas_cumprod
    callbacks.model_loaded_callback(model)
    assert model.parameterization == before[1]
    expected = own if state_dict_has_alphas else before[0]
    torch.testing.assert_close(model.alphas_cumprod_original, expected, rtol=0, atol=0)
    script.postprocess(p, None, *args)
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


def _expected_pass_sigmas(scheduler, table, steps):
    """What a pass samples: the core's trailing sigmas for AYS (the pack's override), k-diffusion's Karras otherwise."""
    if scheduler == AYS:
        schedules = pack("vpred_core.sampling.schedules")
        return schedules.sigma_schedule(table.double(), steps, "trailing").to(table.dtype)
    k_sampling = host_import("k_diffusion.sampling")
    return k_sampling.get_sigmas_karras(steps, table[0].item(), table[-1].item(), rho=7.0, device="cpu")


def _calls(one_pass) -> torch.Tensor:
    return torch.tensor(one_pass.call_values(), dtype=torch.float64)


@pytest.mark.parametrize("hires_denoise", [FULL_DENOISE, HIRES_DENOISE], ids=["hires-denoise-1", "hires-denoise-0.5"])
@pytest.mark.parametrize(("first", "hires"), [(KARRAS, AYS), (AYS, KARRAS)], ids=["karras-then-ays", "ays-then-karras"])
def test_trailing_override_follows_each_pass_scheduler(a1111, first, hires, hires_denoise):
    """The host calls ``p.sampler_noise_scheduler_override`` in both passes: the pack's trailing sigmas are there only
    for the pass whose scheduler (AYS) does not start at sigma_max; the Karras pass keeps the host's own."""
    _needs_host_schedulers()
    samplers = pack("a1111_extension.samplers")
    sd_samplers_common = host_import("modules.sd_samplers_common")
    model = a1111.make("schedulers", V_ONLY)
    webui_a1111.use_model(model)
    before = webui_a1111.snapshot(model)
    p = webui_a1111.txt2img(model, "Euler", STEPS, enable_hr=True, hr_scale=2.0, hr_upscaler="Latent",
                            denoising_strength=hires_denoise, scheduler=first, hr_scheduler=hires)
    result = webui_a1111.generate(a1111.data, p, script_args(**FORCED_ZTSNR))
    one, two = result.passes
    expected = _expected_pass_sigmas(first, one.table, STEPS)
    torch.testing.assert_close(_calls(one), expected[:-1].double(), rtol=1e-5, atol=0)
    assert one.first == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_RTOL)  # both schedulers start at t = T
    p.is_hr_pass = True
    steps, t_enc = sd_samplers_common.setup_img2img_steps(p, p.hr_second_pass_steps or p.steps)
    p.is_hr_pass = False
    assert steps == int(STEPS / min(hires_denoise, 0.999)) and t_enc == STEPS - 1
    sched = _expected_pass_sigmas(hires, two.table, steps)[steps - t_enc - 1:]  # sample_img2img's sigma_sched
    torch.testing.assert_close(_calls(two), sched[:-1].double(), rtol=1e-5, atol=0)
    if hires_denoise == FULL_DENOISE:
        assert two.first == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_RTOL)
    else:  # the hires pass starts partway down its schedule (the tail of a steps / denoise schedule)
        assert two.first < ZTSNR_SIGMA_MAX * 0.5
    if hires == AYS:  # without the pack the host's AYS starts at its own 14.6, far below the ZTSNR sigma_max
        host_ays = host_import("modules.sd_schedulers").schedulers_map[AYS]
        assert float(host_ays.function(steps, two.table[0].item(), two.table[-1].item(), "cpu")[0]) < 20
    assert not isinstance(p.sampler_noise_scheduler_override, samplers.TrailingSigmas)
    webui_a1111.assert_restored(model, before)


def test_another_extension_override_is_kept(a1111):
    _needs_host_schedulers()
    model = a1111.make("theirs", V_ONLY)
    webui_a1111.use_model(model)

    def theirs(steps):
        return torch.linspace(3.0, 0.0, steps + 1)

    p = webui_a1111.txt2img(model, "Euler", STEPS, enable_hr=True, hr_scale=2.0, hr_upscaler="Latent",
                            denoising_strength=FULL_DENOISE, scheduler=AYS, hr_scheduler=AYS)
    p.sampler_noise_scheduler_override = theirs
    result = webui_a1111.generate(a1111.data, p, script_args(**FORCED_ZTSNR))
    assert all(one_pass.first == pytest.approx(3.0) for one_pass in result.passes)
    assert p.sampler_noise_scheduler_override is theirs


# --- A1111 1.10 "DDIM CFG++": the host combines with cond_scale * cond_scale_miltiplier (sic) = cfg / 12.5 --------
CFGPP_SAMPLER = "DDIM CFG++"
CFGPP_DIVISOR = 12.5
CFG_SCALE = 7.0
SIZE = 64


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


def test_ddim_cfgpp_rescale_uses_the_host_scale_multiplier(a1111, monkeypatch):
    """A real DDIM CFG++ run (the host's ddim_cfgpp sets cond_scale_miltiplier = 1 / 12.5 on the real
    CFGDenoiserTimesteps): the rescaled x_out combined by the host equals the core's rescale at cfg / 12.5."""
    sd_samplers = host_import("modules.sd_samplers")
    callbacks = host_import("modules.script_callbacks")
    if CFGPP_SAMPLER not in sd_samplers.all_samplers_map:
        pytest.skip("this webui has no DDIM CFG++ sampler (A1111 1.10+)")
    cfg = pack("vpred_core.sampling.cfg")

    model = tiny_ldm_model(a1111.tmp_path, markers=V_ONLY)
    devices = host_import("modules.devices")
    for name in ("dtype", "dtype_unet", "dtype_inference"):  # sd_models.load_model with --no-half on the CPU
        monkeypatch.setattr(devices, name, torch.float32)
    model.model.diffusion_model.dtype = torch.float32  # sd_models.repair_config (--no-half): use_fp16 off
    model.model.conditioning_key = "crossattn"  # as an SD1 checkpoint (the tiny model has no text encoder)
    _non_zero_output_layers(model.model.diffusion_model)
    args = script_args(phi=PHI)  # the rescale only: nothing else forced
    script = a1111.data.script_class()
    p = webui_a1111.txt2img(model, CFGPP_SAMPLER, STEPS, batch_size=2, cfg_scale=CFG_SCALE, width=SIZE, height=SIZE)
    script.before_process(p, *args)
    p.setup_prompts()
    p.all_seeds, p.all_subseeds = [0, 1], [0, 1]
    script.process(p, *args)
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
        script.process_before_every_sampling(p, *args, x=x, noise=x, c=cond, uc=uncond)
        sampler.sample(p, x, cond, uncond, steps=STEPS, image_conditioning=p.txt2img_image_conditioning(x))
    finally:
        callbacks.remove_callbacks_for_function(after_ours)
        script.postprocess(p, None, *args)
    assert multipliers[0] == pytest.approx(1 / CFGPP_DIVISOR) and len(calls) == len(rescaled) > 1
    x_in, t_in, raw = (v.double() for v in calls[0])
    out = rescaled[0].double()
    abar = model.alphas_cumprod.double()[t_in[2:].long()].view(-1, 1, 1, 1)
    x_t, scale = x_in[2:], CFG_SCALE / CFGPP_DIVISOR
    host_eps = out[2:] + CFG_SCALE * multipliers[0] * (out[:2] - out[2:])  # combine_denoised
    got = _vp_to_x0(x_t, host_eps, abar)
    sigma, x_ve = ((1 - abar) / abar).sqrt().view(-1), x_t / abar.sqrt()
    cond_x0, uncond_x0 = _vp_to_x0(x_t, raw[:2], abar), _vp_to_x0(x_t, raw[2:], abar)
    expected = cfg.rescale_cfg_denoised(x_ve, sigma, cond_x0, uncond_x0, scale, PHI, "v")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    unscaled = cfg.rescale_cfg_denoised(x_ve, sigma, cond_x0, uncond_x0, CFG_SCALE, PHI, "v")
    assert not torch.allclose(got, unscaled, rtol=1e-3, atol=1e-3)  # cfg / 12.5, not cfg
    plain = uncond_x0 + scale * (cond_x0 - uncond_x0)
    assert not torch.allclose(got, plain, rtol=1e-3, atol=1e-3)  # and the rescale did act
