"""Issue 9 in a real A1111 (1.8, 1.10.1, dev): an unmarked checkpoint whose UNet is a v-prediction network is sampled
as eps by the webui alone and as v through the pack (accordion at its defaults), with the probe named as the source
in the infotext; an unmarked eps network leaves the pack invisible (bit-identical to the webui alone); the crafted
YAML written on load records the probe, and the webui's own config finder then loads the file as v.

The tiny LatentDiffusion of ``webui_a1111`` cannot hold the probe tests' trained networks (tests/data/probe_models,
trained with the eps / v objectives by tests/probe_training.py), so the model object is built as the webui builds it
from the checkpoint (the host's own ``configs/v1-inference.yaml``: eps) and its ``diffusion_model`` is that trained
network behind the webui's UNet call signature."""

from __future__ import annotations

import os

import pytest
import torch
import webui_a1111
from webui_host_env import WEBUI_PATH, host_import, is_forge_family, load_vpred_script, pack

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]
STEPS = 4


class WebuiCallable(torch.nn.Module):
    """A probe-test network (x, t) behind the webui's UNet call (x, timesteps, context=, y=, ...)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.in_channels = 4

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
    assert "prediction: probe" in keys["VPred detection"]
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
