"""Issue 10 (b): the infotext records the applied values and a paste reproduces the sampling exactly. Two requests
through the host's own ``process_images``: the second from the first's pasted infotext (the host's
``create_infotext`` -> ``infotext_utils.parse_generation_parameters`` -> the accordion's paste getters, None =
the field is left at its UI value): identical schedule table, alphas, sigmas / timesteps per call, prediction type and
latents (``WEBUI_PATH``; A1111, see webui_a1111.py).

The checkpoint states v + ZTSNR (marker keys) and its YAML states ``linear_end: 0.0125`` (issue 10 item 2: the
infotext must say 0.0125, the applied value, not the default 0.012); the second request runs on the same checkpoint
and on one that states nothing (the paste forces the values)."""

from __future__ import annotations

import types

import pytest
import torch
import webui_a1111
import yaml
from webui_host_env import WEBUI_PATH, host_import, is_forge_family, load_vpred_script, pack

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

STEPS = 10
YAML_LINEAR_END = 0.0125


@pytest.fixture(scope="module")
def loaded_script():
    if is_forge_family():
        pytest.skip("A1111 model flow (reForge / Forge: test_webui_host_reforge*.py / forge*.py)")
    return load_vpred_script()


def _stated_with_yaml(models, directory):
    """A v + ZTSNR checkpoint with a YAML beside it stating linear_end 0.0125; the model object is what the host builds
    from that YAML (its own betas are then 0.0125 too)."""
    sidecar_yaml = pack("vpred_core.checkpoints.sidecar_yaml")
    checkpoint = str(directory / "stated.safetensors")
    host_import("ckpt_factory").build_checkpoint(checkpoint, "sd1", markers=("v_pred", "ztsnr"))
    override = directory / "override.yaml"
    override.write_text(yaml.safe_dump({"prediction": "v", "linear_end": YAML_LINEAR_END}))
    outcome = sidecar_yaml.write_yaml_for_checkpoint(checkpoint, override_path=str(override))
    assert outcome.status == sidecar_yaml.WRITTEN
    return models.make("stated", ("v_pred", "ztsnr"), config_path=outcome.yaml_path)


@pytest.fixture
def env(loaded_script, tmp_path):
    models = webui_a1111.Models(str(tmp_path))
    stated = _stated_with_yaml(models, tmp_path)
    plain = models.make("plain", ())
    webui_a1111.use_model(stated, keep=[plain])
    with webui_a1111.host_options(sd_checkpoints_limit=2):  # both objects stay cached (the host trashes extras)
        yield types.SimpleNamespace(data=loaded_script[1], stated=stated, plain=plain)
    models.close()


def pasted_args(data, infotext):
    """What the accordion holds after pasting ``infotext`` (fields whose getter says None keep their UI value)."""
    gr = host_import("gradio")
    params = host_import("modules.infotext_utils").parse_generation_parameters(infotext)
    script = data.script_class()
    script.is_txt2img, script.is_img2img = True, False
    with gr.Blocks():
        components = script.ui(False)
    values = [getter(params) for _, getter in script.infotext_fields]
    return tuple(component.value if value is None else value
                 for component, value in zip(components, values, strict=True))


EXACT = {"rtol": 0, "atol": 0}
# Another checkpoint: its own betas differ (0.012), so the plan's alphas come from the core's float64 schedule, not
# from the first checkpoint's float32 tensor; the ZTSNR rescale of the two differs in the last float32 bit.
LAST_BIT = {"rtol": 1e-5, "atol": 1e-6}


def assert_same_sampling(first, second, tol=None) -> None:
    tol = tol or EXACT
    assert len(first.passes) == len(second.passes) >= 1
    for one, two in zip(first.passes, second.passes, strict=True):
        assert one.parameterization == two.parameterization
        torch.testing.assert_close(two.alphas_cumprod, one.alphas_cumprod, **tol)
        for table in ("table", "denoiser_alphas"):
            if getattr(one, table) is not None:
                torch.testing.assert_close(getattr(two, table), getattr(one, table), **tol)
        torch.testing.assert_close(torch.stack(two.calls).double(), torch.stack(one.calls).double(), **tol)
    torch.testing.assert_close(second.latents, first.latents, **(EXACT if tol is EXACT else {"rtol": 0, "atol": 1e-4}))


@pytest.mark.parametrize("sampler_name", ["Euler", "DDIM"])
def test_paste_reproduces_the_applied_sampling(env, sampler_name):
    first = webui_a1111.generate(env.data, webui_a1111.txt2img(env.stated, sampler_name, STEPS), skip_decode=True)
    keys = first.vpred_keys()
    assert (keys["VPred prediction"], keys["VPred ZTSNR"], keys["VPred spacing"]) == ("v", "on", "trailing")
    assert float(keys["VPred linear end"]) == YAML_LINEAR_END  # the applied value (issue 10 item 2)
    assert first.passes[0].parameterization == "v" and float(first.passes[0].alphas_cumprod[-1]) < 1e-6
    args = pasted_args(env.data, first.infotext)
    assert args[0] is True and float(args[pack("a1111_extension.ui").ARG_NAMES.index("beta_end")]) == YAML_LINEAR_END
    again = webui_a1111.generate(env.data, webui_a1111.txt2img(env.stated, sampler_name, STEPS), args,
                                 skip_decode=True)
    assert_same_sampling(first, again)
    detection = pack("a1111_extension.ui").DETECTION_KEY  # information only: where the values came from
    assert {k: v for k, v in again.vpred_keys().items() if k != detection} == {
        k: v for k, v in keys.items() if k != detection}
    elsewhere = webui_a1111.generate(env.data, webui_a1111.txt2img(
        env.plain, sampler_name, STEPS, override_settings={"sd_model_checkpoint": env.plain.sd_checkpoint_info.title}),
        args, skip_decode=True)
    assert [one.model for one in elsewhere.passes] == [env.plain]
    assert_same_sampling(first, elsewhere, LAST_BIT)


def test_paste_keeps_a_forced_host_spacing_and_the_rescale(env):
    """Forced values other than the model sampling round-trip too: spacing host, CFG rescale, window, uncond."""
    ui = pack("a1111_extension.ui")
    values = dict(zip(ui.ARG_NAMES, ui.ARG_DEFAULTS.values(), strict=True))
    values.update(spacing="host", phi=0.5, space="x0", sigma_high=20.0, sigma_low=0.5, uncond="comma")
    args = tuple(values[name] for name in ui.ARG_NAMES)
    first = webui_a1111.generate(env.data, webui_a1111.txt2img(env.stated, "DDIM", STEPS), args, skip_decode=True)
    keys = first.vpred_keys()
    assert (keys["VPred spacing"], keys["VPred CFG rescale"], keys["VPred uncond"]) == ("host", "0.5", "comma")
    assert max(first.passes[0].call_values()) < 999  # the host's own leading+1 timesteps
    again = webui_a1111.generate(env.data, webui_a1111.txt2img(env.stated, "DDIM", STEPS),
                                 pasted_args(env.data, first.infotext), skip_decode=True)
    assert_same_sampling(first, again)
