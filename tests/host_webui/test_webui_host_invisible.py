"""Issue 10 (a): a plain eps checkpoint (no markers, no YAML), the extension loaded with the accordion at its
defaults, samples bit-identically to the host alone and writes no ``VPred`` infotext key: txt2img, img2img and hires
through the host's own ``process_images``, a representative set of samplers, and on A1111 1.9+ every scheduler of
the host's registry (Align Your Steps, Turbo, DDIM included); also with the host's own "Zero Terminal SNR" option.
Pasting an infotext without ``VPred`` keys switches the pack off (``WEBUI_PATH``; A1111, see webui_a1111.py)."""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch
import webui_a1111
from webui_host_env import WEBUI_PATH, host_import, is_forge_family, load_vpred_script, script_args

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

STEPS = 10
SAMPLERS = ("Euler", "Euler a", "Heun", "DPM++ 2M", "DDIM", "PLMS", "UniPC")


@pytest.fixture(scope="module")
def loaded_script():
    if is_forge_family():
        pytest.skip("A1111 model flow (reForge / Forge: test_webui_host_reforge*.py / forge*.py)")
    return load_vpred_script()


@pytest.fixture
def plain(loaded_script, tmp_path):
    models = webui_a1111.Models(str(tmp_path))
    model = models.make("plain_eps", (), prediction="eps", ztsnr=False)
    webui_a1111.use_model(model)
    yield types.SimpleNamespace(data=loaded_script[1], model=model)
    models.close()


def assert_identical(pack_result, host_result) -> None:
    assert not pack_result.vpred_keys()
    assert pack_result.infotext == host_result.infotext
    assert len(pack_result.passes) == len(host_result.passes)
    for ours, theirs in zip(pack_result.passes, host_result.passes, strict=True):
        assert [c.tolist() for c in ours.calls] == [c.tolist() for c in theirs.calls]
        torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=0)
        assert ours.parameterization == theirs.parameterization
    for ours, theirs in zip(pack_result.samples, host_result.samples, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def _both(env, make_p, args=None):
    """The same request with the extension at its defaults (``args``) and without it."""
    host = webui_a1111.generate(env.data, make_p(), False, skip_decode=True)
    ours = webui_a1111.generate(env.data, make_p(), script_args() if args is None else args, skip_decode=True)
    return ours, host


@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_txt2img_defaults_are_invisible(plain, sampler_name):
    before = webui_a1111.snapshot(plain.model)
    ours, host = _both(plain, lambda: webui_a1111.txt2img(plain.model, sampler_name, STEPS))
    assert_identical(ours, host)
    webui_a1111.assert_restored(plain.model, before)


@pytest.mark.parametrize("sampler_name", ["Euler", "DDIM"])
def test_img2img_and_hires_defaults_are_invisible(plain, sampler_name):
    ours, host = _both(plain, lambda: webui_a1111.img2img(plain.model, sampler_name, STEPS, denoising_strength=0.7))
    assert_identical(ours, host)
    ours, host = _both(plain, lambda: webui_a1111.txt2img(plain.model, sampler_name, STEPS, enable_hr=True,
                                                          hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.6))
    assert len(ours.passes) == 2
    assert_identical(ours, host)


def test_host_ztsnr_option_with_defaults_is_invisible(plain):
    """The webui's own global ZTSNR: still the webui's business when the checkpoint states nothing."""
    ztsnr = {"sd_noise_schedule": "Zero Terminal SNR"}
    ours, host = _both(plain, lambda: webui_a1111.txt2img(plain.model, "Euler", STEPS, override_settings=dict(ztsnr)))
    assert float(host.passes[0].alphas_cumprod[-1]) < 1e-6  # the host applied its ZTSNR
    assert_identical(ours, host)


def _schedulers():
    if importlib.util.find_spec("modules.sd_schedulers") is None:
        return []
    return host_import("modules.sd_schedulers").schedulers


def test_every_host_scheduler_with_defaults_is_invisible(plain):
    """A1111 1.9+: each scheduler of the host's registry (``sd_schedulers.schedulers``)."""
    schedulers = _schedulers()
    fields = getattr(host_import("modules.processing").StableDiffusionProcessingTxt2Img, "__dataclass_fields__", {})
    if not schedulers or "scheduler" not in fields:
        pytest.skip("this webui has no scheduler registry (A1111 1.9+)")
    labels = [scheduler.label for scheduler in schedulers]
    print("schedulers:", labels)
    for label in labels:
        ours, host = _both(plain, lambda label=label: webui_a1111.txt2img(plain.model, "Euler", STEPS, scheduler=label))
        assert_identical(ours, host)


def test_paste_without_vpred_keys_switches_the_pack_off(plain):
    """An image made without the pack (no VPred keys): the host's paste gives enabled False and leaves the other
    fields alone; the request is then the host's own (also on a checkpoint that states v + ZTSNR)."""
    gr = host_import("gradio")
    infotext_utils = host_import("modules.infotext_utils")
    host = webui_a1111.generate(plain.data, webui_a1111.txt2img(plain.model, "Euler", STEPS), False, skip_decode=True)
    params = infotext_utils.parse_generation_parameters(host.infotext)
    script = plain.data.script_class()
    script.is_txt2img, script.is_img2img = True, False
    with gr.Blocks():
        components = script.ui(False)
    pasted = [getter(params) for _, getter in script.infotext_fields]
    assert pasted[0] is False and all(value is None for value in pasted[1:])
    ui_values = [component.value if value is None else value for component, value in zip(components, pasted,
                                                                                            strict=True)]
    ours = webui_a1111.generate(plain.data, webui_a1111.txt2img(plain.model, "Euler", STEPS), tuple(ui_values),
                                skip_decode=True)
    assert_identical(ours, host)
