"""ComfyUI side without ComfyUI: the root entry point's guard and the host-free functions every node's ``execute``
calls (settings from inputs, the first-step decision, CFG rescale at cfg 1, schedules, the loader's report and
fingerprint, uncond modes). The V3 schemas themselves are tested inside ComfyUI (tests/host_comfyui)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "vpred_pack_under_test"
PREFIX = "VPredZTSNR_"
# The pack's node ids (tests/host_comfyui checks the V3 extension registers exactly these).
EXPECTED_IDS = {"CheckpointLoader", "ModelSampling", "TrailingSchedule", "CFGRescale", "NegativePrompt",
                "UncondMode", "Setup", "DetectPredictionType"}


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


def pack_module(name: str):
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.nodes.{name}")


@pytest.fixture(scope="module", autouse=True)
def no_comfyui():
    assert importlib.util.find_spec("comfy") is None, "contract tests must run without ComfyUI"
    assert importlib.util.find_spec("comfy_api") is None, "contract tests must run without ComfyUI"


def test_root_entry_point_registers_nothing_without_comfyui():
    pack = load_pack()
    assert not hasattr(pack, "comfy_entrypoint")
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # a V1 mapping would win over the V3 entry point


@pytest.mark.parametrize("module", ["common", "model_sampling", "first_step", "trailing_schedule", "cfg_rescale",
                                    "uncond", "loader", "probe"])
def test_host_free_modules_import_without_comfyui(module):
    pack_module(module)
    assert "comfy" not in sys.modules


def test_settings_from_inputs():
    ms_mod = pack_module("model_sampling")
    settings, beta_auto = ms_mod.settings_from_inputs("v", "on", "scaled_linear", 0.00085, 0.024, 1000, "exact")
    assert not beta_auto and settings.linear_end == 0.024 and settings.prediction == "v"
    assert settings.terminal == "exact"
    _, beta_auto = ms_mod.settings_from_inputs("auto", "auto")
    assert beta_auto
    with pytest.raises(ValueError):
        ms_mod.settings_from_inputs("v", "maybe")


@pytest.mark.parametrize(("ztsnr", "exact", "first_step", "expected"), [
    (True, False, "auto", "auto"),      # ZTSNR in effect: the wrapper acts where the schedule starts at SNR ~0
    (False, False, "auto", None),       # nothing to do: no wrapper (bit-identical to the host)
    (True, False, "sampler", None),     # the user keeps the sampler's own first step
    (False, False, "ddim", "ddim"),     # the user asks for a DDIM first step everywhere
    (True, True, "sampler", "sampler"),  # exact terminal: no sampler can step from inf; finite starts stay its own
    (True, True, "auto", "auto"),
])
def test_first_step_decision(ztsnr, exact, first_step, expected):
    fs = pack_module("first_step")
    assert fs.first_step_to_install(ztsnr, exact, first_step) == expected


def test_first_step_wrapper_passes_through_below_snr0():
    """img2img / a schedule that does not start at SNR ~0: the executor is called with the same arguments and
    nothing else happens (comfy is never imported on that path)."""
    fs = pack_module("first_step")
    calls = []

    def executor(*args, **kwargs):
        calls.append((args, kwargs))
        return "sampled"

    args = ("model_wrap", torch.tensor([14.6, 3.0, 0.0]), {"seed": 1}, None, "noise", "latent", None, False)
    assert fs.FirstStepWrapper("auto")(executor, *args) == "sampled"
    assert calls == [(args, {})]
    assert fs.FirstStepWrapper("sampler")(executor, "m", torch.tensor([4518.76, 3.0, 0.0]), {}, None, "n") == "sampled"
    with pytest.raises(ValueError):
        fs.FirstStepWrapper("heun")


class FakeSampling:
    sigmas = torch.linspace(0.03, 4518.76, 1000)

    def percent_to_sigma(self, percent):
        return 999999999.9 if percent <= 0 else (0.0 if percent >= 1 else float(self.sigmas[int((1 - percent) * 999)]))


class FakeInner:
    model_sampling = FakeSampling()


def cfg_args(scale: float, gen: torch.Generator) -> dict:
    """post-CFG args as comfy.samplers.cfg_function builds them (5-D latents)."""
    x, cond, uncond = (torch.randn(2, 4, 3, 8, 8, generator=gen) for _ in range(3))
    return {"denoised": uncond + scale * (cond - uncond), "cond_denoised": cond, "uncond_denoised": uncond,
            "input": x, "sigma": torch.tensor([4518.76, 3.0]), "cond_scale": scale, "model": FakeInner(),
            "cond": [], "uncond": []}


def test_cfg_rescale_post_cfg_uses_core_on_denoised():
    from vpred_core.sampling.cfg import rescale_cfg_denoised

    fn = pack_module("cfg_rescale").make_post_cfg_function(0.7, "v")
    args = cfg_args(5.0, torch.Generator().manual_seed(0))
    expected = rescale_cfg_denoised(args["input"], args["sigma"], args["cond_denoised"], args["uncond_denoised"],
                                    5.0, 0.7, "v")
    assert torch.allclose(fn(args), expected, atol=1e-6)


def test_cfg_rescale_at_cfg_one_returns_denoised_itself():
    """At cfg 1 ComfyUI passes zeros as uncond_denoised and the conditioning 'uncond' as None (cfg-1 optimisation),
    never uncond_denoised None: the post-CFG function must return the guided tensor itself."""
    fn = pack_module("cfg_rescale").make_post_cfg_function(0.7, "v")
    args = cfg_args(1.0, torch.Generator().manual_seed(1))
    args.update(uncond_denoised=torch.zeros_like(args["cond_denoised"]), uncond=None,
                denoised=args["cond_denoised"])
    assert fn(args) is args["denoised"]


def test_cfg_rescale_window_from_percent():
    cfg_module = pack_module("cfg_rescale")
    window = cfg_module.sigma_window(FakeSampling(), 0.5, 1.0, cfg_module.SIGMA_UNBOUNDED, 0.0)
    assert window.sigma_low == 0.0 and window.sigma_high < 4518.76
    assert cfg_module.sigma_window(FakeSampling(), 0.0, 1.0, cfg_module.SIGMA_UNBOUNDED, 0.0).sigma_high > 4518.76
    assert cfg_module.sigma_window(FakeSampling(), 0.0, 1.0, 100.0, 2.0) == cfg_module.SigmaWindow(100.0, 2.0)


def test_trailing_schedule_first_sigma_is_table_max():
    sched = pack_module("trailing_schedule")
    sigmas = sched.schedule_sigmas(FakeSampling(), 10, "trailing", 1.0)
    assert float(sigmas[0]) == float(FakeSampling.sigmas[-1]) and float(sigmas[-1]) == 0.0 and len(sigmas) == 11
    assert sched.schedule_sigmas(FakeSampling(), 10, "trailing", 0.0).numel() == 0
    assert len(sched.schedule_sigmas(FakeSampling(), 10, "trailing", 0.5)) == 11


@pytest.mark.parametrize("steps", [1200, 1250])
def test_trailing_scheduler_accepts_more_steps_than_timesteps(steps):
    """KSampler steps 50 at denoise 0.04 calls the scheduler with 1250 steps; BasicScheduler allows 10000."""
    sigmas = pack_module("trailing_schedule").trailing_scheduler(FakeSampling(), steps)
    assert len(sigmas) == steps + 1 and float(sigmas[0]) == float(FakeSampling.sigmas[-1])
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_loader_report_names_sources(tmp_path):
    from safetensors.torch import save_file

    from vpred_core.checkpoints.inspection import inspect_checkpoint

    loader = pack_module("loader")
    path = tmp_path / "m.safetensors"
    save_file({"v_pred": torch.zeros(0), "x": torch.zeros(1)}, str(path), metadata={"ss_zero_terminal_snr": "True"})
    inspection = inspect_checkpoint(path)
    report = loader.build_report("m.safetensors", inspection, "applied: x")
    assert "prediction: v (from state_dict_keys" in report
    json.loads(report.split("inspection:\n", 1)[1])


def test_loader_fingerprint_follows_checkpoint_and_yaml(tmp_path):
    """The loader's fingerprint_inputs value changes when a YAML is added or edited beside the checkpoint, or the
    checkpoint itself changes; it stays put otherwise (ComfyUI then keeps its cached outputs)."""
    loader = pack_module("loader")
    ckpt, yaml = tmp_path / "m.safetensors", tmp_path / "m.yaml"
    ckpt.write_bytes(b"x" * 8)
    first = loader.source_fingerprint(str(ckpt))
    assert loader.source_fingerprint(str(ckpt)) == first
    yaml.write_text("model:\n  params:\n    parameterization: v\n")
    added = loader.source_fingerprint(str(ckpt))
    assert added != first
    os.utime(yaml, ns=(yaml.stat().st_atime_ns, yaml.stat().st_mtime_ns + 1_000_000))
    assert loader.source_fingerprint(str(ckpt)) != added
    ckpt.write_bytes(b"y" * 9)
    assert loader.source_fingerprint(str(ckpt))[1] != first[1]
    assert loader.source_fingerprint(None) == (None,)


def test_uncond_zero_conditioning_semantics():
    uncond = pack_module("uncond")
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
    assert uncond.apply_uncond_mode(original, "host_default") is original
    assert torch.count_nonzero(uncond.apply_uncond_mode(original, "zero")[0][0]) == 0
    assert uncond.apply_uncond_mode(original, "comma", FakeClip())[0][1]["text"] == ","
    with pytest.raises(ValueError):
        uncond.apply_uncond_mode(original, "comma")


def test_example_workflows_use_only_known_nodes():
    files = sorted((REPO_ROOT / "example_workflows").glob("*.json"))
    assert len(files) >= 2
    known = {PREFIX + name for name in EXPECTED_IDS}
    for path in files:
        workflow = json.loads(path.read_text())
        types = {node["type"] for node in workflow["nodes"]}
        assert any(t.startswith(PREFIX) for t in types)
        assert {t for t in types if t.startswith(PREFIX)} <= known
        ids = {node["id"] for node in workflow["nodes"]}
        assert all(link[1] in ids and link[3] in ids for link in workflow["links"])
        assert path.with_suffix(".jpg").is_file(), f"{path.name} has no template thumbnail"


def test_probe_modes_decide_when_and_what_wins():
    probe = pack_module("probe")
    settings = importlib.import_module(f"{PACK_NAME}.vpred_core.settings")
    unstated = settings.Detected()
    file_v = settings.Detected(prediction="v", ztsnr=True, source="file")
    probed_eps = settings.Detected(prediction="eps", ztsnr=None, source="probe: eps")
    assert probe.wants_probe("when_unstated", unstated) and not probe.wants_probe("when_unstated", file_v)
    assert probe.wants_probe("always", file_v) and not probe.wants_probe("off", unstated)
    with pytest.raises(ValueError, match="probe must be one of"):
        probe.wants_probe("sometimes", unstated)
    kept = probe.combine(file_v, probed_eps, "when_unstated")
    assert kept.prediction == "v" and kept.source_of("prediction") == "file"
    overridden = probe.combine(file_v, probed_eps, "always")
    assert overridden.prediction == "eps" and overridden.ztsnr is True  # the probe is silent on ZTSNR here
    assert probe.combine(unstated, probed_eps, "when_unstated").source_of("prediction") == "probe: eps"


def test_probe_cache_is_bounded():
    probe = pack_module("probe")
    for index in range(probe.PROBE_CACHE_SIZE + 3):
        probe.remember(("file", index), index)
    assert probe.cached(("file", 0)) is None and probe.cached(("file", probe.PROBE_CACHE_SIZE + 2)) is not None
    assert len(probe._results) == probe.PROBE_CACHE_SIZE and probe.cached(None) is None
