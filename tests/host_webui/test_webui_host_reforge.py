"""reForge path of the extension against reForge's own classes (``WEBUI_PATH`` = a reForge tree).

The model is what ``modules_forge.forge_loader.load_model_for_a1111`` builds, minus the weights: the crafted YAML is
found by the host's ``find_checkpoint_config_near_filename``, instantiated with forge_loader's ``FakeObject`` targets
inside ``no_clip()``, and the unet is a real ``UnetPatcher`` around a tiny ``ldm_patched`` SD15 ``BaseModel`` whose
``model_sampling`` is replaced the way forge_loader does for ``parameterization == "v"``. A sampling pass is what
``processing`` does: ``create_sampler``, ``forge_objects`` reset from ``forge_objects_after_applying_lora``,
``process_before_every_sampling``; the host's own ZTSNR step (``process_images_inner``) is reproduced with its own
functions."""

from __future__ import annotations

import pytest
import torch
from webui_forge import (
    P,
    host_ztsnr_step,
    host_ztsnr_undo,
    reforge_env,
    reforge_model,
    sampling_pass,
    start,
    txt2img_processing,
)
from webui_forge import request as forge_request
from webui_host_env import HOST_SIGMA_MAX, SIGMA_MAX_RTOL, WEBUI_PATH, ZTSNR_SIGMA_MAX, host_import, pack, script_args

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

STEPS = 20
CFG_SCALE = 7.0
SIGMAS_RTOL = 1e-4
CFG_ATOL = 1e-5
SEED = 1234
TINY_CONTEXT = 32
TOKENS = 77
LATENT_SHAPE = (1, 4, 8, 8)
PHI = 0.7
HOST_LAST_T = 951  # leading+1 spacing of the webui for 20 steps


def enabled_args(**values):
    """The accordion with the CFG rescale and the zero empty-negative mode on, the rest as given (defaults: auto)."""
    return script_args(phi=PHI, uncond="zero", **values)


FORCED_ZTSNR = {"ztsnr": "on"}
DISABLED = {"enabled": False}


@pytest.fixture(scope="module")
def reforge():
    """reForge modules (skips on A1111 and on Forge, whose backend has no ldm_patched model_sampling patch)."""
    env = reforge_env()
    if env is None:
        pytest.skip("not a reForge tree (no modules_forge.forge_loader.ForgeSD / no_clip)")
    return env


def _assert_original_clean(unet, host_sampling, host_sigmas):
    assert unet.object_patches == {}
    assert not unet.model_options.get("sampler_post_cfg_function")
    assert unet.model.model_sampling is host_sampling
    torch.testing.assert_close(host_sampling.sigmas, host_sigmas, rtol=0, atol=0)


def test_crafted_yaml_reaches_forge_loader_as_vpred(reforge, tmp_path):
    sd_model = reforge_model(reforge, tmp_path)
    assert sd_model.parameterization == "v"
    assert isinstance(sd_model.forge_objects.unet.model.model_sampling, reforge.ms.V_PREDICTION)


@pytest.mark.parametrize("host_prediction", [None, "eps"], ids=["v-yaml-no-patch", "stock-config-patched"])
def test_host_ztsnr_is_not_applied_twice(reforge, tmp_path, host_prediction):
    """ztsnr marker: reForge rescales its own sigmas. With the v YAML the host already samples as the checkpoint
    states (the plan is not installed, the host's objects are used); loaded with a stock eps config the pack patches a
    fresh V_PREDICTION model_sampling, which must equal reForge's single rescale (not a second one)."""
    schedules = pack("vpred_core.sampling.schedules")
    sd_model = reforge_model(reforge, tmp_path, host_prediction=host_prediction)
    unet = sd_model.forge_objects.unet
    args = enabled_args()
    script, p = reforge.data.script_class(), P(sd_model)
    start(script, p, args)
    host_ztsnr_step(reforge, p)
    patched = sampling_pass(reforge, script, p, args)
    assert ("model_sampling" in patched.object_patches) == (host_prediction == "eps")
    ms = patched.get_model_object("model_sampling")
    assert isinstance(ms, reforge.ms.V_PREDICTION)
    assert float(ms.sigma_max) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    abar = 1.0 / (1.0 + sd_model.sigmas_original.double() ** 2)
    once = schedules.sigmas_from_alphas_cumprod(schedules.rescale_zero_terminal_snr(abar)).float()
    torch.testing.assert_close(ms.sigmas.float(), once, rtol=SIGMAS_RTOL, atol=1e-5)
    assert float(p.sampler.get_sigmas(p, STEPS)[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    assert p.extra_generation_params["VPred prediction"] == "v" and p.extra_generation_params["VPred ZTSNR"] == "on"
    host_ztsnr_undo(p)
    script.postprocess(p, None, *args)
    assert "model_sampling" not in unet.object_patches


def test_forced_ztsnr_patches_a_clone_and_the_pass_sampler(reforge, tmp_path):
    """No ztsnr marker, ZTSNR forced on: object patch on a clone, the pass's k-diffusion sigmas start at sigma_max,
    the loaded unet keeps its own model_sampling."""
    sd_model = reforge_model(reforge, tmp_path, markers=("v_pred",))
    unet = sd_model.forge_objects.unet
    host_sampling, host_sigmas = unet.model.model_sampling, unet.model.model_sampling.sigmas.clone()
    script, p = reforge.data.script_class(), P(sd_model)
    start(script, p, enabled_args(**FORCED_ZTSNR))
    patched = sampling_pass(reforge, script, p, enabled_args(**FORCED_ZTSNR))
    assert patched is not unet and "model_sampling" in patched.object_patches
    ms = patched.get_model_object("model_sampling")
    assert isinstance(ms, reforge.ms.V_PREDICTION)
    assert float(ms.sigma_max) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    assert float(p.sampler.get_sigmas(p, STEPS)[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    _assert_original_clean(unet, host_sampling, host_sigmas)
    script.postprocess(p, None, *enabled_args(**FORCED_ZTSNR))
    next_pass = sampling_pass(reforge, reforge.data.script_class(), P(sd_model), enabled_args(**DISABLED))
    assert next_pass is unet
    assert float(reforge.sd_samplers.create_sampler("Euler", sd_model).get_sigmas(P(sd_model), STEPS)[0]) == \
        pytest.approx(HOST_SIGMA_MAX, rel=SIGMA_MAX_RTOL)


def _cond(reforge, seed):
    gen = torch.Generator().manual_seed(seed)
    return reforge.forge_sampler.cond_from_a1111_to_patched_ldm(torch.randn(1, TOKENS, TINY_CONTEXT, generator=gen))


def test_cfg_rescale_through_reforge_sampling_function(reforge, tmp_path):
    """The clone's post-cfg function, run by ldm_patched's own sampling_function on the tiny model, equals the
    core's rescale_cfg_denoised of the host's cond / uncond predictions."""
    rescale_cfg_denoised = pack("vpred_core.sampling.cfg").rescale_cfg_denoised
    sd_model = reforge_model(reforge, tmp_path, markers=("v_pred",))
    unet = sd_model.forge_objects.unet
    script, p = reforge.data.script_class(), P(sd_model)
    start(script, p, enabled_args(**FORCED_ZTSNR))
    try:
        patched = sampling_pass(reforge, script, p, enabled_args(**FORCED_ZTSNR))
        calls = _count_post_cfg_calls(patched)
        actual, expected = _run_sampling_function(reforge, patched, unet)
    finally:
        script.postprocess(p, None, *enabled_args(**FORCED_ZTSNR))
    assert calls == [1] and torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, rtol=CFG_ATOL, atol=CFG_ATOL)
    # the tiny model barely separates cond from uncond (rescale ~ identity there): distinct predictions through
    # ldm_patched's own cfg_function show the post-cfg function really rescales
    cond_x0, uncond_x0, x, sigma = _distinct_predictions()
    model_options = {"sampler_post_cfg_function": [make_post_cfg_for(enabled_args(**FORCED_ZTSNR))]}
    rescaled = reforge.samplers.cfg_function(None, cond_x0, uncond_x0, CFG_SCALE, x, sigma, model_options=model_options,
                                             cond=[{}], uncond=[{}])
    torch.testing.assert_close(rescaled, rescale_cfg_denoised(x, sigma, cond_x0, uncond_x0, CFG_SCALE, PHI, "v"),
                               rtol=CFG_ATOL, atol=CFG_ATOL)
    assert not torch.allclose(rescaled, uncond_x0 + CFG_SCALE * (cond_x0 - uncond_x0), rtol=CFG_ATOL, atol=CFG_ATOL)


def make_post_cfg_for(args):
    settings = pack("a1111_extension.ui").request_from_args(args).settings
    return pack("a1111_extension.forge").make_post_cfg(settings.cfg_rescale, CFG_SCALE)


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
    rescale_cfg_denoised = pack("vpred_core.sampling.cfg").rescale_cfg_denoised
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
    samplers = pack("a1111_extension.samplers")
    sd_model = reforge_model(reforge, tmp_path, markers=("v_pred",))
    unet = sd_model.forge_objects.unet
    host_sampling, host_sigmas = unet.model.model_sampling, unet.model.model_sampling.sigmas.clone()
    crashed = P(sd_model)
    script = reforge.data.script_class()
    start(script, crashed, enabled_args(**FORCED_ZTSNR))
    sampling_pass(reforge, script, crashed, enabled_args(**FORCED_ZTSNR), "DDIM")  # ... raised: no postprocess
    assert getattr(crashed.sampler, samplers.WRAPPED_FLAG) and "get_timesteps" in vars(crashed.sampler)
    _assert_original_clean(unet, host_sampling, host_sigmas)
    nxt, p = reforge.data.script_class(), P(sd_model)
    start(nxt, p, enabled_args(**DISABLED))
    assert sampling_pass(reforge, nxt, p, enabled_args(**DISABLED), "DDIM") is unet
    assert not getattr(p.sampler, samplers.WRAPPED_FLAG, False) and "get_timesteps" not in vars(p.sampler)
    assert int(p.sampler.get_timesteps(p, STEPS).max()) == HOST_LAST_T  # the host's own leading+1 timesteps
    _assert_original_clean(unet, host_sampling, host_sigmas)


@pytest.mark.parametrize("sampler_name", ["Euler", "Heun", "DDIM", "UniPC"])
def test_plain_checkpoint_with_defaults_is_invisible(reforge, tmp_path, sampler_name):
    """A plain eps checkpoint (no markers, no YAML), the accordion at its defaults: the same latents as without the
    extension through reForge's own sampler, and no VPred key."""
    oracle = host_import("webui_oracle")
    model = reforge_model(reforge, tmp_path, "plain", markers=(), diffusion_model=oracle.OracleUNet("eps", False))
    unet = model.forge_objects.unet
    host = forge_request(reforge, None, txt2img_processing(reforge, model, sampler_name, 2), (), 2)
    p = txt2img_processing(reforge, model, sampler_name, 2)
    ours = forge_request(reforge, reforge.data.script_class(), p, script_args(), 2)
    torch.testing.assert_close(ours, host, rtol=0, atol=0)
    assert not [k for k in p.extra_generation_params if str(k).startswith("VPred")]
    assert unet.object_patches == {}
