"""Forge: the extension loaded by Forge's own script loader, a request through the Script's hooks on a Forge model
object built without weights (``WEBUI_PATH`` = a Forge tree, run with the Forge venv: gradio 4).

The model object carries what ``processing`` reads: ``forge_objects`` (+ ``_original`` / ``_after_applying_lora``)
around a real ``UnetPatcher`` / ``KModel`` with Forge's eps predictor (stand-in network, see
test_webui_host_forge.py), ``model_config``, ``sd_checkpoint_info`` of a v-pred checkpoint. A pass is what
``StableDiffusionProcessingTxt2Img.sample`` does: ``create_sampler``, ``forge_objects`` reset from
``forge_objects_after_applying_lora``, ``process_before_every_sampling``."""

from __future__ import annotations

import types

import pytest
import torch
from test_webui_host_forge import _forge_unet, forge  # noqa: F401 - module fixture
from webui_host_env import (
    HOST_SIGMA_MAX,
    PHI,
    SIGMA_MAX_RTOL,
    WEBUI_PATH,
    ZTSNR_SIGMA_MAX,
    host_import,
    load_vpred_script,
    pack,
    script_args,
)

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]
ckpt_factory = pytest.importorskip("ckpt_factory")

STEPS = 20
CFG_SCALE = 7.0
LAST_T = 999
HOST_LAST_T = 951
LATENT_SHAPE = (1, 4, 8, 8)
FORCED_ZTSNR_ARGS = script_args(ztsnr="on", phi=PHI, uncond="zero")
DISABLED_ARGS = script_args(enabled=False, ztsnr="on", phi=PHI, uncond="zero")
TRAILING = [0, *range(49, 1000, 50)]


@pytest.fixture(scope="module")
def forge_script(forge):  # noqa: F811
    _, data = load_vpred_script()
    return types.SimpleNamespace(data=data, sd_models=host_import("modules.sd_models"),
                                 sd_samplers=host_import("modules.sd_samplers"), forge=forge)


class _ForgeModel:
    """The attributes of a Forge diffusion engine that processing, the samplers and the Script read."""

    is_sdxl = is_sd2 = is_sd3 = False
    is_sd1 = True

    def __init__(self, forge, checkpoint):  # noqa: F811
        self.forge_objects = forge.engine.ForgeObjects(_forge_unet(forge), None, None, None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.model_config = types.SimpleNamespace(ztsnr=False)
        self.sd_checkpoint_info = types.SimpleNamespace(filename=checkpoint)
        self.extra_generation_params, self.comments = {}, []


class _P:
    def __init__(self, model):
        self.sd_model = model
        self.override_settings, self.extra_generation_params = {}, {}
        self.sampler_noise_scheduler_override = None
        self.negative_prompts = self.all_negative_prompts = [""]
        self.cfg_scale, self.steps, self.hr_cfg = CFG_SCALE, STEPS, CFG_SCALE
        self.is_hr_pass, self.scheduler, self.hr_scheduler = False, "Automatic", None
        self.seeds = [0]


def _model(env, tmp_path):
    checkpoint = str(tmp_path / "tiny_v.safetensors")
    ckpt_factory.build_checkpoint(checkpoint, "sd1", markers=("v_pred",))
    model = _ForgeModel(env.forge, checkpoint)
    env.sd_models.model_data.set_sd_model(model)
    return model


def _start(script, p, args):
    script.before_process(p, *args)
    script.process(p, *args)
    script.process_batch(p, *args, batch_number=0, prompts=[""], seeds=[0], subseeds=[0])


def _pass(env, script, p, args, sampler_name):
    p.sampler = env.sd_samplers.create_sampler(sampler_name, p.sd_model)
    p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
    x = torch.randn(LATENT_SHAPE)
    script.process_before_every_sampling(p, *args, x=x, noise=x, c=None, uc=None)
    return p.sd_model.forge_objects.unet


def _assert_host_unet(unet, host_predictor, host_sigmas):
    assert unet.object_patches == {} and not unet.model_options.get("sampler_post_cfg_function")
    assert unet.model.predictor is host_predictor and host_predictor.prediction_type == "epsilon"
    torch.testing.assert_close(host_predictor.sigmas, host_sigmas, rtol=0, atol=0)


def test_loaded_by_forge_script_loader(forge_script):
    assert forge_script.data.script_class.__name__ == "VPredScript"


def test_request_patches_a_clone_and_euler_starts_at_ztsnr_sigma_max(forge_script, tmp_path):
    model = _model(forge_script, tmp_path)
    unet = model.forge_objects.unet
    host_predictor, host_sigmas = unet.model.predictor, unet.model.predictor.sigmas.clone()
    script, p = forge_script.data.script_class(), _P(model)
    _start(script, p, FORCED_ZTSNR_ARGS)
    patched = _pass(forge_script, script, p, FORCED_ZTSNR_ARGS, "Euler")
    predictor = patched.get_model_object("predictor")
    assert patched is not unet and predictor.prediction_type == "v_prediction"
    assert len(patched.model_options.get("sampler_post_cfg_function") or []) == 1
    assert float(p.sampler.get_sigmas(p, STEPS)[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    _assert_host_unet(unet, host_predictor, host_sigmas)
    assert p.extra_generation_params["VPred ZTSNR"] == "on" and p.extra_generation_params["VPred spacing"] == "trailing"
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    nxt, q = forge_script.data.script_class(), _P(model)
    _start(nxt, q, DISABLED_ARGS)
    assert _pass(forge_script, nxt, q, DISABLED_ARGS, "Euler") is unet
    assert float(q.sampler.get_sigmas(q, STEPS)[0]) == pytest.approx(HOST_SIGMA_MAX, rel=SIGMA_MAX_RTOL)


@pytest.mark.parametrize("sampler_name", ["DDIM", "PLMS", "UniPC"])
def test_timestep_samplers_reach_t_max(forge_script, tmp_path, sampler_name):
    """Forge's timestep samplers map t to sigma through ``sd_model.alphas_cumprod`` (recomputed from the loaded
    predictor when the sampler is created): the pass gets the plan's, t=999 is reached and maps to sigma_max."""
    pack_forge = pack("a1111_extension.forge")
    model = _model(forge_script, tmp_path)
    script, p = forge_script.data.script_class(), _P(model)
    _start(script, p, FORCED_ZTSNR_ARGS)
    patched = _pass(forge_script, script, p, FORCED_ZTSNR_ARGS, sampler_name)
    host_alphas = getattr(model, pack_forge.SAVED_ATTR).host
    timesteps = p.sampler.get_timesteps(p, STEPS)
    if sampler_name == "UniPC":  # left to the host: only the number of timesteps is read, it walks its own grid
        assert int(timesteps.max()) == HOST_LAST_T
    else:
        assert timesteps.tolist() == TRAILING
    abar = p.sampler.model_wrap_cfg.inner_model.inner_model.alphas_cumprod
    sigma = ((1 - abar[LAST_T]) / abar[LAST_T]) ** 0.5
    assert float(sigma) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    predictor = patched.get_model_object("predictor")
    assert round(float(predictor.timestep(sigma.view(1)))) == LAST_T
    script.postprocess(p, None, *FORCED_ZTSNR_ARGS)
    assert model.alphas_cumprod is host_alphas
    fresh = forge_script.sd_samplers.create_sampler(sampler_name, model)  # the host's next sampler: its own
    assert int(fresh.get_timesteps(_P(model), STEPS).max()) == HOST_LAST_T


def test_raised_request_leaves_nothing_behind(forge_script, tmp_path):
    pack_forge = pack("a1111_extension.forge")
    model = _model(forge_script, tmp_path)
    unet = model.forge_objects.unet
    host_predictor, host_sigmas = unet.model.predictor, unet.model.predictor.sigmas.clone()
    script, crashed = forge_script.data.script_class(), _P(model)
    _start(script, crashed, FORCED_ZTSNR_ARGS)
    _pass(forge_script, script, crashed, FORCED_ZTSNR_ARGS, "DDIM")  # ... sampling raised: no postprocess
    host_alphas = getattr(model, pack_forge.SAVED_ATTR).host
    nxt, p = forge_script.data.script_class(), _P(model)
    _start(nxt, p, DISABLED_ARGS)
    assert model.alphas_cumprod is host_alphas and not hasattr(model, pack_forge.SAVED_ATTR)
    assert _pass(forge_script, nxt, p, DISABLED_ARGS, "Euler") is unet
    _assert_host_unet(unet, host_predictor, host_sigmas)


@pytest.mark.parametrize("sampler_name", ["Euler", "Heun", "DDIM", "UniPC"])
def test_plain_checkpoint_with_defaults_is_invisible(forge_script, tmp_path, sampler_name):
    """A plain eps checkpoint, the accordion at its defaults: the same latents as without the extension through
    Forge's own sampler, and no VPred key."""
    webui_forge = host_import("webui_forge")
    env = webui_forge.forge_env()
    model = webui_forge.forge_model(env, tmp_path, "plain", (), "epsilon", webui_forge.ForgeOracle("eps", False))
    host = webui_forge.forge_request(env, None, webui_forge.txt2img_processing(env, model, sampler_name, 2), (), 2)
    p = webui_forge.txt2img_processing(env, model, sampler_name, 2)
    ours = webui_forge.forge_request(env, forge_script.data.script_class(), p, script_args(), 2)
    torch.testing.assert_close(ours, host, rtol=0, atol=0)
    assert not [k for k in p.extra_generation_params if str(k).startswith("VPred")]
