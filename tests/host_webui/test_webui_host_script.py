"""The extension loaded by the webui's own script loader, and requests through the host's own ``process_images`` on a
tiny model whose UNet is the exact oracle (``WEBUI_PATH``; A1111 1.8 / 1.10.1 / dev, see webui_a1111.py).

A checkpoint that states v-prediction + ZTSNR (marker keys), the accordion at its defaults: every pass samples with
the plan (v, the ZTSNR table from sigma_max 4518.76 / t = 999), DDIM / PLMS walk the trailing timesteps down to t = 0
(PLMS's first step from SNR ~0 is a DDIM step), k-diffusion samplers take their first step as a DDIM step (Heun:
one model call fewer), UniPC is left to the host; the applied values are in the infotext; everything is undone."""

from __future__ import annotations

import types

import pytest
import torch
import webui_a1111
import webui_oracle
from webui_host_env import (
    EXTENSION_DIRNAME,
    PACKAGE_NAME,
    WEBUI_PATH,
    host_import,
    is_forge_family,
    load_vpred_script,
    pack,
    script_args,
)

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

STEPS = 20
ZTSNR_SIGMA_MAX = 4518.76
SIGMA_RTOL = 1e-3
STATED = ("v_pred", "ztsnr")
TRAILING_DDIM_CALLS = list(range(999, 0, -50))  # [999, 949, ..., 49]; the last step ends at t = 0
CLEAN_RESIDUAL_MAX = 0.1  # measured 0.066-0.076 (the data's pixel noise is 0.1); ending at t = 49 leaves >= 0.2
RATIO = (0.95, 1.05)


@pytest.fixture(scope="module")
def loaded_script():
    """modules.extensions.list_extensions + modules.scripts.load_scripts, as webui.py's initialize does."""
    return load_vpred_script()


@pytest.fixture
def a1111(loaded_script, tmp_path):
    """A1111 model objects (reForge / Forge carry forge_objects: test_webui_host_reforge*.py / forge*.py)."""
    if is_forge_family():
        pytest.skip("A1111 model flow; reForge / Forge models carry forge_objects")
    models = webui_a1111.Models(str(tmp_path))
    yield types.SimpleNamespace(data=loaded_script[1], make=models.make, h=webui_a1111)
    models.close()


def test_loader_finds_script_and_registers_callbacks(loaded_script):
    scripts, data = loaded_script
    callbacks = host_import("modules.script_callbacks")
    assert data.basedir.endswith(EXTENSION_DIRNAME) and issubclass(data.script_class, scripts.Script)
    script = data.script_class()
    assert script.show(False) is scripts.AlwaysVisible and script.title() == "V-Pred / ZTSNR"

    def modules_of(key):
        return {c.callback.__module__ for c in callbacks.callback_map[key]}

    prefix = f"{PACKAGE_NAME}.a1111_extension."
    assert {prefix + "checkpoints", prefix + "a1111"} <= modules_of("callbacks_model_loaded")
    assert prefix + "ui" in modules_of("callbacks_ui_settings") & modules_of("callbacks_before_ui")
    assert prefix + "checkpoints" in modules_of("callbacks_app_started")


def test_xyz_axes_added_to_builtin_grid(loaded_script):
    callbacks = host_import("modules.script_callbacks")
    ui = pack("a1111_extension.ui")
    module = ui._xyz_module()
    if module is None:
        pytest.skip("the webui's xyz_grid script did not load here")
    callbacks.before_ui_callback()
    labels = {option.label for option in module.axis_options}
    assert {axis[0] for axis in ui.XYZ_AXES} <= labels
    assert ui.add_xyz_axes() == 0  # idempotent


def _heun_calls(steps: int) -> int:
    """k-diffusion Heun: two model calls per step, one for the last (to sigma 0)."""
    return 2 * steps - 1


@pytest.mark.parametrize("sampler_name", ["Euler", "Heun", "DDIM", "PLMS", "UniPC"])
def test_stated_checkpoint_samples_with_the_plan_and_restores(a1111, sampler_name):
    model = a1111.make("stated", STATED, prediction="v", ztsnr=True)
    a1111.h.use_model(model)
    before = a1111.h.snapshot(model)
    assert before[1] == "eps"  # a v-pred checkpoint under the stock config: the pack supplies "v"
    result = a1111.h.generate(a1111.data, a1111.h.txt2img(model, sampler_name, STEPS, batch_size=2), antithetic=2)
    (first,) = result.passes
    calls = first.call_values()
    assert first.parameterization == "v" and float(first.alphas_cumprod[-1]) < 1e-6  # v + ZTSNR
    if sampler_name in ("Euler", "Heun"):
        assert calls[0] == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_RTOL)
        expected = STEPS if sampler_name == "Euler" else 1 + _heun_calls(STEPS - 1)  # first step: one DDIM call
        assert len(calls) == expected
    elif sampler_name == "DDIM":
        assert calls == TRAILING_DDIM_CALLS
    elif sampler_name == "PLMS":  # DDIM first step at 999, then PLMS's pseudo improved Euler (949 and 899)
        assert calls[:3] == [999, 949, 899] and len(calls) == STEPS + 1
    else:  # UniPC: the host's own grid from t = T
        assert calls[0] == pytest.approx(999) and len(calls) == STEPS
    stats = webui_oracle.stats(result.latents)
    assert RATIO[0] <= stats.ratio <= RATIO[1], stats
    if sampler_name in ("DDIM", "PLMS", "UniPC"):
        assert stats.residual < CLEAN_RESIDUAL_MAX, stats  # ended at a clean latent (t = 0)
    keys = result.vpred_keys()
    assert (keys["VPred prediction"], keys["VPred ZTSNR"], keys["VPred spacing"]) == ("v", "on", "trailing")
    a1111.h.assert_restored(model, before)


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("next_enabled", [False, True], ids=["next-disabled", "next-enabled"])
def test_interrupted_request_is_repaired_by_the_next(a1111, next_enabled):
    """A generation that raised inside sampling (no postprocess): the next request starts from the host's values."""
    model = a1111.make("stated", STATED)
    a1111.h.use_model(model)
    before = a1111.h.snapshot(model)
    args = script_args(enabled=next_enabled)
    reference = a1111.h.generate(a1111.data, a1111.h.txt2img(model, "DDIM", STEPS),
                                 args if next_enabled else False)

    model.model.diffusion_model.fail_with = _Crash("the UNet raised")
    try:
        with pytest.raises(_Crash):
            a1111.h.generate(a1111.data, a1111.h.txt2img(model, "DDIM", STEPS))
    finally:
        model.model.diffusion_model.fail_with = None
    assert getattr(model, pack("a1111_extension.a1111").SAVED_ATTR, None) is not None  # left patched
    assert a1111.h.pass_hooks_installed() == (not hasattr(host_import("modules.scripts").Script,
                                                          "process_before_every_sampling"))
    result = a1111.h.generate(a1111.data, a1111.h.txt2img(model, "DDIM", STEPS), args)
    torch.testing.assert_close(result.latents, reference.latents, rtol=0, atol=0)
    assert [c.tolist() for c in result.passes[0].calls] == [c.tolist() for c in reference.passes[0].calls]
    assert bool(result.vpred_keys()) == next_enabled
    a1111.h.assert_restored(model, before)


def test_host_ztsnr_option_yields_to_the_pack(a1111):
    """The webui's own global "Zero Terminal SNR" with a checkpoint that states v + ZTSNR: the request sets the
    option to Default (override_settings, restored by the host) and the pack applies ZTSNR once: the same alphas,
    calls and latents as without the host option."""
    shared = host_import("modules.shared")
    model = a1111.make("stated", STATED)
    a1111.h.use_model(model)
    plain = a1111.h.generate(a1111.data, a1111.h.txt2img(model, "Euler", STEPS), skip_decode=True)
    with a1111.h.host_options(sd_noise_schedule="Zero Terminal SNR"):
        result = a1111.h.generate(a1111.data, a1111.h.txt2img(model, "Euler", STEPS), skip_decode=True)
        assert shared.opts.sd_noise_schedule == "Zero Terminal SNR"  # restored by the host after the request
    assert result.p.override_settings.get("sd_noise_schedule") == "Default"
    torch.testing.assert_close(result.passes[0].alphas_cumprod, plain.passes[0].alphas_cumprod, rtol=0, atol=0)
    assert [c.tolist() for c in result.passes[0].calls] == [c.tolist() for c in plain.passes[0].calls]
    torch.testing.assert_close(result.latents, plain.latents, rtol=0, atol=0)


def test_exact_terminal_keeps_the_table_and_takes_an_analytic_first_step(a1111):
    """terminal exact: the webui's table still starts at sigma_max 4518.76 (it cannot hold inf), every call is at the
    same sigmas as with the host clamp, and the first step takes x0 = -v: the brightness ratio is exact (1.000 on
    the oracle, the clamp's 0.993 comes from the signal the clamped terminal still carries)."""
    model = a1111.make("stated", STATED)
    a1111.h.use_model(model)
    runs = {}
    for terminal in ("host_clamp", "exact"):
        runs[terminal] = a1111.h.generate(a1111.data, a1111.h.txt2img(model, "Euler", STEPS, batch_size=2),
                                          script_args(terminal=terminal), antithetic=2, skip_decode=True)
    clamp, exact = runs["host_clamp"], runs["exact"]
    assert exact.vpred_keys()["VPred terminal"] == "exact"
    assert exact.passes[0].first == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_RTOL)
    assert exact.passes[0].call_values() == clamp.passes[0].call_values()
    torch.testing.assert_close(exact.passes[0].table, clamp.passes[0].table, rtol=0, atol=0)
    assert abs(webui_oracle.stats(exact.latents).ratio - 1) < 1e-3 < abs(webui_oracle.stats(clamp.latents).ratio - 1)
