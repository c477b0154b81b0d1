"""The one decision path (vpred_core.settings): forced > stated (file, probe) > host, with the source of each value,
host betas kept bit for bit, and the applied settings recorded so that they resolve to the same plan."""

import pytest
import torch
from safetensors.torch import save_file

from vpred_core.checkpoints.inspection import inspect_checkpoint
from vpred_core.sampling.schedules import ScheduleSpec
from vpred_core.settings import (
    SRC_FORCED,
    SRC_HOST,
    Detected,
    ModelSamplingSettings,
    PackSettings,
    SamplingSettings,
    applied_settings,
    from_infotext,
    host_betas_from_alphas_cumprod,
    resolve_model_sampling,
    resolve_spacing,
    to_infotext,
)

AUTO = ModelSamplingSettings()
HOST_EPS = Detected(prediction="eps", ztsnr=False, beta_schedule="scaled_linear", linear_start=0.00085,
                    linear_end=0.012, timesteps=1000, source="host")
FILE_V = Detected(prediction="v", ztsnr=True, linear_end=0.024, source="file")


def test_nothing_stated_keeps_the_host():
    plan = resolve_model_sampling(AUTO, Detected(), HOST_EPS)
    assert (plan.prediction, plan.ztsnr, plan.betas_from_host) == ("eps", False, True)
    assert not plan.changes_host(HOST_EPS)
    assert all(plan.source_of(name) == SRC_HOST for name in ("prediction", "ztsnr", "betas"))
    assert not plan.puts_vpred_or_ztsnr_in_effect and resolve_spacing("auto", plan) == "host"


def test_stated_over_host_with_sources():
    plan = resolve_model_sampling(AUTO, FILE_V, HOST_EPS)
    assert (plan.prediction, plan.ztsnr, plan.spec.linear_end, plan.spec.linear_start) == ("v", True, 0.024, 0.00085)
    assert not plan.betas_from_host and plan.changes_host(HOST_EPS)
    assert plan.source_of("prediction") == "file" and plan.source_of("betas") == "file"
    assert plan.puts_vpred_or_ztsnr_in_effect and resolve_spacing("auto", plan) == "trailing"


def test_forced_over_stated():
    forced = ModelSamplingSettings(prediction="eps", ztsnr="off")
    plan = resolve_model_sampling(forced, FILE_V, HOST_EPS)
    assert (plan.prediction, plan.ztsnr) == ("eps", False) and plan.source_of("prediction") == SRC_FORCED
    assert resolve_spacing("host", plan) == "host" and resolve_spacing("linspace", plan) == "linspace"


def test_host_v_is_not_the_packs_doing():
    host_v = Detected(prediction="v", ztsnr=True, source="host")
    plan = resolve_model_sampling(AUTO, Detected(), host_v)
    assert plan.prediction == "v" and plan.ztsnr and not plan.puts_vpred_or_ztsnr_in_effect
    assert not plan.changes_host(host_v) and plan.changes_host(Detected(prediction="v", ztsnr=False))


def test_forced_betas_equal_to_the_hosts_use_the_host_tensor():
    forced = resolve_model_sampling(ModelSamplingSettings(linear_end=0.012), Detected(), HOST_EPS, betas_auto=False)
    assert forced.betas_from_host and forced.source_of("betas") == SRC_FORCED
    other = resolve_model_sampling(ModelSamplingSettings(linear_end=0.0125), Detected(), HOST_EPS, betas_auto=False)
    assert not other.betas_from_host and other.spec.linear_end == 0.0125
    host_abar = ScheduleSpec().alphas_cumprod().float() * (1 + 1e-7)  # a host's own float32 tensor
    assert torch.equal(forced.alphas_cumprod(host_abar), host_abar)
    assert not torch.equal(other.alphas_cumprod(host_abar), host_abar)


def test_unknown_host_betas_mean_the_host_tensor():
    plan = resolve_model_sampling(ModelSamplingSettings(ztsnr="on"), Detected(), Detected(prediction="eps"))
    assert plan.betas_from_host and plan.ztsnr and plan.source_of("betas") == SRC_HOST
    host_abar = ScheduleSpec().alphas_cumprod().float()
    abar = plan.alphas_cumprod(host_abar)
    assert abar.dtype == torch.float32 and float(abar[-1]) == pytest.approx(4.8973451890853435e-08, rel=1e-6)
    assert float(plan.sigmas(host_abar)[-1]) == pytest.approx(4518.76, rel=1e-3)
    assert float(plan.alphas_cumprod(abar)[-1]) == pytest.approx(4.8973451890853435e-08, rel=1e-6)  # never twice


def test_host_betas_from_alphas_cumprod():
    assert host_betas_from_alphas_cumprod(ScheduleSpec().alphas_cumprod().float()) == ScheduleSpec()
    assert host_betas_from_alphas_cumprod(ScheduleSpec(linear_end=0.0125).alphas_cumprod().float()) is None
    assert host_betas_from_alphas_cumprod(ScheduleSpec(ztsnr=True).alphas_cumprod().float()) is None


def test_from_inspection_keeps_only_stated_fields(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"v_pred": torch.zeros(0), "x": torch.zeros(1)}, str(path), metadata={"ss_zero_terminal_snr": "True"})
    stated = Detected.from_inspection(inspect_checkpoint(path))
    assert (stated.prediction, stated.ztsnr, stated.linear_end) == ("v", True, None)
    assert "state_dict_keys" in stated.source_of("prediction") and "kohya" in stated.source_of("ztsnr")
    merged = stated.over(HOST_EPS)
    assert merged.linear_end == 0.012 and merged.source_of("linear_end") == "host"


def test_applied_settings_resolve_to_the_same_plan():
    plan = resolve_model_sampling(AUTO, FILE_V, HOST_EPS)
    requested = PackSettings(sampling=SamplingSettings())
    applied = applied_settings(requested, plan, HOST_EPS, resolve_spacing("auto", plan))
    pasted = from_infotext(to_infotext(applied))
    again = resolve_model_sampling(pasted.model_sampling, Detected(), HOST_EPS, betas_auto=False)
    assert (again.prediction, again.ztsnr, again.spec, again.betas_from_host) == (
        plan.prediction, plan.ztsnr, plan.spec, plan.betas_from_host)
    assert pasted.sampling.spacing == "trailing"
    host_plan = resolve_model_sampling(AUTO, Detected(), HOST_EPS)
    host_applied = from_infotext(to_infotext(applied_settings(requested, host_plan, HOST_EPS, "host")))
    again = resolve_model_sampling(host_applied.model_sampling, Detected(), HOST_EPS, betas_auto=False)
    assert not again.changes_host(HOST_EPS)
