"""The accordion in the host's gradio (``WEBUI_PATH``): every input re-validates the values and shows the message
in the accordion (issue 10 item 5: sigma low > sigma high used to switch the extension off silently); the same values
submitted anyway give an image without the pack and a ``VPred error`` infotext key (A1111 request, webui_a1111.py)."""

from __future__ import annotations

import types

import pytest
import webui_a1111
from webui_host_env import WEBUI_PATH, host_import, is_forge_family, load_vpred_script, pack, script_args

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]

BAD_WINDOW = {"sigma_high": 1.0, "sigma_low": 5.0}


@pytest.fixture(scope="module")
def loaded_script():
    return load_vpred_script()


def _accordion(data):
    gr = host_import("gradio")
    script = data.script_class()
    script.is_txt2img, script.is_img2img = True, False
    with gr.Blocks() as blocks:
        components = script.ui(False)
    return blocks, components


def _functions(blocks):
    fns = blocks.fns
    return list(fns.values()) if isinstance(fns, dict) else list(fns)


def test_every_input_validates_and_shows_the_message(loaded_script):
    gr = host_import("gradio")
    ui = pack("a1111_extension.ui")
    blocks, components = _accordion(loaded_script[1])
    assert len(components) == len(ui.ARG_NAMES)
    validators = [f for f in _functions(blocks) if getattr(f, "fn", None) is ui.validation_message]
    assert len(validators) == len(components)  # one change event per input
    for validator in validators:
        assert list(validator.inputs) == components
        (warning,) = validator.outputs
        assert isinstance(warning, gr.HTML)
    values = dict(zip(ui.ARG_NAMES, (c.value for c in components), strict=True))
    assert validators[0].fn(*values.values()) == ""
    values.update(BAD_WINDOW)
    message = validators[0].fn(*values.values())
    assert "sigma_low" in message and "sigma_high" in message


def test_bad_values_submitted_anyway_leave_the_image_to_the_host(loaded_script, tmp_path):
    if is_forge_family():
        pytest.skip("A1111 request (webui_a1111.py)")
    models = webui_a1111.Models(str(tmp_path))
    try:
        model = models.make("stated", ("v_pred", "ztsnr"))
        webui_a1111.use_model(model)
        env = types.SimpleNamespace(data=loaded_script[1])
        bad = webui_a1111.generate(env.data, webui_a1111.txt2img(model, "Euler", 6), script_args(**BAD_WINDOW),
                                   skip_decode=True)
        host = webui_a1111.generate(env.data, webui_a1111.txt2img(model, "Euler", 6), False, skip_decode=True)
    finally:
        models.close()
    keys = bad.vpred_keys()
    assert list(keys) == ["VPred error"] and "sigma_low" in keys["VPred error"]
    assert bad.passes[0].parameterization == host.passes[0].parameterization == "eps"
    assert (bad.latents == host.latents).all()
