"""The extension loaded by the webui's own script loader, and one request run through the Script against the host's
real samplers and a tiny ldm model built from the crafted YAML (``WEBUI_PATH``; A1111 1.8 layout)."""

from __future__ import annotations

import pytest
import torch
from webui_host_env import (
    ENABLED_ARGS,
    EXTENSION_DIRNAME,
    SIGMA_MAX_RTOL,
    WEBUI_PATH,
    ZTSNR_SIGMA_MAX,
    host_import,
    is_forge_family,
    load_vpred_script,
    tiny_ldm_model,
)

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]
ckpt_factory = pytest.importorskip("ckpt_factory")

STEPS = 20
TRAIN_TIMESTEPS = 1000
DISABLED_ARGS = (False, *ENABLED_ARGS[1:])


@pytest.fixture(scope="module")
def loaded_script():
    """modules.extensions.list_extensions + modules.scripts.load_scripts, as webui.py's initialize does."""
    return load_vpred_script()


@pytest.fixture
def a1111_only():
    """The A1111 request flow (alphas_cumprod on an ldm model); reForge / Forge run test_webui_host_reforge.py."""
    if is_forge_family():
        pytest.skip("A1111 model flow; reForge / Forge models carry forge_objects (test_webui_host_reforge.py)")


def test_loader_finds_script_and_registers_callbacks(loaded_script):
    scripts, data = loaded_script
    callbacks = host_import("modules.script_callbacks")
    assert data.basedir.endswith(EXTENSION_DIRNAME) and issubclass(data.script_class, scripts.Script)
    script = data.script_class()
    assert script.show(False) is scripts.AlwaysVisible and script.title()
    names = {c.callback.__module__ for c in callbacks.callback_map["callbacks_model_loaded"]}
    assert "vpred_ztsnr_toolkit.a1111_extension.checkpoints" in names


def test_xyz_axes_added_to_builtin_grid(loaded_script):
    callbacks = host_import("modules.script_callbacks")
    xyz = host_import("vpred_ztsnr_webui.xyz")
    module = xyz._xyz_module()
    if module is None:
        pytest.skip("the webui's xyz_grid script did not load here")
    callbacks.before_ui_callback()
    labels = {option.label for option in module.axis_options}
    assert {"VPred CFG rescale phi", "VPred uncond mode", "VPred ZTSNR"} <= labels
    assert xyz.add_axes() == 0  # idempotent


def _tiny_model(tmp_path):
    return tiny_ldm_model(tmp_path)


class _P:
    """The attributes of a StableDiffusionProcessing that the Script and the samplers read."""

    def __init__(self, model):
        self.sd_model = model
        self.override_settings = {}
        self.extra_generation_params = {}
        self.sampler_noise_scheduler_override = None
        self.negative_prompts = self.all_negative_prompts = [""]
        self.cfg_scale = 7.0
        self.steps = STEPS
        self.is_hr_pass, self.scheduler, self.hr_scheduler = False, "Automatic", None  # A1111 1.9+ get_sigmas


def _host_schedule(p, sampler_name):
    sd_samplers = host_import("modules.sd_samplers")
    sampler = sd_samplers.create_sampler(sampler_name, p.sd_model)
    p.sampler = sampler
    if hasattr(sampler, "get_timesteps"):
        return sampler, sampler.get_timesteps(p, STEPS)
    return sampler, sampler.get_sigmas(p, STEPS)


def _snapshot(model):
    return model.alphas_cumprod_original.clone(), model.alphas_cumprod.clone(), model.parameterization


def _assert_restored(model, before, get_timesteps):
    timesteps_mod = host_import("modules.sd_samplers_timesteps")
    torch.testing.assert_close(model.alphas_cumprod_original, before[0], rtol=0, atol=0)
    assert model.parameterization == before[2]
    assert timesteps_mod.CompVisSampler.get_timesteps is get_timesteps


def _start(script, p, args):
    script.before_process(p, *args)
    script.process(p, *args)
    script.process_batch(p, *args, batch_number=0, prompts=[""], seeds=[0], subseeds=[0])


def test_request_starts_at_sigma_max_and_restores(loaded_script, a1111_only, tmp_path):
    _, data = loaded_script
    timesteps_mod = host_import("modules.sd_samplers_timesteps")
    model = _tiny_model(tmp_path)
    host_get_timesteps = timesteps_mod.CompVisSampler.get_timesteps
    before = _snapshot(model)
    script, p = data.script_class(), _P(model)
    _start(script, p, ENABLED_ARGS)
    assert p.extra_generation_params["VPred enabled"] and model.parameterization == "v"
    _, sigmas = _host_schedule(p, "Euler")
    assert float(sigmas[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    sampler, timesteps = _host_schedule(p, "DDIM")
    assert type(sampler.model_wrap).__name__ == "CompVisTimestepsVDenoiser"
    assert int(timesteps.max()) == TRAIN_TIMESTEPS - 1 and len(timesteps) == STEPS
    script.postprocess(p, None, *ENABLED_ARGS)
    _assert_restored(model, before, host_get_timesteps)
    _, host_timesteps = _host_schedule(_P(model), "DDIM")
    assert int(host_timesteps.max()) < TRAIN_TIMESTEPS - 1  # the host's own leading+1 spacing is back


@pytest.mark.parametrize("next_args", [DISABLED_ARGS, ENABLED_ARGS], ids=["next-disabled", "next-enabled"])
def test_interrupted_request_is_repaired_by_the_next(loaded_script, a1111_only, tmp_path, next_args):
    """No postprocess after an exception in sampling: the next request must start from the host's values."""
    _, data = loaded_script
    timesteps_mod = host_import("modules.sd_samplers_timesteps")
    model = _tiny_model(tmp_path)
    host_get_timesteps = timesteps_mod.CompVisSampler.get_timesteps
    before = _snapshot(model)
    crashed = _P(model)
    _start(data.script_class(), crashed, ENABLED_ARGS)  # ... and the generation raised: no postprocess
    script, p = data.script_class(), _P(model)
    script.before_process(p, *next_args)
    if not next_args[0]:
        _assert_restored(model, before, host_get_timesteps)
        _, host_timesteps = _host_schedule(p, "DDIM")
        assert int(host_timesteps.max()) < TRAIN_TIMESTEPS - 1
        return
    _start(script, p, next_args)
    _, sigmas = _host_schedule(p, "Euler")
    assert float(sigmas[0]) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_MAX_RTOL)
    script.postprocess(p, None, *next_args)
    _assert_restored(model, before, host_get_timesteps)
