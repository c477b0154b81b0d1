"""The pack's nodes inside a real ComfyUI: loading, schedules vs ComfyUI's own, CFG rescale accuracy, uncond
equivalence and real sampling with a tiny in-process model (comfy.sample / nodes.common_ksampler)."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.host

PREFIX = "VPredZTSNR_"
CATEGORY = "sampling/v-pred ztsnr"
SIGMA_REL_TOL = 1e-6
RESCALE_ABS_TOL = 1e-5
STEPS = 4
CFG = 5.0
SEED = 7
LATENT_SHAPE = (1, 4, 8, 8)


def node(nodes, name):
    return nodes.NODE_CLASS_MAPPINGS[PREFIX + name]()


@pytest.fixture()
def tiny(comfy_nodes):
    import tiny_model

    return tiny_model.tiny_sd15_model()


@pytest.fixture()
def conds():
    import tiny_model

    return tiny_model.tiny_conditioning(seed=1), tiny_model.tiny_conditioning(seed=2)


def test_pack_loads_through_comfyui_loader(comfy_nodes):
    ours = {k: v for k, v in comfy_nodes.NODE_CLASS_MAPPINGS.items() if k.startswith(PREFIX)}
    assert len(ours) == 7
    assert all(cls.CATEGORY == CATEGORY for cls in ours.values())
    assert all(comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[k].startswith("V-Pred ZTSNR") for k in ours)
    import comfy.samplers

    assert "vpred_trailing" in comfy.samplers.KSampler.SCHEDULERS
    assert "vpred_trailing" in comfy_nodes.KSampler.INPUT_TYPES()["required"]["scheduler"][0]


@pytest.mark.parametrize("zsnr", [False, True])
def test_model_sampling_equals_builtin_discrete(comfy_nodes, tiny, zsnr, record_property):
    import comfy.model_sampling

    ours = node(comfy_nodes, "ModelSampling").patch(tiny, "v", "on" if zsnr else "off", "scaled_linear",
                                                    0.00085, 0.012, 1000, "host_clamp")[0]
    builtin = comfy_nodes.NODE_CLASS_MAPPINGS["ModelSamplingDiscrete"]().patch(tiny, "v_prediction", zsnr)[0]
    ms_ours, ms_theirs = (m.get_model_object("model_sampling") for m in (ours, builtin))
    assert isinstance(ms_ours, comfy.model_sampling.V_PREDICTION)
    assert ms_ours.sigmas.dtype == ms_theirs.sigmas.dtype == torch.float32
    rel = ((ms_ours.sigmas.double() - ms_theirs.sigmas.double()).abs() / ms_theirs.sigmas.double()).max().item()
    record_property("max_rel_sigma_diff", rel)
    print(f"zsnr={zsnr}: sigma_max ours {float(ms_ours.sigma_max):.6f} builtin {float(ms_theirs.sigma_max):.6f}, "
          f"max rel diff {rel:.3e}")
    assert rel <= SIGMA_REL_TOL
    assert math.isclose(float(ms_ours.sigma_max), float(ms_theirs.sigma_max), rel_tol=SIGMA_REL_TOL)
    assert tiny.get_model_object("model_sampling") is not ms_ours  # input model untouched


def test_model_sampling_controls_beta_end(comfy_nodes, tiny):
    from vpred_core.sampling.schedules import ScheduleSpec

    patched = node(comfy_nodes, "ModelSampling").patch(tiny, "v", "off", "scaled_linear", 0.00085, 0.024, 1000,
                                                       "host_clamp")[0]
    sigmas = patched.get_model_object("model_sampling").sigmas.double()
    expected = ScheduleSpec(linear_end=0.024).sigmas().float().double()
    assert torch.equal(sigmas, expected)


def test_trailing_schedule_starts_at_sigma_max(comfy_nodes, tiny):
    import comfy.samplers

    model = node(comfy_nodes, "Setup").patch(tiny, "v", "on", 0.7)[0]
    ms = model.get_model_object("model_sampling")
    sigmas = node(comfy_nodes, "TrailingSchedule").get_sigmas(model, 10, "trailing", 1.0)[0]
    assert float(sigmas[0]) == float(ms.sigma_max) and float(sigmas[-1]) == 0.0 and len(sigmas) == 11
    via_registry = comfy.samplers.calculate_sigmas(ms, "vpred_trailing", 10)
    assert torch.equal(via_registry, sigmas)
    assert torch.equal(sigmas[:-1], ms.sigmas[torch.tensor([999, 899, 799, 699, 599, 499, 399, 299, 199, 99])])


def _lin_reference(x, sigma, cond, uncond, scale, phi):
    """Lin et al. Alg. 2 in v-space, float64: v = (alpha^2 x - x0)/s; x0 = alpha^2 x - s v."""
    x, cond, uncond = (t.double() for t in (x, cond, uncond))
    alpha2 = 1.0 / (1.0 + sigma * sigma)
    s = sigma / math.sqrt(1.0 + sigma * sigma)
    v_c, v_u = (alpha2 * x - cond) / s, (alpha2 * x - uncond) / s
    v_cfg = v_u + scale * (v_c - v_u)
    dims = tuple(range(1, x.ndim))
    v_res = v_cfg * v_c.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True)
    v_final = phi * v_res + (1.0 - phi) * v_cfg
    return alpha2 * x - s * v_final


@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (1, 4, 3, 8, 8)])
def test_cfg_rescale_matches_lin_formula_at_sigma_max(comfy_nodes, tiny, shape, record_property):
    model = node(comfy_nodes, "Setup").patch(tiny, "v", "on", 0.0)[0]
    model = node(comfy_nodes, "CFGRescale").patch(model, 0.7, "v")[0]
    inner = model.model
    inner.model_sampling = model.get_model_object("model_sampling")
    sigma_max = float(inner.model_sampling.sigma_max)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(shape, generator=gen) * math.sqrt(1 + sigma_max**2)
    cond, uncond = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    sigma = torch.full((shape[0],), sigma_max)
    guided = uncond + (cond - uncond) * CFG
    fn = model.model_options["sampler_post_cfg_function"][-1]
    args = {"denoised": guided, "cond_denoised": cond, "uncond_denoised": uncond, "input": x, "sigma": sigma,
            "cond_scale": CFG, "model": inner, "cond": None, "uncond": None, "model_options": model.model_options}
    ours = fn(args)
    err = (ours.double() - _lin_reference(x, sigma_max, cond, uncond, CFG, 0.7)).abs().max().item()
    record_property("rescale_max_abs_err_at_sigma_max", err)
    print(f"shape {shape}: CFG rescale max abs error at sigma_max {sigma_max:.2f}: {err:.3e}")
    assert err <= RESCALE_ABS_TOL
    args.update(uncond_denoised=None, denoised=cond)
    assert fn(args) is cond  # cfg == 1: uncond skipped, nothing to rescale


def test_builtin_rescalecfg_error_at_sigma_max_for_reference(comfy_nodes, tiny):
    """Documents the float32 x - denoised cancellation of ComfyUI's RescaleCFG (not asserted tightly)."""
    patched = comfy_nodes.NODE_CLASS_MAPPINGS["RescaleCFG"]().patch(tiny, 0.7)[0]
    sigma_max = 4518.76
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(LATENT_SHAPE, generator=gen) * math.sqrt(1 + sigma_max**2)
    cond, uncond = torch.randn(LATENT_SHAPE, generator=gen), torch.randn(LATENT_SHAPE, generator=gen)
    fn = patched.model_options["sampler_cfg_function"]
    sigma = torch.full((1,), sigma_max)
    out = x - fn({"cond": x - cond, "uncond": x - uncond, "cond_scale": CFG, "input": x, "sigma": sigma})
    err = (out.double() - _lin_reference(x, sigma_max, cond, uncond, CFG, 0.7)).abs().max().item()
    print(f"built-in RescaleCFG max abs error at sigma {sigma_max}: {err:.3e}")
    assert math.isfinite(err)


def test_sampling_with_each_node(comfy_nodes, tiny, conds):
    import comfy.sample

    positive, negative = conds
    latent = {"samples": torch.zeros(LATENT_SHAPE)}
    model = node(comfy_nodes, "ModelSampling").patch(tiny, "v", "on", "auto", 0.00085, 0.012, 1000,
                                                     "host_clamp")[0]
    model = node(comfy_nodes, "CFGRescale").patch(model, 0.7, "v", 0.0, 1.0)[0]
    for cfg in (1.0, CFG):
        out = comfy_nodes.common_ksampler(model, SEED, STEPS, cfg, "euler", "vpred_trailing", positive, negative,
                                          latent)[0]["samples"]
        assert out.shape == LATENT_SHAPE and torch.isfinite(out).all()
    sigmas = node(comfy_nodes, "TrailingSchedule").get_sigmas(model, STEPS, "trailing", 1.0)[0]
    noise = comfy.sample.prepare_noise(latent["samples"], SEED)
    sampler = comfy_nodes.NODE_CLASS_MAPPINGS["KSamplerSelect"].execute("dpmpp_2m")[0]
    out = comfy.sample.sample_custom(model, noise, CFG, sampler, sigmas, positive, negative, latent["samples"],
                                     seed=SEED)
    assert torch.isfinite(out).all()
    eps_model = node(comfy_nodes, "Setup").patch(tiny, "eps", "off", 0.7)[0]
    out = comfy_nodes.common_ksampler(eps_model, SEED, STEPS, CFG, "euler", "normal", positive, negative,
                                      latent)[0]["samples"]
    assert torch.isfinite(out).all()


def test_uncond_modes_match_comfyui(comfy_nodes, tiny_checkpoint):
    import comfy.sd

    clip = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint), output_vae=False)[1]
    encode = comfy_nodes.CLIPTextEncode().encode
    zero_out = comfy_nodes.ConditioningZeroOut().zero_out
    negative = node(comfy_nodes, "NegativePrompt")
    for text in ("", "   "):
        ours = negative.encode(clip, text, "zero")[0]
        theirs = zero_out(encode(clip, text)[0])[0]
        assert _same_conditioning(ours, theirs)
    assert _same_conditioning(negative.encode(clip, "", "comma")[0], encode(clip, ",")[0])
    assert _same_conditioning(negative.encode(clip, "", "host_default")[0], encode(clip, "")[0])
    assert _same_conditioning(negative.encode(clip, "lowres", "zero")[0], encode(clip, "lowres")[0])
    variant = node(comfy_nodes, "UncondMode")
    empty = encode(clip, "")[0]
    assert _same_conditioning(variant.apply(empty, "zero")[0], zero_out(empty)[0])
    assert variant.apply(empty, "host_default")[0] is empty
    assert _same_conditioning(variant.apply(empty, "comma", clip)[0], encode(clip, ",")[0])


def _same_conditioning(a, b) -> bool:
    if len(a) != len(b):
        return False
    for (ta, da), (tb, db) in zip(a, b, strict=True):
        if not torch.equal(ta, tb) or set(da) != set(db):
            return False
        for key, value in da.items():
            if isinstance(value, torch.Tensor) and not torch.equal(value, db[key]):
                return False
    return True


def test_loader_applies_detected_settings(comfy_nodes, tiny_checkpoint):
    import comfy.model_sampling
    import folder_paths

    folder_paths.add_model_folder_path("checkpoints", str(tiny_checkpoint.parent))
    model, clip, vae, report = node(comfy_nodes, "CheckpointLoader").load_checkpoint(tiny_checkpoint.name)
    ms = model.get_model_object("model_sampling")
    assert isinstance(ms, comfy.model_sampling.V_PREDICTION)
    assert math.isclose(float(ms.sigma_max), 4518.76, rel_tol=1e-4)
    assert clip is not None and vae is not None
    assert "applied: prediction=v" in report and "ZTSNR on" in report and "modelspec.prediction_type" in report
    print(report.splitlines()[:6])
