"""The webui extension without a webui: arguments, infotext, the decision whether to act, per-pass sampler
adjustments, model-object undo, checkpoint caching and the loader. Host classes are stand-ins here; the same paths
run against real A1111 / reForge / Forge trees in tests/host_webui."""

import math
import os
import sys
import types

import pytest
import torch
from webui_pack import loader_module, pack

ui = pack("a1111_extension.ui")
request = pack("a1111_extension.request")
samplers = pack("a1111_extension.samplers")
a1111 = pack("a1111_extension.a1111")
forge = pack("a1111_extension.forge")
checkpoints = pack("a1111_extension.checkpoints")
settings_mod = pack("vpred_core.settings")
schedules = pack("vpred_core.sampling.schedules")
ckpt_factory = pytest.importorskip("ckpt_factory")

ALL_ARGS = (True, "v", "on", 0.024, "trailing", 0.7, "x0", 14.6, 0.5, "zero", "exact", "ddim", "scaled_linear", 0.001)
LEGACY_ARGS = (True, "v", "on", 0.024, True, 0.7, "v", 14.6, 0.5, "zero")  # the 10 positional args before 0.2


# ---- arguments


def test_positional_and_named_arguments_give_the_same_request():
    positional = ui.request_from_args(ALL_ARGS)
    named = ui.request_from_args(({**dict(zip(ui.ARG_NAMES, ALL_ARGS, strict=True))},))
    assert positional == named and positional.enabled and not positional.betas_auto
    ms = positional.settings.model_sampling
    assert (ms.prediction, ms.ztsnr, ms.linear_end, ms.linear_start, ms.terminal) == ("v", "on", 0.024, 0.001, "exact")
    assert positional.settings.sampling.first_step == "ddim" and positional.settings.cfg_rescale.space == "x0"


def test_named_arguments_keep_defaults_and_reject_unknown_names():
    request = ui.request_from_args(({"ztsnr": "on", "phi": 0.7},))
    assert request.settings.model_sampling.ztsnr == "on" and request.settings.cfg_rescale.phi == 0.7
    assert request.betas_auto and request.settings.sampling.spacing == "auto"
    with pytest.raises(ValueError, match="unknown argument"):
        ui.request_from_args(({"ztsnr": "on", "phy": 0.7},))
    with pytest.raises(ValueError, match="ztsnr"):
        ui.request_from_args(({"ztsnr": "yes"},))


def test_legacy_positional_trailing_flag():
    request = ui.request_from_args(LEGACY_ARGS)
    assert request.settings.sampling.spacing == "trailing"
    assert ui.request_from_args(LEGACY_ARGS[:4] + (False,) + LEGACY_ARGS[5:]).settings.sampling.spacing == "host"


def test_window_validation_is_visible():
    bad = dict(zip(ui.ARG_NAMES, ALL_ARGS, strict=True), sigma_high=1.0, sigma_low=5.0)
    message = ui.validation_message(*[bad[name] for name in ui.ARG_NAMES])
    assert "sigma_low" in message and "sigma_high" in message
    assert ui.validation_message(*ALL_ARGS) == ""


def test_defaults_do_not_force_anything():
    request = ui.request_from_args(tuple(ui.ARG_DEFAULTS[name] for name in ui.ARG_NAMES))
    ms = request.settings.model_sampling
    assert (ms.prediction, ms.ztsnr, request.betas_auto) == ("auto", "auto", True)
    assert request.settings.sampling.spacing == "auto" and not request.settings.cfg_rescale.enabled
    assert request.settings.uncond.mode == "host_default"


# ---- infotext


def test_paste_without_pack_keys_switches_the_pack_off_and_touches_nothing_else():
    values = ui.ui_values_from_infotext({"Steps": "20", "VPred detection": "prediction: host"})
    assert values["enabled"] is False and all(values[n] is None for n in ui.ARG_NAMES if n != "enabled")


def test_applied_infotext_pastes_back_to_the_same_plan():
    host = settings_mod.Detected(prediction="eps", ztsnr=False, beta_schedule="scaled_linear", linear_start=0.00085,
                                 linear_end=0.012, timesteps=1000, source="webui")
    stated = settings_mod.Detected(prediction="v", ztsnr=True, linear_end=0.0125, source="file")
    asked = ui.request_from_args(({"phi": 0.7},))
    plan = settings_mod.resolve_model_sampling(asked.settings.model_sampling, stated, host, asked.betas_auto)
    spacing = settings_mod.resolve_spacing(asked.settings.sampling.spacing, plan)
    applied = settings_mod.applied_settings(asked.settings, plan, host, spacing)
    text = ui.infotext_for(applied, plan.describe_sources())
    assert text["VPred linear end"] == "0.0125" and text["VPred prediction"] == "v"
    assert text["VPred spacing"] == "trailing"
    values = ui.ui_values_from_infotext(text)
    pasted = ui.request_from_args(tuple(values[name] for name in ui.ARG_NAMES))
    again = settings_mod.resolve_model_sampling(pasted.settings.model_sampling, settings_mod.Detected(), host,
                                                pasted.betas_auto)
    assert (again.prediction, again.ztsnr, again.spec, again.betas_from_host) == (
        plan.prediction, plan.ztsnr, plan.spec, plan.betas_from_host)
    assert pasted.settings.sampling == applied.sampling and pasted.settings.cfg_rescale == applied.cfg_rescale
    with pytest.raises(ValueError, match="VPred CFG rescale"):
        ui.ui_values_from_infotext({"VPred CFG rescale": "abc"})


def test_xyz_override_enables_the_pack():
    overrides = ui.xyz_override(None, "phi", 0.3)
    off = tuple(ui.ARG_DEFAULTS[name] for name in ui.ARG_NAMES)
    request = ui.request_from_args((False,) + off[1:], overrides)
    assert request.enabled and request.settings.cfg_rescale.phi == 0.3


# ---- the decision


def _model(path, prediction="eps", abar=None, ztsnr_flag=False):
    abar = schedules.ScheduleSpec().alphas_cumprod().float() if abar is None else abar
    return types.SimpleNamespace(sd_checkpoint_info=types.SimpleNamespace(filename=str(path)),
                                 parameterization=prediction, alphas_cumprod=abar.clone(),
                                 alphas_cumprod_original=abar.clone(), ztsnr=ztsnr_flag)


def _state(args=(), host_ztsnr=False, host="a1111"):
    return request.RequestState(ui.request_from_args(args), host, host_ztsnr)


def test_unmarked_checkpoint_with_defaults_is_left_to_the_webui(tmp_path):
    path = ckpt_factory.build_checkpoint(tmp_path / "plain.safetensors", "sd1")
    model, state = _model(path), _state()
    plan = request.plan_for(state, model)
    assert not request.installs(state, plan, model)
    assert not request.acts(state.settings, plan, False)
    host_ztsnr = _state(host_ztsnr=True)  # the webui's own global ZTSNR: still the webui's business
    assert not request.acts(host_ztsnr.settings, request.plan_for(host_ztsnr, model), False)


def test_stated_vpred_ztsnr_acts_with_trailing(tmp_path):
    path = ckpt_factory.build_checkpoint(tmp_path / "noob.safetensors", "sd1", markers=("v_pred", "ztsnr"))
    model, state = _model(path), _state()
    plan = request.plan_for(state, model)
    assert (plan.prediction, plan.ztsnr, plan.betas_from_host) == ("v", True, True)
    assert request.installs(state, plan, model) and request.acts(state.settings, plan, True)
    assert settings_mod.resolve_spacing("auto", plan) == "trailing"


def test_host_betas_are_read_from_model_attributes(tmp_path):
    path = ckpt_factory.build_checkpoint(tmp_path / "m.safetensors", "sd1")
    abar = schedules.ScheduleSpec(linear_end=0.0125).alphas_cumprod().float()
    model = _model(path, abar=abar)
    assert request.host_detected(model, "a1111", False).linear_end is None
    model.linear_start, model.linear_end = 0.00085, 0.0125
    assert request.host_detected(model, "a1111", False).linear_end == 0.0125


def test_yielded_host_ztsnr_is_installed_by_the_pack(tmp_path):
    path = ckpt_factory.build_checkpoint(tmp_path / "m.safetensors", "sd1",
                                         metadata={"modelspec.prediction_type": "epsilon"})
    model, state = _model(path), _state(host_ztsnr=True)
    plan = request.plan_for(state, model)
    assert plan.ztsnr and plan.source_of("ztsnr") == "host" and not request.installs(state, plan, model)
    state.ztsnr_option_yielded = True  # A1111's global ZTSNR set to Default for the request: the pack applies it
    assert request.installs(state, request.plan_for(state, model), model)


def test_exact_terminal_tables_hold_the_host_clamp(tmp_path):
    path = ckpt_factory.build_checkpoint(tmp_path / "m.safetensors", "sd1", markers=("v_pred", "ztsnr"))
    state = _state(({"terminal": "exact"},))
    plan = request.plan_for(state, _model(path))
    assert math.isfinite(float(plan.sigmas()[-1])) and float(plan.sigmas()[-1]) == pytest.approx(4518.76, rel=1e-3)


def test_host_classification():
    assert request.classify_host(False, False, False) == request.A1111
    assert request.classify_host(True, True, False) == forge.REFORGE
    assert request.classify_host(True, False, True) == forge.FORGE


# ---- model objects: undo


HOST_ABAR = torch.linspace(0.99, 0.01, 5)
PLAN_ABAR = torch.linspace(0.99, 0.0, 5)
OWN_ABAR = torch.linspace(0.98, 0.02, 5)


def _patched_model(current_abar, filename="second"):
    model = types.SimpleNamespace(sd_checkpoint_info=types.SimpleNamespace(filename=filename),
                                  alphas_cumprod=current_abar, alphas_cumprod_original=current_abar,
                                  parameterization="v")
    saved = a1111.SavedSchedule("first", HOST_ABAR, HOST_ABAR, "eps", installed=PLAN_ABAR.clone(), request=1)
    setattr(model, a1111.SAVED_ATTR, saved)
    return model


def test_weights_of_another_checkpoint_loaded_into_a_patched_object():
    leaked = _patched_model(PLAN_ABAR.clone())
    a1111.on_model_loaded(leaked)
    assert leaked.parameterization == "eps" and torch.equal(leaked.alphas_cumprod_original, HOST_ABAR)
    own = _patched_model(OWN_ABAR)
    a1111.on_model_loaded(own)
    assert own.parameterization == "eps" and torch.equal(own.alphas_cumprod_original, OWN_ABAR)
    same = _patched_model(PLAN_ABAR.clone(), filename="first")  # e.g. a VAE reload fires the same callback
    a1111.on_model_loaded(same)
    assert same.parameterization == "v" and hasattr(same, a1111.SAVED_ATTR)


def test_repair_restores_every_kept_model_object():
    cached = [_patched_model(PLAN_ABAR.clone(), filename="first") for _ in range(2)]
    untouched = types.SimpleNamespace(parameterization="eps")
    assert a1111.repair([*cached, untouched]) == 2
    assert all(m.parameterization == "eps" and torch.equal(m.alphas_cumprod_original, HOST_ABAR) for m in cached)
    assert a1111.repair(cached) == 0


def test_forge_pass_alphas_are_put_back_unless_the_host_replaced_them():
    model = types.SimpleNamespace(alphas_cumprod=HOST_ABAR.clone())
    p = types.SimpleNamespace(sd_model=model, sampler=types.SimpleNamespace(model_wrap_cfg=types.SimpleNamespace(
        alphas=model.alphas_cumprod)))
    host_tensor = model.alphas_cumprod
    forge.install_pass_alphas(p, schedules.ScheduleSpec(ztsnr=True).sigmas().float())
    assert p.sampler.model_wrap_cfg.alphas is model.alphas_cumprod and model.alphas_cumprod is not host_tensor
    assert forge.repair([model]) == 1 and model.alphas_cumprod is host_tensor
    forge.install_pass_alphas(p, schedules.ScheduleSpec(ztsnr=True).sigmas().float())
    model.alphas_cumprod = OWN_ABAR  # the host built a new tensor meanwhile: keep it
    assert not forge.restore(model) and model.alphas_cumprod is OWN_ABAR


class _ReadOnlyLinker(torch.nn.Module):
    """Like Forge's ForgeScheduleLinker: sigmas are a read-only view of its predictor."""

    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    @property
    def sigmas(self):
        return self.predictor.sigmas


class _Predictor(torch.nn.Module):
    def __init__(self, sigmas):
        super().__init__()
        self.register_buffer("sigmas", sigmas)


def test_forge_sampler_schedule_follows_the_patch():
    sigmas = torch.tensor([0.03, 1.0, 14.6])
    sampler = types.SimpleNamespace(model_wrap=_ReadOnlyLinker(_Predictor(torch.ones(3))))
    new = _Predictor(sigmas)
    forge.update_sampler_schedule(sampler, sigmas, new)
    assert sampler.model_wrap.predictor is new and torch.equal(sampler.model_wrap.sigmas, sigmas)
    wrap = types.SimpleNamespace(sigmas=torch.ones(3), log_sigmas=torch.zeros(3))
    forge.update_sampler_schedule(types.SimpleNamespace(model_wrap=wrap), sigmas)
    assert torch.equal(wrap.sigmas, sigmas) and torch.allclose(wrap.log_sigmas, sigmas.log())
    p = types.SimpleNamespace(cfg_scale=7.0, hr_cfg=3.0, is_hr_pass=False)
    assert forge.pass_cfg_scale(p) == 7.0
    p.is_hr_pass = True
    assert forge.pass_cfg_scale(p) == 3.0


# ---- checkpoints


def test_detection_follows_a_yaml_added_later(tmp_path):
    path = str(ckpt_factory.build_checkpoint(tmp_path / "m.safetensors", "sd1"))
    assert checkpoints.stated(path).prediction is None
    with open(tmp_path / "m.yaml", "w", encoding="utf-8") as handle:
        handle.write("model:\n  params:\n    parameterization: v\n    linear_start: 0.00085\n    linear_end: 0.0125\n")
    found = checkpoints.stated(path)
    assert found.prediction == "v" and found.linear_end == 0.0125 and "m.yaml" in found.source_of("prediction")


def test_yaml_written_once_and_never_over_a_link(tmp_path):
    path = str(ckpt_factory.build_checkpoint(tmp_path / "v.safetensors", "sd1", markers=("v_pred", "ztsnr")))
    written = checkpoints.write_yaml_if_needed(path)
    assert written == str(tmp_path / "v.yaml") and os.path.isfile(written)
    assert checkpoints.write_yaml_if_needed(path) is None
    other = str(ckpt_factory.build_checkpoint(tmp_path / "w.safetensors", "sd1", markers=("v_pred",)))
    os.symlink(tmp_path / "missing.yaml", tmp_path / "w.yaml")
    assert checkpoints.write_yaml_if_needed(other) is None and os.path.islink(tmp_path / "w.yaml")


# ---- samplers (per pass)


def test_trailing_timesteps_end_at_zero():
    ts = samplers.webui_timesteps("trailing", 20)
    assert ts.tolist()[:3] == [0, 49, 99] and int(ts[-1]) == 999 and len(ts) == 21
    assert bool((ts[1:] > ts[:-1]).all())


def _p(scheduler="Automatic", hr_scheduler=None, override=None):
    table = schedules.ScheduleSpec(ztsnr=True).sigmas().float()
    sampler = types.SimpleNamespace(model_wrap=types.SimpleNamespace(sigmas=table))
    return types.SimpleNamespace(scheduler=scheduler, hr_scheduler=hr_scheduler, sampler=sampler,
                                 sampler_noise_scheduler_override=override, is_hr_pass=False)


def test_trailing_override_per_pass():
    p = _p("Align Your Steps", "Karras")
    samplers.set_trailing_override(p, "trailing", samplers.pass_scheduler(p))
    assert isinstance(p.sampler_noise_scheduler_override, samplers.TrailingSigmas)
    sigmas = p.sampler_noise_scheduler_override(10)
    assert sigmas[0].item() == p.sampler.model_wrap.sigmas[-1].item() and sigmas[-1].item() == 0.0
    p.is_hr_pass = True
    samplers.set_trailing_override(p, "trailing", samplers.pass_scheduler(p))
    assert p.sampler_noise_scheduler_override is None
    theirs = object()
    p = _p("Align Your Steps", override=theirs)
    samplers.set_trailing_override(p, "trailing", "Align Your Steps")
    samplers.set_trailing_override(p, "trailing", "Karras")
    assert p.sampler_noise_scheduler_override is theirs
    p = _p("Align Your Steps")
    samplers.set_trailing_override(p, "host", p.scheduler)
    assert p.sampler_noise_scheduler_override is None
    assert samplers.hires_scheduler(_p("DDIM", "Use same scheduler")) == "DDIM"


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    return x


def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None):
    return x


def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    return x


def plms(model, x, timesteps, extra_args=None, callback=None, disable=None):
    return x


def unipc(model, x, timesteps, extra_args=None, callback=None, disable=None, is_img2img=False):
    return x


class _CompVis:
    def __init__(self, func):
        self.func = func

    def get_timesteps(self, p, steps):
        return torch.arange(steps)


def test_prepare_pass_adjusts_only_this_sampler_object():
    kd = types.SimpleNamespace(func=sample_euler)
    samplers.prepare_pass(_p(), kd, "trailing", "auto", False)
    assert kd.func is not sample_euler and "sigmas" in samplers.inspect.signature(kd.func).parameters
    fast = types.SimpleNamespace(func=sample_dpm_fast)
    samplers.prepare_pass(_p(), fast, "trailing", "auto", False)
    assert fast.func is sample_dpm_fast  # takes no sigmas: starts at sigma_max by itself
    off = types.SimpleNamespace(func=sample_euler)
    samplers.prepare_pass(_p(), off, "trailing", "sampler", False)
    assert off.func is sample_euler
    for func, retimed, wrapped in ((ddim, True, False), (plms, True, True), (unipc, False, False)):
        sampler = _CompVis(func)
        samplers.prepare_pass(_p(), sampler, "trailing", "auto", False)
        assert (len(sampler.get_timesteps(None, 20)) == 21) is retimed, func.__name__
        assert (sampler.func is not func) is wrapped, func.__name__
    host = _CompVis(ddim)
    samplers.prepare_pass(_p(), host, "host", "auto", False)
    assert len(host.get_timesteps(None, 20)) == 20


class _EpsModel:
    def __init__(self, abar, eps_fn):
        self.inner_model = types.SimpleNamespace(inner_model=types.SimpleNamespace(alphas_cumprod=abar))
        self.eps_fn, self.calls = eps_fn, []

    def __call__(self, x, t, **kw):
        self.calls.append(int(t[0]))
        return self.eps_fn(x, t)


def test_ddim_first_timestep_from_snr0():
    abar = schedules.ScheduleSpec(ztsnr=True).alphas_cumprod().float()
    model = _EpsModel(abar, lambda x, t: 0.5 * x)
    seen, steps = {}, []

    def rest(model, x, timesteps, extra_args=None, callback=None, disable=None):
        seen["timesteps"], seen["x"] = timesteps, x
        callback({"i": 0, "x": x, "denoised": x})
        return x

    ts = samplers.webui_timesteps("trailing", 5)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    samplers.with_ddim_first_timestep(rest)(model, x, ts, callback=lambda d: steps.append(d["i"]))
    assert model.calls == [999] and torch.equal(seen["timesteps"], ts[:-1]) and steps == [0, 1]
    a_t, a_prev = abar[999].double(), abar[int(ts[-2])].double()
    eps = 0.5 * x.double()
    x0 = (x.double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    torch.testing.assert_close(seen["x"].double(), a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, rtol=1e-4,
                               atol=1e-4)
    plain = samplers.with_ddim_first_timestep(rest)(_EpsModel(schedules.ScheduleSpec().alphas_cumprod().float(),
                                                               lambda x, t: x), x, ts, callback=lambda d: None)
    assert torch.equal(seen["timesteps"], ts) and torch.equal(plain, x)  # no SNR 0 start: the host's own loop


def test_exact_terminal_first_timestep_is_analytic_and_wraps_ddim():
    """exact: x0 = -v = (s_T x - eps) / alpha_T and eps_hat = x (pure noise at SNR 0); DDIM is wrapped only then."""
    abar = schedules.ScheduleSpec(ztsnr=True).alphas_cumprod()  # float64 end to end: the test resolves 1e-9
    a_t = abar[999]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eps_of = lambda z, t: a_t.sqrt() * v + (1 - a_t).sqrt() * z  # noqa: E731
    seen = {}

    def rest(model, x, timesteps, extra_args=None, callback=None, disable=None):
        seen["x"] = x
        return x

    ts = samplers.webui_timesteps("trailing", 5)
    samplers.with_ddim_first_timestep(rest, exact_terminal=True)(_EpsModel(abar, eps_of), x, ts)
    a_prev = abar[int(ts[-2])]
    torch.testing.assert_close(seen["x"], a_prev.sqrt() * -v + (1 - a_prev).sqrt() * x, rtol=0, atol=1e-9)
    for exact, wrapped in ((False, False), (True, True)):
        sampler = _CompVis(ddim)
        samplers.prepare_pass(_p(), sampler, "trailing", "auto", exact)
        assert (sampler.func is not ddim) is wrapped


class _Lcm:
    skip_steps = 20

    def __init__(self, abar):
        self.inner_model = types.SimpleNamespace(alphas_cumprod=abar)

    def get_eps(self, z, t, **kwargs):
        return torch.ones_like(z)  # the model's raw output (v for a v model)


def test_lcm_reads_v_models_as_eps():
    abar = schedules.ScheduleSpec().alphas_cumprod().float()
    for prediction, converted in (("v", True), ("eps", False)):
        wrap = _Lcm(abar)
        p = _p()
        p.sd_model = types.SimpleNamespace(parameterization=prediction)
        samplers.prepare_pass(p, types.SimpleNamespace(func=sample_euler, model_wrap=wrap), "host", "auto", False)
        z, t = torch.full((2, 4, 8, 8), 0.5), torch.tensor([499, 999])
        eps = wrap.get_eps(z, t)
        if not converted:
            assert torch.equal(eps, torch.ones_like(z))
            continue
        alpha, s = abar[t].double().sqrt().view(-1, 1, 1, 1), (1 - abar[t].double()).sqrt().view(-1, 1, 1, 1)
        torch.testing.assert_close(eps.double(), (alpha * 1.0 + s * 0.5).expand(z.shape), rtol=1e-6, atol=1e-6)


# ---- loader


def test_loader_is_inert_without_a_webui_and_leaves_sys_path_alone():
    before = list(sys.path)
    module = loader_module("vpred_ztsnr_loader_inert")
    assert not module.in_webui() and not hasattr(module, "VPredScript")
    package = module.load_package("vpred_ztsnr_toolkit_probe_name")
    assert package.__path__ == [str(module.EXTENSION_ROOT)] and sys.path == before
    ui_module = __import__("vpred_ztsnr_toolkit_probe_name.a1111_extension.ui", fromlist=["ui"])
    assert ui_module.TITLE == "V-Pred / ZTSNR" and "modules" not in sys.modules


# ---- the weight probe on load


class _RawNet(torch.nn.Module):
    """The webui's raw UNet call (x, t, context=..., y=...) around a probe-test network (x, t)."""

    in_channels = 4

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, t, context=None, y=None):
        return self.inner(x, t)


def test_unmarked_vpred_weights_are_probed_once_and_recorded(tmp_path, monkeypatch):
    training = pytest.importorskip("probe_training")
    path = ckpt_factory.build_checkpoint(tmp_path / "unmarked.safetensors", "sd1")
    model = _model(path)
    model.model = types.SimpleNamespace(diffusion_model=_RawNet(training.load_model("v")))
    assert checkpoints.stated(str(path)).prediction is None and checkpoints.needs_probe(str(path))
    calls = []
    real = pack("vpred_core.sampling.probe").probe_prediction_type
    monkeypatch.setattr(pack("vpred_core.sampling.probe"), "probe_prediction_type",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    request.ensure_probed(model)
    request.ensure_probed(model)  # cached: not probed again
    assert calls == [1]
    record = pack("vpred_core.checkpoints.inspection").read_record(str(tmp_path / "unmarked.yaml"))
    assert record["prediction"] == "v" and record["sources"]["prediction"].startswith("probe")
    found = checkpoints.stated(str(path))  # the crafted YAML now states it: the next load needs no probe
    assert found.prediction == "v" and found.source_of("prediction").startswith("sidecar_yaml")
    assert "recorded from a weight probe" in found.source_of("prediction")  # what `inspect` shows too
    assert not checkpoints.needs_probe(str(path))
    state = _state()
    plan = request.plan_for(state, model)
    assert plan.prediction == "v" and request.installs(state, plan, model)


def test_probe_result_stands_in_for_an_unstated_prediction(tmp_path):
    training = pytest.importorskip("probe_training")
    path = str(ckpt_factory.build_checkpoint(tmp_path / "noyaml.safetensors", "sd1"))
    result = pack("vpred_core.sampling.probe").probe_prediction_type(training.load_model("v"), 4, size=(32, 32))
    checkpoints.remember_probe(path, result)
    found = checkpoints.stated(path)
    assert found.prediction == "v" and found.source_of("prediction").startswith("probe: prediction v")
    marked = str(ckpt_factory.build_checkpoint(tmp_path / "eps.safetensors", "sd1",
                                               metadata={"modelspec.prediction_type": "epsilon"}))
    checkpoints.remember_probe(marked, result)
    assert checkpoints.stated(marked).prediction == "eps"  # a file's statement always wins over the probe


def test_a_probe_failure_is_cached_and_never_breaks_loading(tmp_path):
    path = ckpt_factory.build_checkpoint(tmp_path / "odd.safetensors", "sd1")
    model = _model(path)
    model.model = types.SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2))  # cannot take a latent
    request.ensure_probed(model)
    assert checkpoints.stated(str(path)).prediction is None and not checkpoints.needs_probe(str(path))
    assert "probe failed" in checkpoints.cached_probe(str(path)).summary()
