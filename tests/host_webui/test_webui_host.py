"""Host tests against a webui source tree (``WEBUI_PATH``); skipped when it is unset (setup in conftest.py).

The loader, the CFG callbacks with the host's own callback registry and prompt parser, and reForge's model-sampling
object built from the plan (only modules that import without launching the UI)."""

import importlib
import importlib.util
import os
import sys

import pytest
import torch
from webui_host_env import PACKAGE_NAME, ROOT, WEBUI_PATH, host_import, initialized_shared, pack, script_args

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui source tree)"),
]
PHI = 0.7
REPOSITORY_TOP_LEVEL = {"a1111_extension", "vpred_core", "nodes", "tests", "scripts", "__init__"}


def test_scripts_loader_imports_extension_like_the_webui():
    """As modules.scripts.load_scripts: extension root first on sys.path, module loaded from its file path; the
    repository becomes the private package ``vpred_ztsnr_toolkit`` and no generic top-level name is exposed."""
    scripts = host_import("modules.scripts")
    callbacks = host_import("modules.script_callbacks")
    saved = {key: list(value) for key, value in callbacks.callback_map.items()}
    before = set(sys.modules)
    sys.path.insert(0, str(ROOT))  # (in place: the host's modules.paths adds its repositories meanwhile)
    try:
        path = ROOT / "scripts" / "vpred_ztsnr.py"
        spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT))
        for key, value in saved.items():  # loading again registered the extension's callbacks a second time
            callbacks.callback_map[key][:] = value
    package = module.load_package()
    assert package.__name__ == PACKAGE_NAME == module.PACKAGE_NAME
    assert importlib.import_module(f"{PACKAGE_NAME}.a1111_extension.ui").ARG_NAMES
    assert module.in_webui() and issubclass(module.VPredScript, scripts.Script)
    importlib.import_module(f"{PACKAGE_NAME}.a1111_extension.request")
    new_top_level = {name.split(".")[0] for name in set(sys.modules) - before}
    assert not new_top_level & REPOSITORY_TOP_LEVEL, "the extension exposed a generic top-level module name"


class _Sampler:
    def __init__(self, cond, scale):
        self.sampler_extra_args = {"cond": cond, "cond_scale": scale}


class _Denoiser:
    def __init__(self, p, sampler):
        self.p, self.sampler, self.step = p, sampler, 0


class _P:
    cfg_scale = 7.0
    negative_prompts = ["", "bad hands"]


def test_cfg_hook_with_real_callbacks_and_prompt_parser():
    initialized_shared()  # the host's callbacks read shared.opts
    script_callbacks = host_import("modules.script_callbacks")
    prompt_parser = host_import("modules.prompt_parser")
    guidance = pack("a1111_extension.guidance")
    ui = pack("a1111_extension.ui")
    cfg = pack("vpred_core.sampling.cfg")

    torch.manual_seed(0)
    batch = 2
    cond_tensors = torch.randn(batch, 77, 768)
    scheduled = [[prompt_parser.ScheduledPromptConditioning(20, cond_tensors[i])] for i in range(batch)]
    multicond = prompt_parser.MulticondLearnedConditioning(
        shape=(batch,), batch=[[prompt_parser.ComposableScheduledPromptConditioning(s)] for s in scheduled]
    )
    p = _P()
    settings = ui.request_from_args(script_args(phi=PHI, uncond="zero")).settings
    callbacks = guidance.RequestCallbacks(p, settings, rescale_here=True)
    callbacks.register()
    try:
        x = torch.randn(batch, 4, 8, 8) * 5
        sigma = torch.tensor([14.6, 14.6])
        uncond_text = torch.ones(batch, 77, 768)
        denoiser = _Denoiser(p, _Sampler(multicond, 7.0))
        params = script_callbacks.CFGDenoiserParams(
            torch.cat([x, x]), None, torch.cat([sigma, sigma]), 0, 20, cond_tensors, uncond_text, denoiser
        )
        script_callbacks.cfg_denoiser_callback(params)
        assert params.text_uncond[0].abs().sum() == 0 and params.text_uncond[1].abs().sum() > 0
        cond_x0, uncond_x0 = torch.randn(batch, 4, 8, 8), torch.randn(batch, 4, 8, 8)
        x_out = torch.cat([cond_x0, uncond_x0])
        script_callbacks.cfg_denoised_callback(script_callbacks.CFGDenoisedParams(x_out, 0, 20, None))
        combined = x_out[batch:] + 7.0 * (x_out[:batch] - x_out[batch:])
        expected = cfg.rescale_cfg_denoised(x, sigma, cond_x0, uncond_x0, 7.0, PHI, "v")
        torch.testing.assert_close(combined, expected, rtol=1e-5, atol=1e-5)
        # a denoiser of another request is ignored
        other_denoiser = _Denoiser(_P(), None)
        other = script_callbacks.CFGDenoiserParams(x, None, sigma, 0, 20, cond_tensors, uncond_text, other_denoiser)
        script_callbacks.cfg_denoiser_callback(other)
        assert other.text_uncond is uncond_text
    finally:
        callbacks.remove()
    assert not any(getattr(c.callback, "__self__", None) is callbacks
                   for c in script_callbacks.callback_map["callbacks_cfg_denoiser"])
    stale = guidance.RequestCallbacks(p, settings, rescale_here=True)
    stale.register()
    assert guidance.remove_stale_callbacks() == 2


def test_reforge_model_sampling_patch_object():
    ms = host_import("ldm_patched.modules.model_sampling")
    forge = pack("a1111_extension.forge")
    settings = pack("vpred_core.settings")

    class EpsSampling(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    host_sampling = EpsSampling(None, zsnr=True)  # reForge already applied ZTSNR to its own object

    class _Model:
        model_sampling = host_sampling
        model_config = None

    class _Unet:
        model = _Model()

    stated = settings.Detected(prediction="v", ztsnr=True)
    plan = settings.resolve_model_sampling(settings.ModelSamplingSettings(), stated,
                                           settings.Detected(prediction="eps", ztsnr=True))
    obj = forge._reforge_model_sampling(_Unet(), plan, plan.sigmas())
    assert isinstance(obj, ms.V_PREDICTION)
    assert float(obj.sigma_max) == pytest.approx(4518.76, rel=1e-3)
    torch.testing.assert_close(obj.sigmas, host_sampling.sigmas.float(), rtol=1e-4, atol=1e-5)
    x, v = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    denoised = obj.calculate_denoised(obj.sigma_max.view(1), v, x)
    assert torch.isfinite(denoised).all()
