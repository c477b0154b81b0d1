"""reForge path of the extension against reForge's own classes (``WEBUI_PATH`` = a reForge tree).

The model is what ``modules_forge.forge_loader.load_model_for_a1111`` builds, minus the weights: the crafted YAML is
found by the host's ``find_checkpoint_config_near_filename``, instantiated with forge_loader's ``FakeObject`` targets
inside ``no_clip()``, and the unet is a real ``UnetPatcher`` around a tiny ``ldm_patched`` SD15 ``BaseModel`` whose
``model_sampling`` is replaced the way forge_loader does for ``parameterization == "v"``. A sampling pass is what
``processing`` does: ``create_sampler``, ``forge_objects`` reset from ``forge_objects_after_applying_lora``,
``process_before_every_sampling``; the host's own ZTSNR step (``process_images_inner``) is reproduced with its own
functions."""

from __future__ import annotations

import types

import pytest
import torch
from webui_host_env import (
    ENABLED_ARGS,
    FORCED_ZTSNR_ARGS,
    HOST_SIGMA_MAX,
    PHI,
    SIGMA_MAX_RTOL,
    WEBUI_PATH,
    ZTSNR_SIGMA_MAX,
    host_import,
    is_forge_family,
    load_vpred_script,
)

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]
ckpt_factory = pytest.importorskip("ckpt_factory")

STEPS = 20
CFG_SCALE = 7.0
SIGMAS_RTOL = 1e-4
CFG_ATOL = 1e-5
SEED = 1234
INIT_STD = 0.02
TINY_CONTEXT = 32
TOKENS = 77
LATENT_SHAPE = (1, 4, 8, 8)
EXPLICIT_BETAS_ARGS = (True, "auto", "auto", 0.012, True, PHI, "v", 0, 0, "zero")
DISABLED_ARGS = (False, *ENABLED_ARGS[1:])
TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1, "context_dim": TINY_CONTEXT, "num_heads": 4, "num_head_channels": -1,
    "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False,
    "use_spatial_transformer": True, "legacy": False,
}
FAKE_TARGET = "modules_forge.forge_loader.FakeObject"


@pytest.fixture(scope="module")
def reforge():
    """reForge modules (skips on A1111 and on Forge, whose backend has no ldm_patched model_sampling patch)."""
    if not is_forge_family():
        pytest.skip("not a reForge tree (no modules_forge)")
    _, data = load_vpred_script()  # initialises the backend (--always-cpu) before forge_loader is imported
    loader = host_import("modules_forge.forge_loader")
    if not hasattr(loader, "ForgeSD") or not hasattr(loader, "no_clip"):
        pytest.skip("not a reForge tree (no modules_forge.forge_loader.ForgeSD / no_clip)")
    return types.SimpleNamespace(
        loader=loader, data=data, ms=host_import("ldm_patched.modules.model_sampling"),
        samplers=host_import("ldm_patched.modules.samplers"), sd_models=host_import("modules.sd_models"),
        sd_samplers=host_import("modules.sd_samplers"), forge_sampler=host_import("modules_forge.forge_sampler"),
    )


def _tiny_unet_patcher():
    supported = host_import("ldm_patched.modules.supported_models")
    unet_patcher = host_import("modules_forge.unet_patcher")
    config = supported.SD15(dict(TINY_UNET))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for param in base.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * INIT_STD)
    cpu = torch.device("cpu")
    return unet_patcher.UnetPatcher(base, load_device=cpu, offload_device=cpu)


def _forge_loaded_model(reforge, tmp_path, markers=("v_pred", "ztsnr")):
    """sd_model as load_model_for_a1111 leaves it (config steps are forge_loader's own; weights left out)."""
    omegaconf = host_import("omegaconf")
    ldm_util = host_import("ldm.util")
    config_mod = host_import("modules.sd_models_config")
    model_base = host_import("ldm_patched.modules.model_base")
    from vpred_ztsnr_webui.model_files import write_yaml_if_needed

    checkpoint = str(tmp_path / "tiny_v.safetensors")
    ckpt_factory.build_checkpoint(checkpoint, "sd1", markers=markers)
    write_yaml_if_needed(checkpoint)
    info = types.SimpleNamespace(filename=checkpoint)
    config = omegaconf.OmegaConf.load(config_mod.find_checkpoint_config_near_filename(info))
    for name in ("unet_config", "first_stage_config"):
        config.model.params[name].target = FAKE_TARGET
    with reforge.loader.no_clip():
        sd_model = ldm_util.instantiate_from_config(config.model)
    unet = _tiny_unet_patcher()
    sd_model.forge_objects = reforge.loader.ForgeSD(unet, None, None, None)
    sd_model.forge_objects_original = sd_model.forge_objects.shallow_copy()
    sd_model.forge_objects_after_applying_lora = sd_model.forge_objects.shallow_copy()
    if getattr(sd_model, "parameterization", None) == "v":
        v_type = model_base.ModelType.V_PREDICTION
        unet.model.model_sampling = model_base.model_sampling(unet.model.model_config, v_type)
    sd_model.ztsnr = "ztsnr" in markers
    sd_model.sd_checkpoint_info = info
    for flag in ("is_sdxl", "is_sd2", "is_ssd", "is_sd3"):
        setattr(sd_model, flag, False)
    sd_model.is_sd1 = True
    reforge.sd_models.model_data.set_sd_model(sd_model)
    return sd_model


class _P:
    """The attributes of a reForge StableDiffusionProcessing that the Script and the samplers read."""

    def __init__(self, model):
        self.sd_model = model
        self.override_settings, self.extra_generation_params = {}, {}
        self.sampler_noise_scheduler_override = None
        self.negative_prompts = self.all_negative_prompts = [""]
        self.cfg_scale, self.steps = CFG_SCALE, STEPS
        self.is_hr_pass, self.scheduler, self.hr_scheduler = False, "Automatic", None
        self.seeds = [0]


def _start(script, p, args):
    script.before_process(p, *args)
    script.process(p, *args)
    script.process_batch(p, *args, batch_number=0, prompts=[""], seeds=[0], subseeds=[0])


def _host_ztsnr_step(reforge, p):
    """process_images_inner's own ZTSNR application (when the model or the setting asks for it)."""
    sd_model = p.sd_model
    ms = sd_model.forge_objects.unet.model.model_sampling
    sd_model.sigmas_original = ms.sigmas
    sd_model.alphas_cumprod_original = sd_model.alphas_cumprod
    reforge.sd_models.apply_alpha_schedule_override(sd_model, p)
    ms.set_sigmas(reforge.ms.rescale_zero_terminal_snr_sigmas(ms.sigmas))


def _host_ztsnr_undo(p):
    p.sd_model.forge_objects.unet.model.model_sampling.set_sigmas(p.sd_model.sigmas_original)
    p.sd_model.alphas_cumprod = p.sd_model.alphas_cumprod_original


def _sampling_pass(reforge, script, p, args, sampler_name="Euler"):
    """StableDiffusionProcessingTxt2Img.sample up to the sampler call; returns the pass's unet patcher."""
    p.sampler = reforge.sd_samplers.create_sampler(sampler_name, p.sd_model)
    p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
    x = torch.randn(LATENT_SHAPE)
    script.process_before_every_sampling(p, *args, x=x, noise=x, c=None, uc=None)
    return p.sd_model.forge_objects.unet


def _assert_original_clean(unet, host_sampling, host_sigmas):
    assert unet.object_patches == {}
    assert not unet.model_options.get("sampler_post_cfg_function")
    assert unet.model.model_sampling is host_sampling
    torch.testing.assert_close(host_sampling.sigmas, host_sigmas, rtol=0, atol=0)


def test_crafted_yaml_reaches_forge_loader_as_vpred(reforge, tmp_path):
    sd_model = _forge_loaded_model(reforge, tmp_path)
    assert sd_model.parameterization == "v"
    assert isinstance(sd_model.forge_objects.unet.model.model_sampling, reforge.ms.V_PREDICTION)


def test_host_ztsnr_is_not_applied_twice(reforge, tmp_path):
    """ztsnr marker: reForge rescales its own sigmas; the pack (explicit betas: a patch) must not rescale again."""
    from vpred_core.sampling.schedules import rescale_zero_terminal_snr, sigmas_from_alphas_cumprod

    sd_model = _forge_loaded_model(reforge, tmp_path)
    unet = sd_model.forge_objects.unet
    for args in (ENABLED_ARGS, EXPLICIT_BETAS_ARGS):
        script, p = reforge.data.script_class(), _P(sd_model)
        _start(script, p, args)
        _host_ztsnr_step(reforge, p)
        patched = _sampling_pass(reforge, script, p, args)
        ms = patched.get_model_object("model_sampling")
        assert isinstance(ms, reforge.ms.V_PREDICTION)
        assert float(ms.sigma_max) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
        abar = 1.0 / (1.0 + sd_model.sigmas_original.double() ** 2)
        once = sigmas_from_alphas_cumprod(rescale_zero_terminal_snr(abar)).float()
        torch.testing.assert_close(ms.sigmas.float(), once, rtol=SIGMAS_RTOL, atol=1e-5)
        assert float(p.sampler.get_sigmas(p, STEPS)[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
        _host_ztsnr_undo(p)
        script.postprocess(p, None, *args)
    assert "model_sampling" not in unet.object_patches


def test_forced_ztsnr_patches_a_clone_and_the_pass_sampler(reforge, tmp_path):
    """No ztsnr marker, ZTSNR forced on: object patch on a clone, the pass's k-diffusion sigmas start at sigma_max,
    the loaded unet keeps its own model_sampling."""
    sd_model = _forge_loaded_model(reforge, tmp_path, markers=("v_pred",))
    unet = sd_model.forge_objects.unet
    host_sampling, host_sigmas = unet.model.model_sampling, unet.model.model_sampling.sigmas.clone()
    script, p = reforge.data.script_class(), _P(sd_model)
    _start(script, p, FORCED_ZTSNR_ARGS)
    patched = _sampling_pass(reforge, script, p, FORCED_ZTSNR_ARGS)
    assert patched is not unet and "model_sampling" in patched.object_patches
    ms = patched.get_model_object("model_sampling")
    assert isinstance(ms, reforge.ms.V_PREDICTION)
    assert float(ms.sigma_max) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    assert float(p.sampler.get_sigmas(p, STEPS)[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    _assert_original_clean(unet, host_sampling, host_sigmas)
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    next_pass = _sampling_pass(reforge, reforge.data.script_class(), _P(sd_model), DISABLED_ARGS)
    assert next_pass is unet
    assert float(reforge.sd_samplers.create_sampler("Euler", sd_model).get_sigmas(_P(sd_model), STEPS)[0]) == \
        pytest.approx(HOST_SIGMA_MAX, rel=SIGMA_MAX_RTOL)


def _cond(reforge, seed):
    gen = torch.Generator().manual_seed(seed)
    return reforge.forge_sampler.cond_from_a1111_to_patched_ldm(torch.randn(1, TOKENS, TINY_CONTEXT, generator=gen))


def test_cfg_rescale_through_reforge_sampling_function(reforge, tmp_path):
    """The clone's post-cfg function, run by ldm_patched's own sampling_function on the tiny model, equals the
    core's rescale_cfg_denoised of the host's cond / uncond predictions."""
    from vpred_core.sampling.cfg import rescale_cfg_denoised

    sd_model = _forge_loaded_model(reforge, tmp_path, markers=("v_pred",))
    unet = sd_model.forge_objects.unet
    script, p = reforge.data.script_class(), _P(sd_model)
    _start(script, p, FORCED_ZTSNR_ARGS)
    try:
        patched = _sampling_pass(reforge, script, p, FORCED_ZTSNR_ARGS)
        calls = _count_post_cfg_calls(patched)
        actual, expected = _run_sampling_function(reforge, patched, unet)
    finally:
        script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    assert calls == [1] and torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, rtol=CFG_ATOL, atol=CFG_ATOL)
    # the tiny model barely separates cond from uncond (rescale ~ identity there): distinct predictions through
    # ldm_patched's own cfg_function show the post-cfg function really rescales
    cond_x0, uncond_x0, x, sigma = _distinct_predictions()
    model_options = {"sampler_post_cfg_function": [make_post_cfg_for(FORCED_ZTSNR_ARGS)]}
    rescaled = reforge.samplers.cfg_function(None, cond_x0, uncond_x0, CFG_SCALE, x, sigma, model_options=model_options,
                                             cond=[{}], uncond=[{}])
    torch.testing.assert_close(rescaled, rescale_cfg_denoised(x, sigma, cond_x0, uncond_x0, CFG_SCALE, PHI, "v"),
                               rtol=CFG_ATOL, atol=CFG_ATOL)
    assert not torch.allclose(rescaled, uncond_x0 + CFG_SCALE * (cond_x0 - uncond_x0), rtol=CFG_ATOL, atol=CFG_ATOL)


def make_post_cfg_for(args):
    from vpred_ztsnr_webui.logic_ui import args_to_request
    from vpred_ztsnr_webui.patcher import make_post_cfg

    return make_post_cfg(args_to_request(args).settings.cfg_rescale, CFG_SCALE)


def _distinct_predictions():
    gen = torch.Generator().manual_seed(SEED)
    shape = (2, *LATENT_SHAPE[1:])
    cond_x0, uncond_x0 = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    sigma = torch.full((shape[0],), ZTSNR_SIGMA_MAX)
    return cond_x0, uncond_x0, torch.randn(shape, generator=gen) * ZTSNR_SIGMA_MAX, sigma


def _count_post_cfg_calls(patched) -> list:
    """Wrap the clone's (only) post-cfg function with a call counter."""
    functions = patched.model_options.get("sampler_post_cfg_function") or []
    assert len(functions) == 1
    calls, inner = [0], functions[0]

    def counted(args):
        calls[0] += 1
        return inner(args)

    patched.model_options["sampler_post_cfg_function"] = [counted]
    return calls


def _run_sampling_function(reforge, patched, unet):
    """(ldm_patched sampling_function output, core rescale of the host's cond / uncond) at sigma_max."""
    from vpred_core.sampling.cfg import rescale_cfg_denoised

    cond, uncond = _cond(reforge, 1), _cond(reforge, 2)
    gen = torch.Generator().manual_seed(SEED)
    patched.patch_model()
    try:
        sigma = patched.model.model_sampling.sigma_max.view(1)
        x = torch.randn(LATENT_SHAPE, generator=gen) * float(sigma)
        host_out = reforge.samplers.calc_cond_batch(patched.model, [cond, uncond], x, sigma, unet.model_options)
        actual = reforge.samplers.sampling_function(patched.model, x, sigma, uncond, cond, CFG_SCALE,
                                                    patched.model_options, 0)
    finally:
        patched.unpatch_model()
    expected = rescale_cfg_denoised(x, sigma, host_out[0], host_out[1], CFG_SCALE, PHI, "v")
    return actual, expected


def test_raised_generation_leaves_nothing_on_the_loaded_unet(reforge, tmp_path):
    """A pass that raised (no postprocess): the loaded unet was never patched, and the next request (disabled)
    samples with the host's own objects and timesteps."""
    timesteps_mod = host_import("modules.sd_samplers_timesteps")
    sd_model = _forge_loaded_model(reforge, tmp_path, markers=("v_pred",))
    unet = sd_model.forge_objects.unet
    host_sampling, host_sigmas = unet.model.model_sampling, unet.model.model_sampling.sigmas.clone()
    crashed = _P(sd_model)
    script = reforge.data.script_class()
    _start(script, crashed, FORCED_ZTSNR_ARGS)
    _sampling_pass(reforge, script, crashed, FORCED_ZTSNR_ARGS)  # ... and sampling raised: no postprocess
    _assert_original_clean(unet, host_sampling, host_sigmas)
    nxt, p = reforge.data.script_class(), _P(sd_model)
    _start(nxt, p, DISABLED_ARGS)
    assert not hasattr(timesteps_mod.CompVisSampler.get_timesteps, "vpred_original_get_timesteps")
    assert _sampling_pass(reforge, nxt, p, DISABLED_ARGS) is unet
    _assert_original_clean(unet, host_sampling, host_sigmas)
