"""Host-free logic of the webui extension (no webui needed)."""

import math

import pytest
import torch

from a1111_extension import host, logic_cfg, logic_sampling, logic_ui, logic_uncond
from vpred_core.sampling.cfg import rescale_cfg_denoised
from vpred_core.settings import CfgRescaleSettings, ModelSamplingSettings, from_infotext

UI_ARGS = (True, "v", "on", 0.024, True, 0.7, "v", 14.6, 0.5, "zero")


def test_args_to_request_and_infotext_round_trip():
    request = logic_ui.args_to_request(UI_ARGS)
    assert request.enabled and not request.beta_end_auto
    info = logic_ui.infotext_for(request.settings, "v, ZTSNR on")
    assert all(key.startswith("VPred ") for key in info)
    assert from_infotext(info) == request.settings
    values = logic_ui.ui_values_from_infotext(info)
    assert tuple(values[name] for name in logic_ui.ARG_NAMES) == UI_ARGS


def test_paste_back_without_pack_keys_and_bad_value():
    assert logic_ui.ui_values_from_infotext({"Steps": "20"}) is None
    with pytest.raises(ValueError, match="VPred CFG rescale"):
        logic_ui.ui_values_from_infotext({"VPred CFG rescale": "abc"})


def test_defaults_auto_beta_end_and_unbounded_window():
    defaults = logic_ui.defaults_from_options(lambda key, default: default)
    request = logic_ui.args_to_request(tuple(defaults[name] for name in logic_ui.ARG_NAMES))
    assert request.beta_end_auto and math.isinf(request.settings.cfg_rescale.sigma_high)
    values = logic_ui.ui_values_from_infotext(logic_ui.infotext_for(request.settings, "host"))
    assert values["sigma_high"] == logic_ui.NO_SIGMA_LIMIT


def test_option_ids_prefixed_and_xyz_override():
    assert all(spec.option_id.startswith("vpred_") for spec in logic_ui.OPTION_SPECS)
    overrides = logic_ui.xyz_override(None, "phi", 0.3)
    request = logic_ui.args_to_request((False, "auto", "auto", 0, False, 0.0, "v", 0, 0, "host_default"), overrides)
    assert request.enabled and request.settings.cfg_rescale.phi == 0.3


def test_trailing_timesteps_and_sigmas():
    ts = logic_sampling.webui_timesteps("trailing", 20)
    assert int(ts[-1]) == 999 and int(ts[0]) == 49 and bool((ts[1:] > ts[:-1]).all())
    host_like = logic_sampling.webui_timesteps("leading_plus_one", 20)
    assert int(host_like[-1]) == 951
    table = ModelSamplingSettings().schedule_spec(True).sigmas().float()
    sig = logic_sampling.trailing_sigmas(table, 10)
    assert len(sig) == 11 and float(sig[0]) == pytest.approx(float(table[-1])) and float(sig[-1]) == 0.0
    assert logic_sampling.scheduler_needs_trailing_override("Align Your Steps")
    assert not logic_sampling.scheduler_needs_trailing_override("Karras")


def test_host_classification():
    assert host.classify_host(False, False, False) == host.A1111
    assert host.classify_host(True, True, False) == host.REFORGE
    assert host.classify_host(True, False, True) == host.FORGE


def test_uncond_rewrite_and_sdxl_zeroing():
    assert logic_uncond.rewrite_negatives(["", "bad", "  "], "comma") == [",", "bad", ","]
    vector = torch.ones(2, 2816)
    cond = {"crossattn": torch.ones(2, 77, 2048), "vector": vector}
    out = logic_uncond.zero_uncond_rows(cond, logic_uncond.rows_to_zero(["", "x"], "zero"))
    assert out["crossattn"][0].abs().sum() == 0 and out["crossattn"][1].abs().sum() > 0
    assert out["vector"][0, :1280].abs().sum() == 0 and bool((out["vector"][0, 1280:] == 1).all())
    assert bool((out["vector"][1] == 1).all()) and bool((vector == 1).all())
    plain = logic_uncond.zero_uncond_rows(torch.ones(1, 77, 768), [True])
    assert plain.abs().sum() == 0


def _layout(batch=2):
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 8, 8) * 3.0
    sigma = torch.tensor([3.0, 14.6])[:batch]
    cond, uncond = torch.randn(batch, 4, 8, 8), torch.randn(batch, 4, 8, 8)
    x_in = torch.cat([x, x])
    x_out = torch.cat([cond, uncond])
    conds_list = [[(i, 1.0)] for i in range(batch)]
    return x, sigma, cond, uncond, x_in, torch.cat([sigma, sigma]), x_out, conds_list


def test_a1111_x0_rescale_matches_core():
    x, sigma, cond, uncond, x_in, sigma_in, x_out, conds_list = _layout()
    settings = CfgRescaleSettings(phi=0.7)
    new = logic_cfg.rescale_x0_outputs(x_in, sigma_in, x_out, conds_list, 7.0, settings)
    host_combined = new[2:] + 7.0 * (new[:2] - new[2:])
    expected = rescale_cfg_denoised(x, sigma, cond, uncond, 7.0, 0.7, "v")
    torch.testing.assert_close(host_combined, expected, rtol=1e-5, atol=1e-5)


def test_patcher_post_cfg_matches_core():
    x, sigma, cond, uncond, *_ = _layout()
    denoised = uncond + 5.0 * (cond - uncond)
    args = {"denoised": denoised, "cond_denoised": cond, "uncond_denoised": uncond, "sigma": sigma, "input": x}
    out = logic_cfg.post_cfg_rescale(args, CfgRescaleSettings(phi=0.7), 5.0)
    torch.testing.assert_close(out, rescale_cfg_denoised(x, sigma, cond, uncond, 5.0, 0.7, "v"), rtol=1e-5, atol=1e-5)
    args["uncond_denoised"] = None
    assert logic_cfg.post_cfg_rescale(args, CfgRescaleSettings(phi=0.7), 5.0) is denoised


def test_eps_rescale_consistent_with_x0_rescale():
    abar = ModelSamplingSettings().schedule_spec(True).alphas_cumprod().float()
    t = torch.tensor([999.0, 500.0])
    torch.manual_seed(1)
    x_t, eps_c, eps_u = (torch.randn(2, 4, 8, 8, dtype=torch.float64) for _ in range(3))
    conds_list = [[(0, 1.0)], [(1, 1.0)]]
    settings = CfgRescaleSettings(phi=0.7)
    new = logic_cfg.rescale_eps_outputs(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([eps_c, eps_u]),
                                        conds_list, 6.0, settings, abar)
    eps_final = new[2:] + 6.0 * (new[:2] - new[2:])
    a = abar[t.long()].double().sqrt().view(-1, 1, 1, 1)
    s = (1 - abar[t.long()].double()).sqrt().view(-1, 1, 1, 1)
    x0 = lambda e: (x_t - s * e) / a  # noqa: E731
    expected = rescale_cfg_denoised(x_t / a, (s / a).flatten(), x0(eps_c), x0(eps_u), 6.0, 0.7, "v")
    torch.testing.assert_close(x0(eps_final), expected, rtol=1e-6, atol=1e-6)


def test_window_outside_leaves_cfg():
    x, sigma, cond, uncond, x_in, sigma_in, x_out, conds_list = _layout()
    settings = CfgRescaleSettings(phi=1.0, sigma_high=1.0)
    new = logic_cfg.rescale_x0_outputs(x_in, sigma_in, x_out, conds_list, 7.0, settings)
    torch.testing.assert_close(new, x_out)
