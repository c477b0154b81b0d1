"""Host tests against a webui source tree (``WEBUI_PATH``); skipped when it is unset (setup in conftest.py).

Only modules that import without launching the UI are used (see docs/HOST_TESTING.md, "webui")."""

import importlib
import importlib.util
import os
import pathlib
import sys

import pytest
import torch
from webui_host_env import host_import, initialized_shared

WEBUI_PATH = os.environ.get("WEBUI_PATH")
ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui source tree)"),
]


def _try_import(name):
    return host_import(name)


def test_scripts_loader_imports_extension_like_the_webui():
    """As modules.scripts.load_scripts: extension root first on sys.path, module loaded from its file path."""
    sys.path.insert(0, str(ROOT))  # (in place: the host's modules.paths adds its repositories meanwhile)
    try:
        path = ROOT / "scripts" / "vpred_ztsnr.py"
        spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT))
    package = module.load_package()
    assert package.__name__ == "vpred_ztsnr_webui"
    assert importlib.import_module("vpred_ztsnr_webui.logic_ui").ARG_NAMES
    scripts = _try_import("modules.scripts")
    assert module.in_webui() and issubclass(module.VPredScript, scripts.Script)


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
    script_callbacks = _try_import("modules.script_callbacks")
    prompt_parser = _try_import("modules.prompt_parser")
    from a1111_extension.a1111_callbacks import RequestCallbacks, remove_stale
    from a1111_extension.logic_ui import args_to_request
    from vpred_core.sampling.cfg import rescale_cfg_denoised

    torch.manual_seed(0)
    batch = 2
    cond_tensors = torch.randn(batch, 77, 768)
    scheduled = [[prompt_parser.ScheduledPromptConditioning(20, cond_tensors[i])] for i in range(batch)]
    multicond = prompt_parser.MulticondLearnedConditioning(
        shape=(batch,), batch=[[prompt_parser.ComposableScheduledPromptConditioning(s)] for s in scheduled]
    )
    p = _P()
    settings = args_to_request((True, "auto", "auto", 0, True, 0.7, "v", 0, 0, "zero")).settings
    callbacks = RequestCallbacks(p, settings, rescale_here=True)
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
        expected = rescale_cfg_denoised(x, sigma, cond_x0, uncond_x0, 7.0, 0.7, "v")
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
    stale = RequestCallbacks(p, settings, rescale_here=True)
    stale.register()
    assert remove_stale() == 2


def test_reforge_model_sampling_patch_object():
    ms = _try_import("ldm_patched.modules.model_sampling")
    from a1111_extension.patcher import _reforge_model_sampling
    from vpred_core.settings import Detected, ModelSamplingSettings, resolve_model_sampling

    class EpsSampling(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    host_sampling = EpsSampling(None, zsnr=True)  # reForge already applied ZTSNR to its own object

    class _Model:
        model_sampling = host_sampling
        model_config = None

    class _Unet:
        model = _Model()

    plan = resolve_model_sampling(ModelSamplingSettings(), Detected(prediction="v", ztsnr=True),
                                  Detected(prediction="eps", ztsnr=True))
    obj = _reforge_model_sampling(_Unet(), plan, plan.sigmas())
    assert isinstance(obj, ms.V_PREDICTION)
    assert float(obj.sigma_max) == pytest.approx(4518.76, rel=1e-3)
    torch.testing.assert_close(obj.sigmas, host_sampling.sigmas.float(), rtol=1e-4, atol=1e-5)
    x, v = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    denoised = obj.calculate_denoised(obj.sigma_max.view(1), v, x)
    assert torch.isfinite(denoised).all()
