"""The pack's nodes inside a real ComfyUI: V3 loading and schemas against the V1 contract, schedules vs ComfyUI's own,
CFG rescale accuracy and ComfyUI's real cfg-1 path, uncond equivalence, models the pack must leave alone (swept over
ComfyUI's own model types and model-sampling nodes), and real sampling with a tiny in-process model."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from comfy_host_env import REPO_ROOT, host_node

pytestmark = pytest.mark.host

PREFIX = "VPredZTSNR_"
CATEGORY = "sampling/v-pred ztsnr"
V1_OBJECT_INFO = REPO_ROOT / "tests" / "data" / "comfy_v1" / "object_info_pack_v1.json"
V1_IDS = {"CheckpointLoader", "ModelSampling", "TrailingSchedule", "CFGRescale", "NegativePrompt", "UncondMode",
          "Setup"}
EXPECTED_IDS = V1_IDS | {"DetectPredictionType"}
# Inputs added after the V1 nodes (optional, last) and V1 inputs whose choices / tooltip grew with them.
ADDED_INPUTS = {"CheckpointLoader": ["first_step", "probe"], "ModelSampling": ["first_step"], "Setup": ["first_step"]}
ADDED_DEFAULTS = {"first_step": "auto", "probe": "when_unstated"}
EXTENDED_INPUTS = {("ModelSampling", "terminal"), ("TrailingSchedule", "steps"), ("CheckpointLoader", "ckpt_name")}
SIGMA_REL_TOL = 1e-6
RESCALE_ABS_TOL = 1e-5
STEPS = 4
CFG = 5.0
SEED = 7
LATENT_SHAPE = (1, 4, 8, 8)


def node_class(nodes, name):
    return nodes.NODE_CLASS_MAPPINGS[PREFIX + name]


def pack_module(nodes, name):
    """A module of the pack's ``nodes`` package as ComfyUI loaded it (under its custom-node module name)."""
    import sys

    package = node_class(nodes, "Setup").__module__.rsplit(".", 1)[0]
    return sys.modules[f"{package}.{name}"]


def run(nodes, name, *args, **kwargs):
    """Call a V3 node's execute and return its outputs tuple."""
    return node_class(nodes, name).execute(*args, **kwargs).result


@pytest.fixture()
def tiny(comfy_nodes):
    import tiny_model

    return tiny_model.tiny_sd15_model()


@pytest.fixture()
def conds():
    import tiny_model

    return tiny_model.tiny_conditioning(seed=1), tiny_model.tiny_conditioning(seed=2)


def test_pack_loads_through_comfyui_loader_as_v3(comfy_nodes):
    from comfy_api.latest import io

    ours = {k: v for k, v in comfy_nodes.NODE_CLASS_MAPPINGS.items() if k.startswith(PREFIX)}
    assert set(ours) == {PREFIX + name for name in EXPECTED_IDS}
    assert all(issubclass(cls, io.ComfyNode) for cls in ours.values())
    assert all(cls.GET_SCHEMA().category == CATEGORY for cls in ours.values())
    assert all(comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[k].startswith("V-Pred ZTSNR: ") for k in ours)
    import comfy.samplers

    assert "vpred_trailing" in comfy.samplers.KSampler.SCHEDULERS
    assert "vpred_trailing" in comfy_nodes.KSampler.INPUT_TYPES()["required"]["scheduler"][0]


def test_nodes_use_the_pinned_versioned_api(comfy_nodes):
    import comfy_api.v0_0_2

    module = pack_module(comfy_nodes, "comfy_nodes")
    assert module.io is comfy_api.v0_0_2.io and module.ComfyExtension is comfy_api.v0_0_2.ComfyExtension
    source = (REPO_ROOT / "nodes" / "comfy_nodes.py").read_text()
    assert "comfy_api.latest" not in source.replace('``comfy_api.latest``', "")


@pytest.mark.parametrize("name", sorted(V1_IDS))
def test_v3_schema_keeps_the_v1_contract(comfy_nodes, name):
    """object_info of the V3 node (what the server sends, GET_NODE_INFO_V1) against the V1 node's, recorded before the
    change: same display name, category, description, outputs, and the same inputs in the same order with the same
    types, defaults, ranges and tooltips; new inputs only optional and last."""
    v1 = json.loads(V1_OBJECT_INFO.read_text())[PREFIX + name]
    v3 = node_class(comfy_nodes, name).GET_NODE_INFO_V1()
    for key in ("display_name", "category", "description", "output", "output_name", "output_tooltips",
                "output_is_list", "output_node"):
        assert list(v3[key]) == list(v1[key]) if isinstance(v1[key], list) else v3[key] == v1[key], key
    added = ADDED_INPUTS.get(name, [])
    assert v3["input_order"]["required"] == v1["input_order"]["required"]
    assert v3["input_order"].get("optional", []) == v1["input_order"].get("optional", []) + added
    for section in ("required", "optional"):
        for key, spec in v1["input"].get(section, {}).items():
            new = v3["input"][section][key]
            new_type, old_type = new[0], spec[0]
            if isinstance(old_type, list) or old_type == "COMBO":  # V3 sends combos as ("COMBO", {"options": ...})
                old_options = old_type if isinstance(old_type, list) else spec[1]["options"]
                new_options = new_type if isinstance(new_type, list) else new[1]["options"]
                assert new_options[:len(old_options)] == old_options, (key, new_options)
            else:
                assert new_type == old_type, key
            old_opts, new_opts = dict(spec[1]), dict(new[1])
            old_opts.pop("options", None), new_opts.pop("options", None)
            if (name, key) in EXTENDED_INPUTS:
                old_opts.pop("tooltip", None), new_opts.pop("tooltip", None)
                old_opts.pop("max", None), new_opts.pop("max", None)
            assert {k: v for k, v in new_opts.items() if k in old_opts} == old_opts, key
    for key in added:
        assert v3["input"]["optional"][key][1]["default"] == ADDED_DEFAULTS[key]


def test_search_aliases_where_comfyui_supports_them(comfy_nodes):
    """v0.8.0's io.Schema has no search_aliases (its frontend searches id and display name); newer ones get them."""
    import dataclasses

    from comfy_api.v0_0_2 import io

    supported = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}
    for name in EXPECTED_IDS:
        aliases = getattr(node_class(comfy_nodes, name).GET_SCHEMA(), "search_aliases", None)
        assert (("vpred" in aliases and "zero terminal snr" in aliases) if supported else aliases is None), name
    print(f"io.Schema.search_aliases supported: {supported}")


@pytest.mark.parametrize("zsnr", [False, True])
def test_model_sampling_equals_builtin_discrete(comfy_nodes, tiny, zsnr, record_property):
    import comfy.model_sampling

    ours = run(comfy_nodes, "ModelSampling", tiny, "v", "on" if zsnr else "off", "scaled_linear", 0.00085, 0.012,
               1000, "host_clamp")[0]
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

    patched = run(comfy_nodes, "ModelSampling", tiny, "v", "off", "scaled_linear", 0.00085, 0.024, 1000,
                  "host_clamp")[0]
    sigmas = patched.get_model_object("model_sampling").sigmas.double()
    expected = ScheduleSpec(linear_end=0.024).sigmas().float().double()
    assert torch.equal(sigmas, expected)


def test_first_step_wrapper_installed_only_where_it_can_act(comfy_nodes, tiny):
    from comfy.patcher_extension import WrappersMP

    def mode(model):
        wrappers = model.get_wrappers(WrappersMP.SAMPLER_SAMPLE, "vpred_ztsnr_first_step")
        assert len(wrappers) <= 1
        return wrappers[0].first_step if wrappers else None

    args = ("auto", 0.00085, 0.012, 1000, "host_clamp")
    assert mode(run(comfy_nodes, "ModelSampling", tiny, "v", "on", *args)[0]) == "auto"
    assert mode(run(comfy_nodes, "ModelSampling", tiny, "v", "off", *args)[0]) is None
    assert mode(run(comfy_nodes, "ModelSampling", tiny, "v", "on", *args, first_step="sampler")[0]) is None
    assert mode(run(comfy_nodes, "ModelSampling", tiny, "eps", "off", *args, first_step="ddim")[0]) == "ddim"
    exact = run(comfy_nodes, "ModelSampling", tiny, "v", "on", "auto", 0.00085, 0.012, 1000, "exact",
                first_step="sampler")[0]
    assert mode(exact) == "sampler"
    twice = run(comfy_nodes, "Setup", run(comfy_nodes, "Setup", tiny, "v", "on", 0.7)[0], "v", "on", 0.7)[0]
    assert mode(twice) == "auto"  # replaced, never stacked
    assert mode(tiny) is None


def test_trailing_schedule_starts_at_sigma_max(comfy_nodes, tiny):
    import comfy.samplers

    model = run(comfy_nodes, "Setup", tiny, "v", "on", 0.7)[0]
    ms = model.get_model_object("model_sampling")
    sigmas = run(comfy_nodes, "TrailingSchedule", model, 10, "trailing", 1.0)[0]
    assert float(sigmas[0]) == float(ms.sigma_max) and float(sigmas[-1]) == 0.0 and len(sigmas) == 11
    via_registry = comfy.samplers.calculate_sigmas(ms, "vpred_trailing", 10)
    assert torch.equal(via_registry, sigmas)
    assert torch.equal(sigmas[:-1], ms.sigmas[torch.tensor([999, 899, 799, 699, 599, 499, 399, 299, 199, 99])])


@pytest.mark.parametrize(("steps", "denoise"), [(50, 0.04), (1200, 1.0)])
def test_trailing_with_more_steps_than_timesteps_runs_like_comfy_schedulers(comfy_nodes, tiny, steps, denoise):
    """Issue 8 item 4: KSampler steps 50 at denoise 0.04 (1250 total) and steps 1200 work with vpred_trailing as with
    ComfyUI's own 'normal' (same handling of total steps > T: dense fractional timesteps)."""
    import comfy.samplers

    model = run(comfy_nodes, "Setup", tiny, "v", "on", 0.7)[0]
    sigmas = {}
    for scheduler in ("vpred_trailing", "normal", "simple"):
        sampler = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler="euler", scheduler=scheduler,
                                          denoise=denoise)
        sigmas[scheduler] = sampler.sigmas
        assert len(sampler.sigmas) == steps + 1 and float(sampler.sigmas[-1]) == 0.0, scheduler
    trailing = sigmas["vpred_trailing"]
    assert bool((trailing[1:] < trailing[:-1]).all())
    torch.testing.assert_close(trailing, sigmas["normal"], rtol=2e-3, atol=0.0)
    basic = host_node(comfy_nodes, "BasicScheduler", model, "vpred_trailing", steps, denoise)
    assert torch.equal(basic[0], trailing)
    node = run(comfy_nodes, "TrailingSchedule", model, steps, "trailing", denoise)[0]
    assert torch.equal(node, trailing)


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
    model = run(comfy_nodes, "Setup", tiny, "v", "on", 0.0)[0]
    model = run(comfy_nodes, "CFGRescale", model, 0.7, "v")[0]
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


def test_cfg_rescale_on_comfyuis_real_cfg1_path(comfy_nodes, tiny, conds):
    """Issue 10 item 8: at cfg 1 ComfyUI skips the uncond pass and calls post-CFG functions with uncond_denoised =
    zeros (calc_cond_batch's empty output) and uncond = None. Recorded through comfy.samplers.cfg_function during
    real sampling: the rescale returns the guided tensor itself there, and rescales at cfg 5."""
    positive, negative = conds
    latent = {"samples": torch.zeros(LATENT_SHAPE)}
    model = run(comfy_nodes, "CFGRescale", run(comfy_nodes, "Setup", tiny, "v", "on", 0.0)[0], 0.7, "v")[0]
    rescale = model.model_options["sampler_post_cfg_function"][-1]
    calls = []

    def spy(args):
        out = rescale(args)
        calls.append((args, out))
        return out

    model.model_options["sampler_post_cfg_function"] = [spy]
    for cfg in (1.0, CFG):
        calls.clear()
        comfy_nodes.common_ksampler(model, SEED, 2, cfg, "euler", "vpred_trailing", positive, negative, latent)
        assert calls
        for args, out in calls:
            if cfg == 1.0:
                assert args["uncond"] is None and isinstance(args["uncond_denoised"], torch.Tensor)
                assert torch.count_nonzero(args["uncond_denoised"]) == 0
                assert out is args["denoised"]
            else:
                assert out is not args["denoised"] and not torch.equal(out, args["denoised"])


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
    model = run(comfy_nodes, "ModelSampling", tiny, "v", "on", "auto", 0.00085, 0.012, 1000, "host_clamp")[0]
    model = run(comfy_nodes, "CFGRescale", model, 0.7, "v", 0.0, 1.0)[0]
    for cfg in (1.0, CFG):
        out = comfy_nodes.common_ksampler(model, SEED, STEPS, cfg, "euler", "vpred_trailing", positive, negative,
                                          latent)[0]["samples"]
        assert out.shape == LATENT_SHAPE and torch.isfinite(out).all()
    sigmas = run(comfy_nodes, "TrailingSchedule", model, STEPS, "trailing", 1.0)[0]
    noise = comfy.sample.prepare_noise(latent["samples"], SEED)
    sampler = host_node(comfy_nodes, "KSamplerSelect", "dpmpp_2m")[0]
    out = comfy.sample.sample_custom(model, noise, CFG, sampler, sigmas, positive, negative, latent["samples"],
                                     seed=SEED)
    assert torch.isfinite(out).all()
    eps_model = run(comfy_nodes, "Setup", tiny, "eps", "off", 0.7)[0]
    out = comfy_nodes.common_ksampler(eps_model, SEED, STEPS, CFG, "euler", "normal", positive, negative,
                                      latent)[0]["samples"]
    assert torch.isfinite(out).all()


def test_uncond_modes_match_comfyui(comfy_nodes, tiny_checkpoint):
    import comfy.sd

    clip = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint), output_vae=False)[1]
    encode = comfy_nodes.CLIPTextEncode().encode
    zero_out = comfy_nodes.ConditioningZeroOut().zero_out
    for text in ("", "   "):
        ours = run(comfy_nodes, "NegativePrompt", clip, text, "zero")[0]
        theirs = zero_out(encode(clip, text)[0])[0]
        assert _same_conditioning(ours, theirs)
    assert _same_conditioning(run(comfy_nodes, "NegativePrompt", clip, "", "comma")[0], encode(clip, ",")[0])
    assert _same_conditioning(run(comfy_nodes, "NegativePrompt", clip, "", "host_default")[0], encode(clip, "")[0])
    assert _same_conditioning(run(comfy_nodes, "NegativePrompt", clip, "lowres", "zero")[0], encode(clip, "lowres")[0])
    empty = encode(clip, "")[0]
    assert _same_conditioning(run(comfy_nodes, "UncondMode", empty, "zero")[0], zero_out(empty)[0])
    assert run(comfy_nodes, "UncondMode", empty, "host_default")[0] is empty
    assert _same_conditioning(run(comfy_nodes, "UncondMode", empty, "comma", clip)[0], encode(clip, ",")[0])


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
    from comfy.patcher_extension import WrappersMP

    folder_paths.add_model_folder_path("checkpoints", str(tiny_checkpoint.parent))
    model, clip, vae, report = run(comfy_nodes, "CheckpointLoader", tiny_checkpoint.name)
    ms = model.get_model_object("model_sampling")
    assert isinstance(ms, comfy.model_sampling.V_PREDICTION)
    assert math.isclose(float(ms.sigma_max), 4518.76, rel_tol=1e-4)
    assert clip is not None and vae is not None
    assert "applied: prediction=v" in report and "ZTSNR on" in report and "modelspec.prediction_type" in report
    assert [w.first_step for w in model.get_wrappers(WrappersMP.SAMPLER_SAMPLE, "vpred_ztsnr_first_step")] == ["auto"]
    print(report.splitlines()[:6])


def host_model_samplings(comfy_nodes, tiny):
    """{label: model_sampling object} for every comfy.model_base.ModelType and every option of ComfyUI's own
    ModelSamplingDiscrete / ModelSamplingContinuousEDM / ModelSamplingContinuousV nodes."""
    import comfy.model_base

    config = tiny.model.model_config
    found = {}
    for model_type in comfy.model_base.ModelType:
        found[f"ModelType.{model_type.name}"] = comfy.model_base.model_sampling(config, model_type)
    extra_inputs = {"ModelSamplingDiscrete": (False,), "ModelSamplingContinuousEDM": (120.0, 0.002),
                    "ModelSamplingContinuousV": (500.0, 0.03)}  # zsnr / (sigma_max, sigma_min) defaults
    for node_name, extra in extra_inputs.items():
        node = comfy_nodes.NODE_CLASS_MAPPINGS[node_name]
        for choice in node.INPUT_TYPES()["required"]["sampling"][0]:
            patched = node().patch(tiny, choice, *extra)[0]
            found[f"{node_name}({choice})"] = patched.get_model_object("model_sampling")
    return found


# Only these are discrete eps / v schedules the pack may replace; everything else must be left alone.
DISCRETE = {"ModelType.EPS": "eps", "ModelType.V_PREDICTION": "v", "ModelSamplingDiscrete(eps)": "eps",
            "ModelSamplingDiscrete(v_prediction)": "v"}


def test_non_discrete_model_samplings_are_left_alone(comfy_nodes, tiny, caplog):
    """Issue 10 item 7, on ComfyUI's real classes: EDM v-pred (V_PREDICTION_EDM, CosXL), continuous v, EDM, flow,
    x0, LCM, img2img... are not read as discrete 'v'/'eps', and the Model Sampling / Setup nodes and the loader's
    auto-configuration return the model unchanged with a report line naming ComfyUI's classes."""
    from vpred_core.settings import Detected

    loader, ms_mod = pack_module(comfy_nodes, "loader"), pack_module(comfy_nodes, "model_sampling")
    rows = []
    for label, ms in host_model_samplings(comfy_nodes, tiny).items():
        prediction = ms_mod.host_prediction(ms)
        rows.append((label, ms_mod.host_sampling_name(ms), prediction))
        assert prediction == DISCRETE.get(label), label
        if prediction is not None:
            continue
        model = tiny.clone()
        model.add_object_patch("model_sampling", ms)
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            patched = run(comfy_nodes, "ModelSampling", model, "v", "on", "auto", 0.00085, 0.012, 1000,
                          "host_clamp")[0]
            assert patched.get_model_object("model_sampling") is ms, label
            assert "not a discrete eps/v schedule" in caplog.text and ms_mod.host_sampling_name(ms) in caplog.text
        setup = run(comfy_nodes, "Setup", model, "v", "on", 0.7)[0]
        assert setup.get_model_object("model_sampling") is ms and setup is not model
        stated = type("Inspection", (), {"stated_fields": lambda self: {"prediction": "v", "ztsnr": True},
                                         "sources": {}})()
        assert Detected.from_inspection(stated).states_anything
        same, line = loader.auto_configure(model, Detected.from_inspection(stated))
        assert same is model and line.startswith("not applied:"), label
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{label:{width}}  {name:45}  -> {prediction}" for label, name, prediction in rows))
