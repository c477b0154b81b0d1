"""The webui API (issue 10 item 6): ``alwayson_scripts: {"V-Pred / ZTSNR": {"args": [...]}}`` through A1111's own
``Api.init_script_args`` (positional values in ``ARG_NAMES`` order, a short list, one dict of named values) and a real
FastAPI ``TestClient`` POST to ``/sdapi/v1/txt2img`` (the host's pinned fastapi 0.94 / pydantic 1) on the tiny oracle
model: the Script receives the named dict, the image's infotext carries the applied values; a bad name is an error
recorded as ``VPred error`` (``WEBUI_PATH``; A1111 1.8 / 1.10.1 / dev, see webui_a1111.py)."""

from __future__ import annotations

import contextlib
import json
import types

import pytest
import webui_a1111
from webui_host_env import WEBUI_PATH, host_import, is_forge_family, load_vpred_script, pack

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

TITLE = "V-Pred / ZTSNR"
STEPS = 4
FIRST_SCRIPT_ARG = 1  # script_args[0] is the selectable script's index


@pytest.fixture(scope="module")
def loaded_script():
    if is_forge_family():
        pytest.skip("A1111 API on an ldm model object (reForge / Forge build their models in their backend)")
    return load_vpred_script()


@contextlib.contextmanager
def api_runners(data):
    """``scripts.scripts_txt2img`` / ``scripts_img2img`` holding only the VPred Script (as ``initialize_scripts``
    leaves an always-on script: ``alwayson``, ``args_from`` after the selectable-script slot), restored after."""
    scripts = host_import("modules.scripts")
    ui = pack("a1111_extension.ui")
    saved = scripts.scripts_txt2img, scripts.scripts_img2img
    runners = []
    for is_img2img in (False, True):
        script = data.script_class()
        run = webui_a1111.runner(script, webui_a1111.recorder_class()(), is_img2img)
        for one in run.alwayson_scripts:
            one.args_from += FIRST_SCRIPT_ARG
            one.args_to += FIRST_SCRIPT_ARG
            one.alwayson = True
        assert script.args_to - script.args_from == len(ui.ARG_NAMES)
        runners.append(run)
    scripts.scripts_txt2img, scripts.scripts_img2img = runners
    try:
        yield runners[0]
    finally:
        scripts.scripts_txt2img, scripts.scripts_img2img = saved


@pytest.fixture
def api(loaded_script, tmp_path):
    fastapi = host_import("fastapi")
    api_module = host_import("modules.api.api")
    models = webui_a1111.Models(str(tmp_path))
    model = models.make("api_model", ())
    webui_a1111.use_model(model)
    with api_runners(loaded_script[1]) as runner:
        app = fastapi.FastAPI()
        server = api_module.Api(app, host_import("threading").Lock())
        yield types.SimpleNamespace(app=app, server=server, runner=runner, models=api_module.models)
    models.close()


def _script_slice(api, args):
    request = api.models.StableDiffusionTxt2ImgProcessingAPI(prompt="x", alwayson_scripts={TITLE: {"args": args}})
    script_args = api.server.init_script_args(request, api.server.default_script_arg_txt2img, None, None, api.runner)
    script = api.runner.alwayson_scripts[0]
    return script_args[script.args_from:script.args_to]


def test_init_script_args_positional_short_and_named(api):
    ui = pack("a1111_extension.ui")
    defaults = tuple(ui.ARG_DEFAULTS[name] for name in ui.ARG_NAMES)
    assert tuple(api.server.default_script_arg_txt2img[FIRST_SCRIPT_ARG:]) == defaults  # the accordion's defaults
    full = [True, "v", "on", 0.0, "trailing", 0.7, "x0", 0.0, 0.0, "zero", "exact", "ddim", "auto", 0.0]
    assert list(_script_slice(api, full)) == full
    short = _script_slice(api, [True, "v", "on"])  # the rest keeps the accordion's defaults
    assert tuple(short) == (True, "v", "on", *defaults[3:])
    named = _script_slice(api, [{"ztsnr": "on", "phi": 0.7}])
    assert named[0] == {"ztsnr": "on", "phi": 0.7}
    request = ui.request_from_args(named)
    assert request.settings.model_sampling.ztsnr == "on" and request.settings.cfg_rescale.phi == 0.7
    assert ui.request_from_args(short) == ui.request_from_args([{"prediction": "v", "ztsnr": "on"}])


def _post(api, args):
    testclient = host_import("fastapi.testclient")
    body = {"prompt": "a bright image", "steps": STEPS, "width": webui_a1111.SIZE, "height": webui_a1111.SIZE,
            "sampler_name": "Euler", "seed": 1, "alwayson_scripts": {TITLE: {"args": args}}}
    with webui_a1111.host_options(**webui_a1111.HARNESS_OPTIONS):
        response = testclient.TestClient(api.app).post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    params = host_import("modules.infotext_utils").parse_generation_parameters(info["infotexts"][0])
    return {k: v for k, v in params.items() if str(k).startswith("VPred")}


def test_txt2img_post_with_a_named_dict(api):
    keys = _post(api, [{"prediction": "v", "ztsnr": "on", "phi": 0.7}])
    assert (keys["VPred prediction"], keys["VPred ZTSNR"], keys["VPred CFG rescale"]) == ("v", "on", "0.7")
    assert keys["VPred spacing"] == "trailing"
    keys = _post(api, [{"ztsnr": "on", "phy": 0.7}])  # a misspelt name: an error, the pack off for the image
    assert "unknown argument" in keys["VPred error"] and "VPred ZTSNR" not in keys
