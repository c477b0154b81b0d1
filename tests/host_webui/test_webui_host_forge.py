"""Forge path of the extension (object patch ``predictor``) against Forge's own backend classes (``WEBUI_PATH`` = a
Forge tree).

Forge's UI needs gradio 4 (the shared test venv has gradio 3 for A1111 / reForge), so ``modules.scripts`` and the
script loader are not importable here: the extension's patcher is called as ``process_before_every_sampling`` does,
on Forge's own ``backend`` objects: the predictor built by ``k_prediction_from_diffusers_scheduler`` (as ``KModel``
builds it), a ``KModel`` + ``UnetPatcher``, ``ForgeObjects``, the k-diffusion ``ForgeScheduleLinker`` of the pass's
sampler and ``sampling_function_inner`` (CFG + post-cfg). Only the diffusion network is a stand-in (a 1x1 conv that
reads the cross-attention context)."""

from __future__ import annotations

import types

import pytest
import torch
from webui_host_env import (
    HOST_SIGMA_MAX,
    PHI,
    SIGMA_MAX_RTOL,
    WEBUI_PATH,
    ZTSNR_SIGMA_MAX,
    host_import,
    initialize_forge_backend,
    pack,
    script_args,
)

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

CFG_SCALE = 7.0
HR_CFG = 3.0
CFG_ATOL = 1e-5
SEED = 1234
CONTEXT_DIM = 8
TOKENS = 4
LATENT_SHAPE = (1, 4, 8, 8)


@pytest.fixture(scope="module")
def forge():
    """Forge backend modules (skips on A1111 / reForge)."""
    if host_import("importlib.util").find_spec("backend") is None:
        pytest.skip("not a Forge tree (no backend package)")
    initialize_forge_backend()  # as webui.py: --always-cpu, packages_3rdparty (gguf) on sys.path
    return types.SimpleNamespace(
        k_prediction=host_import("backend.modules.k_prediction"), k_model=host_import("backend.modules.k_model"),
        unet=host_import("backend.patcher.unet"), engine=host_import("backend.diffusion_engine.base"),
        sampling=host_import("backend.sampling.sampling_function"), condition=host_import("backend.sampling.condition"),
        external=host_import("k_diffusion.external"), diffusers=host_import("diffusers"),
    )


class _Network(torch.nn.Module):
    """Stand-in diffusion network with the attributes KModel / UnetPatcher read."""

    storage_dtype = computation_dtype = torch.float32
    load_device = offload_device = initial_device = torch.device("cpu")

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(SEED)
        self.conv = torch.nn.Conv2d(LATENT_SHAPE[1], LATENT_SHAPE[1], 1)
        self.context = torch.nn.Linear(CONTEXT_DIM, LATENT_SHAPE[1])
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=gen))

    def forward(self, x, t, context=None, **_kwargs):
        return self.conv(x) + self.context(context.mean(dim=1))[:, :, None, None]


def _forge_unet(forge):
    scheduler = forge.diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")
    model = forge.k_model.KModel(model=_Network(), diffusers_scheduler=scheduler)
    return forge.unet.UnetPatcher.from_model(_Network(), scheduler, None, k_predictor=model.predictor)


def _processing(forge, unet):
    sd_model = types.SimpleNamespace(forge_objects=forge.engine.ForgeObjects(unet, None, None, None))
    sampler = types.SimpleNamespace(model_wrap=forge.external.ForgeScheduleLinker(unet.model.predictor))
    return types.SimpleNamespace(sd_model=sd_model, sampler=sampler, cfg_scale=CFG_SCALE, hr_cfg=HR_CFG,
                                 is_hr_pass=False)


def _plan_and_settings(args):
    settings = pack("vpred_core.settings")
    request = pack("a1111_extension.ui").request_from_args(args)
    plan = settings.resolve_model_sampling(request.settings.model_sampling,
                                           settings.Detected(prediction="v", ztsnr=True),
                                           settings.Detected(prediction="eps", ztsnr=False))
    return plan, request.settings


def _patch(p, plan, settings):
    """forge.patch_unet as prepare_pass calls it (the plan's sigmas from the host's schedule tensor)."""
    forge = pack("a1111_extension.forge")
    forge.patch_unet(p, forge.FORGE, plan, plan.sigmas(forge.host_abar(p.sd_model)), settings)


ENABLED_ARGS = script_args(phi=PHI, uncond="zero")


def test_detected_as_forge(forge):
    request = pack("a1111_extension.request")
    assert request.detect_host(_processing(forge, _forge_unet(forge)).sd_model) == pack("a1111_extension.forge").FORGE


def test_predictor_patch_on_a_clone(forge):
    unet = _forge_unet(forge)
    host_predictor, host_sigmas = unet.model.predictor, unet.model.predictor.sigmas.clone()
    p = _processing(forge, unet)
    plan, settings = _plan_and_settings(ENABLED_ARGS)
    _patch(p, plan, settings)
    patched = p.sd_model.forge_objects.unet
    assert patched is not unet and "predictor" in patched.object_patches
    predictor = patched.get_model_object("predictor")
    assert isinstance(predictor, forge.k_prediction.Prediction) and predictor.prediction_type == "v_prediction"
    assert float(predictor.sigma_max) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    assert float(p.sampler.model_wrap.get_sigmas(20)[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    assert unet.object_patches == {} and not unet.model_options.get("sampler_post_cfg_function")
    assert unet.model.predictor is host_predictor and host_predictor.prediction_type == "epsilon"
    torch.testing.assert_close(host_predictor.sigmas, host_sigmas, rtol=0, atol=0)
    assert float(host_predictor.sigma_max) == pytest.approx(HOST_SIGMA_MAX, rel=SIGMA_MAX_RTOL)


def _conds(forge):
    gen = torch.Generator().manual_seed(SEED)
    make = lambda: forge.condition.compile_conditions(torch.randn(1, TOKENS, CONTEXT_DIM, generator=gen))  # noqa: E731
    return make(), make()


@pytest.mark.parametrize("hr_pass", [False, True], ids=["first-pass", "hires-pass"])
def test_post_cfg_through_forge_sampling_function(forge, hr_pass):
    """sampling_function_inner (Forge passes no cond_scale to post-cfg functions): the pass's own scale is used."""
    rescale_cfg_denoised = pack("vpred_core.sampling.cfg").rescale_cfg_denoised
    unet = _forge_unet(forge)
    p = _processing(forge, unet)
    p.is_hr_pass = hr_pass
    scale = HR_CFG if hr_pass else CFG_SCALE
    plan, settings = _plan_and_settings(ENABLED_ARGS)
    _patch(p, plan, settings)
    patched = p.sd_model.forge_objects.unet
    cond, uncond = _conds(forge)
    gen = torch.Generator().manual_seed(SEED)
    host_predictor = unet.model.predictor
    model = patched.forge_patch_model()  # what Forge's memory management does when it loads the pass's unet
    try:
        assert model.predictor is patched.object_patches["predictor"]
        assert model.predictor.prediction_type == "v_prediction"
        sigma = torch.tensor([float(model.predictor.sigma_max)])
        x = torch.randn(LATENT_SHAPE, generator=gen) * float(sigma)
        actual, cond_x0, uncond_x0 = forge.sampling.sampling_function_inner(
            model, x, sigma, uncond, cond, scale, patched.model_options, 0, return_full=True)
    finally:
        patched.forge_unpatch_model()
    assert unet.model.predictor is host_predictor
    torch.testing.assert_close(actual, rescale_cfg_denoised(x, sigma, cond_x0, uncond_x0, scale, PHI, "v"),
                               rtol=CFG_ATOL, atol=CFG_ATOL)
    assert not torch.allclose(actual, uncond_x0 + scale * (cond_x0 - uncond_x0), rtol=CFG_ATOL, atol=CFG_ATOL)


def test_host_ztsnr_is_not_applied_twice(forge):
    """Forge's processing rescales the loaded predictor in place (model_config.ztsnr / the global setting); the
    patched predictor is built from scratch and matches Forge's single rescale."""
    unet = _forge_unet(forge)
    host_predictor = unet.model.predictor
    host_predictor.set_sigmas(forge.k_prediction.rescale_zero_terminal_snr_sigmas(host_predictor.sigmas))
    p = _processing(forge, unet)
    plan, settings = _plan_and_settings(ENABLED_ARGS)
    _patch(p, plan, settings)
    predictor = p.sd_model.forge_objects.unet.get_model_object("predictor")
    torch.testing.assert_close(predictor.sigmas, host_predictor.sigmas, rtol=1e-4, atol=1e-5)
    assert float(predictor.sigma_max) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
