"""The weight probe inside ComfyUI (COMFYUI_PATH): an unmarked checkpoint whose UNet is a v-prediction network loads
as eps with ComfyUI alone and as v through the pack, with the probe named as the source.

ComfyUI's SD15 class cannot hold the probe tests' tiny trained networks (tests/data/probe_models, trained with the
eps / v objectives by tests/probe_training.py), so the loadable tiny SD15 checkpoint is loaded by ComfyUI itself and
its ``diffusion_model`` is then that trained network (behind ComfyUI's call signature): the pack sees a loaded MODEL
whose weights answer as a v (or eps) model and whose file states nothing."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host
PREFIX = "VPredZTSNR_"
UNMARKED_NAME = "tiny_unmarked_sd15.safetensors"


class ComfyCallable(torch.nn.Module):
    """A probe-test network (x, t) behind ComfyUI's UNet call (x, timesteps, context=, y=, ...)."""

    in_channels = 4

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    @property
    def dtype(self):  # BaseModel.get_dtype() asks its diffusion_model
        return next(self.parameters()).dtype

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        return self.inner(x.float(), timesteps.float()).to(x.dtype)


@pytest.fixture(scope="module")
def unmarked_checkpoint(comfy_nodes, tmp_path_factory):
    import folder_paths
    import safetensors.torch
    import tiny_model

    folder = tmp_path_factory.mktemp("unmarked_checkpoints")
    path = folder / UNMARKED_NAME
    safetensors.torch.save_file(tiny_model.checkpoint_state_dict(), str(path))
    folder_paths.add_model_folder_path("checkpoints", str(folder))
    return path


def _with_network(model, objective: str):
    training = pytest.importorskip("probe_training")
    model.model.diffusion_model = ComfyCallable(training.load_model(objective))
    return model


def _loader_with_network(monkeypatch, objective: str):
    """ComfyUI's real checkpoint loading, then the trained network in place of the tiny UNet (see module docstring)."""
    import comfy.sd

    real = comfy.sd.load_checkpoint_guess_config

    def load(*args, **kwargs):
        out = real(*args, **kwargs)
        _with_network(out[0], objective)
        return out

    monkeypatch.setattr(comfy.sd, "load_checkpoint_guess_config", load)


def _probe_module(comfy_nodes):
    import sys

    package = comfy_nodes.NODE_CLASS_MAPPINGS[PREFIX + "Setup"].__module__.rsplit(".", 1)[0]
    return sys.modules[f"{package}.probe"]


def test_host_alone_loads_it_as_eps_and_the_pack_as_v(comfy_nodes, unmarked_checkpoint, monkeypatch):
    import comfy.model_sampling as cms

    host_model = comfy_nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(UNMARKED_NAME)[0]
    assert not isinstance(host_model.get_model_object("model_sampling"), cms.V_PREDICTION)
    import importlib
    import sys

    probe_mod = _probe_module(comfy_nodes)
    package = probe_mod.__name__.removesuffix(".nodes.probe")
    loader_mod = sys.modules[f"{package}.nodes.loader"]
    core_probe = importlib.import_module(f"{package}.vpred_core.sampling.probe")
    runs = []
    real_probe = core_probe.probe_prediction_type
    monkeypatch.setattr(core_probe, "probe_prediction_type", lambda *a, **k: runs.append(1) or real_probe(*a, **k))
    _loader_with_network(monkeypatch, "v")
    node = comfy_nodes.NODE_CLASS_MAPPINGS[PREFIX + "CheckpointLoader"]
    model, _, _, report = node.execute(UNMARKED_NAME).result
    assert isinstance(model.get_model_object("model_sampling"), cms.V_PREDICTION)
    assert "weight probe: prediction v" in report and "(used)" in report and "probe: prediction v" in report
    print(report.split("inspection:")[0])
    node.execute(UNMARKED_NAME)
    assert len(runs) == 1  # the second run came from the per-file cache
    assert probe_mod.cached(loader_mod.source_fingerprint(str(unmarked_checkpoint))).prediction == "v"
    off = node.execute(UNMARKED_NAME, "auto", "off").result
    assert not isinstance(off[0].get_model_object("model_sampling"), cms.V_PREDICTION)
    assert "weight probe" not in off[3]


def test_detect_prediction_type_node_on_a_model_from_elsewhere(comfy_nodes, unmarked_checkpoint):
    import comfy.model_sampling as cms

    node = comfy_nodes.NODE_CLASS_MAPPINGS[PREFIX + "DetectPredictionType"]
    loaded = comfy_nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(UNMARKED_NAME)
    v_model = _with_network(loaded[0], "v")
    patched, report = node.execute(v_model, loaded[1]).result
    assert isinstance(patched.get_model_object("model_sampling"), cms.V_PREDICTION) and patched is not v_model
    assert "applied: prediction=v" in report and "margin" in report
    print(report)
    eps_model = _with_network(comfy_nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(
        UNMARKED_NAME)[0], "eps")
    same_kind, report = node.execute(eps_model).result
    assert not isinstance(same_kind.get_model_object("model_sampling"), cms.V_PREDICTION)
    assert "weight probe: prediction eps" in report
    flow_model = _with_network(comfy_nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(
        UNMARKED_NAME)[0], "flow")
    unchanged, report = node.execute(flow_model).result
    assert unchanged is flow_model and "not changed" in report and "prediction flow" in report
