"""Issue 9 in a real A1111 (1.8, 1.10.1, dev), reForge and Forge: an unmarked checkpoint whose UNet is a
v-prediction network is sampled as eps by the webui alone and as v through the pack (accordion at its defaults), with
the probe named as the source in the infotext. A1111 also: an unmarked eps network leaves the pack invisible
(bit-identical to the webui alone); the crafted YAML written on load records the probe, and the webui's own config
finder then loads the file as v.

The model objects cannot hold the probe tests' trained networks (tests/data/probe_models, trained with the eps / v
objectives by tests/probe_training.py) as loaded weights, so each is built as its webui builds it from the checkpoint
(A1111: the host's own ``configs/v1-inference.yaml``; reForge / Forge: ``webui_forge``'s objects; eps in every case)
and its diffusion model is that trained network behind the webui's UNet call signature."""

from __future__ import annotations

import os

import pytest
import torch
import webui_a1111
import webui_forge
from webui_host_env import WEBUI_PATH, host_import, is_forge_family, load_vpred_script, pack, script_args

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]
STEPS = 4


class WebuiCallable(torch.nn.Module):
    """A probe-test network (x, t) behind the webui's UNet call (x, timesteps, context=, y=, ...), with the attributes
    reForge's BaseModel and Forge's KModel / UnetPatcher read from a diffusion network."""

    storage_dtype = computation_dtype = torch.float32
    load_device = offload_device = initial_device = torch.device("cpu")

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.in_channels = 4

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        return self.inner(x.float(), timesteps.float()).to(x.dtype)


@pytest.fixture
def a1111(tmp_path):
    if is_forge_family():
        pytest.skip("A1111 model objects (reForge / Forge load checkpoints through their own backends)")
    _, data = load_vpred_script()
    training = host_import("probe_training")
    models = webui_a1111.Models(str(tmp_path))
    checkpoints = pack("a1111_extension.checkpoints")
    try:
        yield data, training, models, checkpoints
    finally:
        models.close()


def _unmarked(models, training, name: str, objective: str):
    model = models.make(name, ())  # no marker, no metadata, no YAML: the webui's own v1-inference.yaml (eps)
    model.model.diffusion_model = WebuiCallable(training.load_model(objective))
    webui_a1111.use_model(model)
    return model


def _request(data, model, args):
    return webui_a1111.generate(data, webui_a1111.txt2img(model, "Euler", steps=STEPS, cfg_scale=1.0), args,
                                skip_decode=True)


def test_unmarked_v_checkpoint_is_eps_alone_and_v_through_the_pack(a1111):
    data, training, models, checkpoints = a1111
    model = _unmarked(models, training, "unmarked_v", "v")
    path = model.sd_checkpoint_info.filename
    with webui_a1111.host_options(vpred_auto_yaml=False):
        alone = _request(data, model, False)
        assert alone.passes[0].parameterization == "eps" and not alone.vpred_keys()
        assert checkpoints.cached_probe(path) is None  # nothing probed without the extension

        packed = _request(data, model, None)
    keys = packed.vpred_keys()
    print(keys)
    assert packed.passes[0].parameterization == "v"
    assert keys["VPred prediction"] == "v"
    assert "prediction: probe:" in keys["VPred detection"]  # auto-YAML off: the probe itself
    assert checkpoints.cached_probe(path).prediction == "v"
    assert model.parameterization == "eps"  # restored after the request
    assert not os.path.exists(os.path.splitext(path)[0] + ".yaml")  # auto-YAML was off

    # on load with auto-YAML on (the default): the crafted YAML records the probe, the webui then finds it as v
    webui_a1111.use_model(model)
    host_import("modules.script_callbacks").model_loaded_callback(model)  # the webui's own on-load dispatch
    yaml_path = os.path.splitext(path)[0] + ".yaml"
    text = open(yaml_path, encoding="utf-8").read()
    assert "parameterization: v" in text and "probe" in text
    config = host_import("modules.sd_models_config").find_checkpoint_config_near_filename(model.sd_checkpoint_info)
    assert os.path.abspath(config) == os.path.abspath(yaml_path)


def test_unmarked_eps_checkpoint_leaves_the_pack_invisible(a1111):
    data, training, models, checkpoints = a1111
    model = _unmarked(models, training, "unmarked_eps", "eps")
    with webui_a1111.host_options(vpred_auto_yaml=False):
        alone = _request(data, model, False)
        packed = _request(data, model, None)
    assert checkpoints.cached_probe(model.sd_checkpoint_info.filename).prediction == "eps"
    assert not packed.vpred_keys() and packed.passes[0].parameterization == "eps"
    torch.testing.assert_close(packed.latents, alone.latents, rtol=0, atol=0)
    assert [p.call_values() for p in packed.passes] == [p.call_values() for p in alone.passes]


def _prediction_from_probe(params: dict) -> bool:
    """``VPred detection`` names the probe for the prediction: directly, or through the crafted YAML the probe wrote
    (auto-YAML on, the default: the YAML is then the file's statement and records the probe as its origin)."""
    detection = params.get("VPred detection", "")
    return "prediction: probe:" in detection or (
        "prediction: sidecar_yaml:" in detection and "recorded from a weight probe" in detection)


def _yaml_records_probe(checkpoint: str) -> bool:
    with open(os.path.splitext(checkpoint)[0] + ".yaml", encoding="utf-8") as handle:
        text = handle.read()
    return "parameterization: v" in text and "probe" in text


def test_reforge_unmarked_v_checkpoint_samples_as_v_through_the_pack(tmp_path):
    env = webui_forge.reforge_env()
    if env is None:
        pytest.skip("not a reForge tree")
    training = host_import("probe_training")
    checkpoints = pack("a1111_extension.checkpoints")
    model = webui_forge.reforge_model(env, tmp_path, "unmarked_v", markers=(),
                                      diffusion_model=WebuiCallable(training.load_model("v")))
    unet = model.forge_objects.unet
    host_sampling = unet.model.model_sampling
    assert not isinstance(host_sampling, env.ms.V_PREDICTION)  # reForge alone: the stock (eps) config
    args = script_args()
    script, p = env.data.script_class(), webui_forge.P(model)
    webui_forge.start(script, p, args)
    try:
        patched = webui_forge.sampling_pass(env, script, p, args)
        assert patched is not unet and isinstance(patched.get_model_object("model_sampling"), env.ms.V_PREDICTION)
        assert p.extra_generation_params["VPred prediction"] == "v"
        assert _prediction_from_probe(p.extra_generation_params)
    finally:
        script.postprocess(p, None, *args)
    path = model.sd_checkpoint_info.filename
    assert _yaml_records_probe(path) and not checkpoints.needs_probe(path)  # the next load reads the YAML
    assert unet.model.model_sampling is host_sampling and "model_sampling" not in unet.object_patches


def test_forge_unmarked_v_checkpoint_samples_as_v_through_the_pack(tmp_path):
    env = webui_forge.forge_env()
    if env is None:
        pytest.skip("not a Forge tree")
    training = host_import("probe_training")
    checkpoints = pack("a1111_extension.checkpoints")
    model = webui_forge.forge_model(env, tmp_path, "unmarked_v", (), "epsilon",
                                    network=WebuiCallable(training.load_model("v")))
    unet = model.forge_objects.unet
    host_predictor = unet.model.predictor
    predictions = []

    alone = webui_forge.txt2img_processing(env, model, "Euler", 2, STEPS)
    webui_forge.forge_request(env, None, alone, (), 2)
    assert not any(str(k).startswith("VPred") for k in alone.extra_generation_params)
    assert checkpoints.cached_probe(model.sd_checkpoint_info.filename) is None
    p = webui_forge.txt2img_processing(env, model, "Euler", 2, STEPS)
    script = env.data.script_class()
    original = script.process_before_every_sampling

    def observed(p, *args, **kwargs):  # the pass's predictor, as the sampler will use it
        original(p, *args, **kwargs)
        predictions.append(p.sd_model.forge_objects.unet.get_model_object("predictor").prediction_type)

    script.process_before_every_sampling = observed
    webui_forge.forge_request(env, script, p, script_args(), 2)
    assert predictions == ["v_prediction"]
    assert p.extra_generation_params["VPred prediction"] == "v"
    assert _prediction_from_probe(p.extra_generation_params)
    path = model.sd_checkpoint_info.filename
    assert _yaml_records_probe(path) and not checkpoints.needs_probe(path)  # the next load reads the YAML
    # the loaded patcher keeps no patch (Forge applies the clone's object patch while its model is loaded and undoes
    # it when another patcher loads, as ComfyUI does); the host's own predictor object is unchanged
    assert "predictor" not in unet.object_patches and host_predictor.prediction_type == "epsilon"
