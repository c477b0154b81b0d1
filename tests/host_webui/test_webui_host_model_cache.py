"""Issue 10 item 4 in the host: two cached model objects (``sd_checkpoints_limit`` = 2), checkpoint switches through the
host's own ``reload_model_weights`` / ``reuse_model_from_already_loaded`` (hires checkpoint, refiner, the swap back
at the next request), requests through ``process_images`` (``WEBUI_PATH``; A1111, see webui_a1111.py).

Every request must sample with exactly the plan its infotext states, whatever the previous request did: the passes
the recorder saw (model object, ``parameterization``, ``alphas_cumprod``) against the ``VPred`` keys of the image's
infotext, and, without keys, against the host's own values of each object (bit for bit) and a run without the
extension (identical latents). No ``model_loaded`` callback fires on a cache swap."""

from __future__ import annotations

import types

import pytest
import torch
import webui_a1111
from webui_host_env import WEBUI_PATH, host_import, is_forge_family, load_vpred_script, pack, script_args

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

STEPS = 12
ZTSNR_ABAR_MAX = 1e-6
HOST_SIGMA_MAX = 14.6146
SIGMA_RTOL = 1e-3
FORCED = {"prediction": "v", "ztsnr": "on"}
REFINER_SWITCH = 0.5


@pytest.fixture(scope="module")
def loaded_script():
    if is_forge_family():
        pytest.skip("A1111 model cache (reForge / Forge keep their models in their own backend)")
    return load_vpred_script()


@pytest.fixture
def cache(loaded_script, tmp_path):
    """A (plain checkpoint, loaded) and B (states v + ZTSNR; the stock config reads it as eps), both cached."""
    models = webui_a1111.Models(str(tmp_path))
    a = models.make("a_plain", (), prediction="eps", ztsnr=False)
    b = models.make("b_vpred", ("v_pred", "ztsnr"), prediction="v", ztsnr=True)
    webui_a1111.use_model(a, keep=[b])
    host = {id(m): webui_a1111.snapshot(m) for m in (a, b)}
    with webui_a1111.host_options(sd_checkpoints_limit=2):
        yield types.SimpleNamespace(data=loaded_script[1], a=a, b=b, host=host)
    models.close()


def assert_samples_as_infotext(env, result) -> None:
    """Each pass sampled with the plan the infotext states (no VPred keys: each object's host values)."""
    keys = result.vpred_keys()
    assert result.passes
    for one in result.passes:
        host_alphas, host_prediction = env.host[id(one.model)]
        if not keys:
            assert one.parameterization == host_prediction
            torch.testing.assert_close(one.alphas_cumprod, host_alphas, rtol=0, atol=0)
            if one.table is not None:
                assert float(one.table[-1]) == pytest.approx(HOST_SIGMA_MAX, rel=SIGMA_RTOL)
            continue
        assert one.parameterization == keys["VPred prediction"]
        assert (float(one.alphas_cumprod[-1]) < ZTSNR_ABAR_MAX) == (keys["VPred ZTSNR"] == "on")


def _hires(model, hr_checkpoint):
    return webui_a1111.txt2img(model, "Euler", STEPS, enable_hr=True, hr_scale=1.0, hr_upscaler="Latent",
                               denoising_strength=0.6, hr_checkpoint_name=hr_checkpoint.sd_checkpoint_info.title)


def _assert_host_objects(env) -> None:
    for model in (env.a, env.b):
        webui_a1111.assert_restored(model, env.host[id(model)])


def test_hires_checkpoint_then_disabled_request(cache):
    """Request 1 forces v + ZTSNR with hires checkpoint B (the host swaps to B between the passes); request 2
    (disabled) starts while B is loaded, the host swaps A back: A must sample with its own values."""
    callbacks = host_import("modules.script_callbacks")
    loaded = []

    def on_loaded(model):
        loaded.append(model)

    callbacks.on_model_loaded(on_loaded)
    try:
        reference = webui_a1111.generate(cache.data, webui_a1111.txt2img(cache.a, "Euler", STEPS), False)
        first = webui_a1111.generate(cache.data, _hires(cache.a, cache.b), script_args(**FORCED))
        _assert_host_objects(cache)  # postprocess restored both objects the request patched
        second = webui_a1111.generate(cache.data, webui_a1111.txt2img(cache.a, "Euler", STEPS),
                                      script_args(enabled=False))
    finally:
        callbacks.remove_callbacks_for_function(on_loaded)
    assert loaded == []  # the host swapped the cached objects (to B and back) without a model_loaded callback
    assert [one.model for one in first.passes] == [cache.a, cache.b]
    assert_samples_as_infotext(cache, first)
    assert second.loaded_at_start is cache.b  # the host left B loaded; it swaps A back after before_process
    assert [one.model for one in second.passes] == [cache.a] and not second.vpred_keys()
    assert_samples_as_infotext(cache, second)
    torch.testing.assert_close(second.latents, reference.latents, rtol=0, atol=0)
    _assert_host_objects(cache)


def test_refiner_switch_gets_the_plan(cache):
    """Refiner B at 0.5: the host swaps models inside sampling (apply_refiner -> reload_model_weights); the
    refiner's steps must sample with the request's plan too."""
    p = webui_a1111.txt2img(cache.a, "Euler", STEPS, refiner_checkpoint=cache.b.sd_checkpoint_info.title,
                            refiner_switch_at=REFINER_SWITCH)
    result = webui_a1111.generate(cache.data, p, script_args(**FORCED))
    assert [one.model for one in result.passes] == [cache.a, cache.b]
    assert_samples_as_infotext(cache, result)
    assert result.params().get("Refiner") and result.vpred_keys()["VPred ZTSNR"] == "on"
    _assert_host_objects(cache)


def test_ztsnr_off_after_a_hires_switch(cache):
    """Enabled with ZTSNR off after a request that left B loaded: sigma_max must be the host's (14.6), as the
    infotext says."""
    webui_a1111.generate(cache.data, _hires(cache.a, cache.b), script_args(**FORCED))
    result = webui_a1111.generate(cache.data, webui_a1111.txt2img(cache.a, "Euler", STEPS),
                                  script_args(prediction="v", ztsnr="off"))
    keys = result.vpred_keys()
    assert (keys["VPred prediction"], keys["VPred ZTSNR"]) == ("v", "off")
    assert_samples_as_infotext(cache, result)
    (one,) = result.passes
    assert one.first == pytest.approx(HOST_SIGMA_MAX, rel=SIGMA_RTOL)
    _assert_host_objects(cache)


def test_stated_hires_checkpoint_with_defaults(cache):
    """Defaults, A plain: the pack stays off for the request (A states nothing), B is sampled by the host alone,
    nothing is written; then a request on B itself (states v + ZTSNR) gets the plan."""
    result = webui_a1111.generate(cache.data, _hires(cache.a, cache.b), script_args())
    assert not result.vpred_keys()
    assert_samples_as_infotext(cache, result)
    on_b = webui_a1111.generate(cache.data, webui_a1111.txt2img(cache.b, "Euler", STEPS,
                                                               override_settings={
                                                                   "sd_model_checkpoint":
                                                                       cache.b.sd_checkpoint_info.title}),
                                script_args())
    assert [one.model for one in on_b.passes] == [cache.b]
    assert on_b.vpred_keys()["VPred ZTSNR"] == "on"
    assert_samples_as_infotext(cache, on_b)
    _assert_host_objects(cache)


class _Crash(RuntimeError):
    pass


def test_raised_hires_pass_is_repaired_on_every_cached_object(cache):
    """Request 1 (forced) raises inside the hires pass on B (no postprocess): A and B both carry the plan; request 2
    (disabled) starts while B is loaded and the host swaps A back: every cached object must be the host's again."""
    a1111 = pack("a1111_extension.a1111")
    cache.b.model.diffusion_model.fail_with = _Crash("B's UNet raised")
    try:
        with pytest.raises(_Crash):
            webui_a1111.generate(cache.data, _hires(cache.a, cache.b), script_args(**FORCED))
    finally:
        cache.b.model.diffusion_model.fail_with = None
    assert all(hasattr(model, a1111.SAVED_ATTR) for model in (cache.a, cache.b))  # both left patched
    second = webui_a1111.generate(cache.data, webui_a1111.txt2img(cache.a, "Euler", STEPS), script_args(enabled=False))
    assert second.loaded_at_start is cache.b and not second.vpred_keys()
    assert_samples_as_infotext(cache, second)
    _assert_host_objects(cache)
