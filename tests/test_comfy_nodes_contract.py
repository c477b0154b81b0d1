"""ComfyUI node contract without ComfyUI: ids, categories, inputs, defaults, ranges, tooltips, descriptions, the
root entry point's guard, and the core calls the nodes make."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "vpred_pack_under_test"
PREFIX = "VPredZTSNR_"
CATEGORY = "sampling/v-pred ztsnr"
EXPECTED_IDS = {"CheckpointLoader", "ModelSampling", "TrailingSchedule", "CFGRescale", "NegativePrompt",
                "UncondMode", "Setup"}


def load_pack():
    """Import the repo root as a package (as ComfyUI does), without ComfyUI installed."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pack_nodes():
    pytest.importorskip("torch")
    assert importlib.util.find_spec("comfy") is None, "contract tests must run without ComfyUI"
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.nodes")


def all_inputs(cls) -> dict:
    spec = cls.INPUT_TYPES()
    return {**spec["required"], **spec.get("optional", {})}


def test_root_entry_point_is_empty_without_comfyui():
    pack = load_pack()
    assert pack.NODE_CLASS_MAPPINGS == {} and pack.NODE_DISPLAY_NAME_MAPPINGS == {}


def test_ids_names_categories_descriptions(pack_nodes):
    mappings = pack_nodes.NODE_CLASS_MAPPINGS
    assert set(mappings) == {PREFIX + name for name in EXPECTED_IDS}
    for node_id, cls in mappings.items():
        assert cls.CATEGORY == CATEGORY
        assert pack_nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("V-Pred ZTSNR: ")
        assert len(cls.DESCRIPTION) > 40 and hasattr(cls, cls.FUNCTION)
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)


def test_every_input_has_a_tooltip_and_sane_range(pack_nodes):
    for cls in pack_nodes.NODE_CLASSES:
        for name, spec in all_inputs(cls).items():
            options = spec[1]
            assert options.get("tooltip"), f"{cls.NODE_ID}.{name} has no tooltip"
            if spec[0] in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], f"{cls.NODE_ID}.{name}"
            if isinstance(spec[0], list) and "default" in options:
                assert options["default"] in spec[0], f"{cls.NODE_ID}.{name}"


def test_mode_choices_are_the_core_ids(pack_nodes):
    from vpred_core.sampling.cfg import RESCALE_SPACE_IDS
    from vpred_core.sampling.schedules import BETA_SCHEDULE_IDS, SPACING_IDS
    from vpred_core.sampling.uncond import UNCOND_MODE_IDS
    from vpred_core.settings import PREDICTION_SETTING_IDS, ZTSNR_SETTING_IDS

    ms = all_inputs(pack_nodes.ModelSampling)
    assert tuple(ms["prediction"][0]) == PREDICTION_SETTING_IDS
    assert tuple(ms["ztsnr"][0]) == ZTSNR_SETTING_IDS
    assert tuple(ms["beta_schedule"][0]) == ("auto",) + BETA_SCHEDULE_IDS
    assert ms["terminal"][0] == ["host_clamp", "diffusers"]
    assert ms["linear_end"][1]["max"] >= 0.024 and ms["linear_end"][1]["default"] == 0.012
    assert tuple(all_inputs(pack_nodes.TrailingSchedule)["spacing"][0]) == SPACING_IDS
    rescale = all_inputs(pack_nodes.CfgRescale)
    assert tuple(rescale["space"][0]) == RESCALE_SPACE_IDS and rescale["space"][1]["default"] == "v"
    assert rescale["phi"][1]["default"] == 0.7 and (rescale["phi"][1]["min"], rescale["phi"][1]["max"]) == (0.0, 1.0)
    assert set(pack_nodes.CfgRescale.INPUT_TYPES()["optional"]) == {"start_percent", "end_percent", "sigma_high",
                                                                     "sigma_low"}
    for cls in (pack_nodes.NegativePrompt, pack_nodes.UncondMode):
        assert tuple(all_inputs(cls)["mode"][0]) == UNCOND_MODE_IDS
    assert pack_nodes.CheckpointLoader.RETURN_TYPES == ("MODEL", "CLIP", "VAE", "STRING")
    assert all_inputs(pack_nodes.CheckpointLoader)["ckpt_name"][0] == []


class FakeSampling:
    sigmas = torch.linspace(0.03, 4518.76, 1000)

    def percent_to_sigma(self, percent):
        return 999999999.9 if percent <= 0 else (0.0 if percent >= 1 else float(self.sigmas[int((1 - percent) * 999)]))


class FakeInner:
    model_sampling = FakeSampling()


def test_cfg_rescale_post_cfg_uses_core_on_denoised(pack_nodes):
    from vpred_core.sampling.cfg import rescale_cfg_denoised

    cfg_module = importlib.import_module(f"{PACK_NAME}.nodes.cfg_rescale")
    fn = cfg_module.make_post_cfg_function(0.7, "v")
    gen = torch.Generator().manual_seed(0)
    x, cond, uncond = (torch.randn(2, 4, 3, 8, 8, generator=gen) for _ in range(3))  # 5-D latents
    sigma = torch.tensor([4518.76, 3.0])
    guided = uncond + 5.0 * (cond - uncond)
    args = {"denoised": guided, "cond_denoised": cond, "uncond_denoised": uncond, "input": x, "sigma": sigma,
            "cond_scale": 5.0, "model": FakeInner()}
    expected = rescale_cfg_denoised(x, sigma, cond, uncond, 5.0, 0.7, "v")
    assert torch.allclose(fn(args), expected, atol=1e-6)
    args.update(uncond_denoised=None, denoised=cond)
    assert fn(args) is cond


def test_cfg_rescale_window_from_percent(pack_nodes):
    cfg_module = importlib.import_module(f"{PACK_NAME}.nodes.cfg_rescale")
    window = cfg_module.sigma_window(FakeSampling(), 0.5, 1.0, cfg_module.SIGMA_UNBOUNDED, 0.0)
    assert window.sigma_low == 0.0 and window.sigma_high < 4518.76
    assert cfg_module.sigma_window(FakeSampling(), 0.0, 1.0, cfg_module.SIGMA_UNBOUNDED, 0.0).sigma_high > 4518.76
    assert cfg_module.sigma_window(FakeSampling(), 0.0, 1.0, 100.0, 2.0) == cfg_module.SigmaWindow(100.0, 2.0)


def test_trailing_schedule_first_sigma_is_table_max(pack_nodes):
    sched = importlib.import_module(f"{PACK_NAME}.nodes.trailing_schedule")
    sigmas = sched.schedule_sigmas(FakeSampling(), 10, "trailing", 1.0)
    assert float(sigmas[0]) == float(FakeSampling.sigmas[-1]) and float(sigmas[-1]) == 0.0 and len(sigmas) == 11
    assert sched.schedule_sigmas(FakeSampling(), 10, "trailing", 0.0).numel() == 0
    assert len(sched.schedule_sigmas(FakeSampling(), 10, "trailing", 0.5)) == 11


def test_settings_from_inputs(pack_nodes):
    ms_mod = importlib.import_module(f"{PACK_NAME}.nodes.model_sampling")
    settings, beta_auto = ms_mod.settings_from_inputs("v", "on", "scaled_linear", 0.00085, 0.024, 1000, "host_clamp")
    assert not beta_auto and settings.linear_end == 0.024 and settings.prediction == "v"
    _, beta_auto = ms_mod.settings_from_inputs("auto", "auto")
    assert beta_auto
    with pytest.raises(ValueError):
        ms_mod.settings_from_inputs("v", "maybe")


def test_loader_report_names_sources(pack_nodes, tmp_path):
    from safetensors.torch import save_file

    from vpred_core.checkpoints.inspection import inspect_checkpoint

    loader = importlib.import_module(f"{PACK_NAME}.nodes.loader")
    path = tmp_path / "m.safetensors"
    save_file({"v_pred": torch.zeros(0), "x": torch.zeros(1)}, str(path), metadata={"ss_zero_terminal_snr": "True"})
    inspection = inspect_checkpoint(path)
    report = loader.build_report("m.safetensors", inspection, "applied: x")
    assert "prediction: v (from state_dict_keys" in report
    json.loads(report.split("inspection:\n", 1)[1])


def test_uncond_zero_conditioning_semantics(pack_nodes):
    uncond = importlib.import_module(f"{PACK_NAME}.nodes.uncond")
    context, pooled = torch.randn(1, 77, 16), torch.randn(1, 8)
    original = [[context, {"pooled_output": pooled, "width": 1024}]]
    zeroed = uncond.zero_conditioning(original)
    assert torch.count_nonzero(zeroed[0][0]) == 0 and torch.count_nonzero(zeroed[0][1]["pooled_output"]) == 0
    assert zeroed[0][1]["width"] == 1024 and original[0][0] is context and original[0][1]["pooled_output"] is pooled

    class FakeClip:
        def tokenize(self, text):
            return text

        def encode_from_tokens_scheduled(self, tokens):
            return [[torch.full((1, 2, 3), float(len(tokens) + 1)), {"text": tokens}]]

    assert uncond.negative_conditioning(FakeClip(), "", "comma")[0][1]["text"] == ","
    assert uncond.negative_conditioning(FakeClip(), "", "host_default")[0][1]["text"] == ""
    assert torch.count_nonzero(uncond.negative_conditioning(FakeClip(), "", "zero")[0][0]) == 0
    assert uncond.negative_conditioning(FakeClip(), "bad", "zero")[0][1]["text"] == "bad"
    with pytest.raises(ValueError):
        uncond.UncondMode().apply(original, "comma")


def test_example_workflows_use_only_known_nodes(pack_nodes):
    files = sorted((REPO_ROOT / "example_workflows").glob("*.json"))
    assert len(files) >= 2
    for path in files:
        workflow = json.loads(path.read_text())
        types = {node["type"] for node in workflow["nodes"]}
        assert any(t.startswith(PREFIX) for t in types)
        assert {t for t in types if t.startswith(PREFIX)} <= set(pack_nodes.NODE_CLASS_MAPPINGS)
        ids = {node["id"] for node in workflow["nodes"]}
        assert all(link[1] in ids and link[3] in ids for link in workflow["links"])
