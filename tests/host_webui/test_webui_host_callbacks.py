"""Crafted-YAML auto-writing through the webui's own callbacks, and the infotext round trip through the host's own
infotext creation and paste parsing (``WEBUI_PATH``)."""

from __future__ import annotations

import os
import threading
import types

import pytest
import yaml
from webui_host_env import WEBUI_PATH, host_import, load_vpred_script, pack, script_args, tiny_ldm_model

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]
ckpt_factory = pytest.importorskip("ckpt_factory")

AUTO_YAML_OPTION = "vpred_auto_yaml"
SCAN_THREAD = "vpred-yaml-scan"
SCAN_TIMEOUT_S = 30
EXISTING_YAML = "# the user's own config\n"


@pytest.fixture(scope="module")
def loaded_script():
    return load_vpred_script()


def _paste_args():
    return script_args(prediction="v", ztsnr="on", beta_end=0.024, spacing="trailing", phi=0.7, space="x0",
                       sigma_high=20.0, sigma_low=0.5, uncond="comma", terminal="exact", first_step="ddim")


@pytest.fixture
def auto_yaml_option(loaded_script):
    """The pack's settings registered through the host's on_ui_settings callback; the option restored after."""
    shared = host_import("modules.shared")
    host_import("modules.script_callbacks").ui_settings_callback()
    assert AUTO_YAML_OPTION in shared.opts.data_labels
    saved = shared.opts.data.get(AUTO_YAML_OPTION)
    yield shared.opts
    if saved is None:
        shared.opts.data.pop(AUTO_YAML_OPTION, None)
    else:
        shared.opts.data[AUTO_YAML_OPTION] = saved


def _vpred_checkpoint(directory, name="vpred") -> str:
    path = os.path.join(directory, f"{name}.safetensors")
    ckpt_factory.build_checkpoint(path, "sd1", markers=("v_pred", "ztsnr"))
    return path


def _yaml_of(checkpoint: str) -> str:
    return os.path.splitext(checkpoint)[0] + ".yaml"


def _loaded(checkpoint: str):
    return types.SimpleNamespace(sd_checkpoint_info=types.SimpleNamespace(filename=checkpoint))


def test_model_loaded_callback_writes_yaml_once(auto_yaml_option, tmp_path):
    callbacks = host_import("modules.script_callbacks")
    auto_yaml_option.set(AUTO_YAML_OPTION, True)
    checkpoint = _vpred_checkpoint(str(tmp_path))
    callbacks.model_loaded_callback(_loaded(checkpoint))
    written = _yaml_of(checkpoint)
    with open(written, encoding="utf-8") as handle:
        assert yaml.safe_load(handle)["model"]["params"]["parameterization"] == "v"
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(checkpoint), os.path.basename(written)])
    with open(written, "w", encoding="utf-8") as handle:
        handle.write(EXISTING_YAML)
    callbacks.model_loaded_callback(_loaded(checkpoint))
    with open(written, encoding="utf-8") as handle:
        assert handle.read() == EXISTING_YAML  # never overwritten


def test_auto_yaml_setting_off_disables_writing(auto_yaml_option, tmp_path):
    callbacks = host_import("modules.script_callbacks")
    auto_yaml_option.set(AUTO_YAML_OPTION, False)
    checkpoint = _vpred_checkpoint(str(tmp_path))
    callbacks.model_loaded_callback(_loaded(checkpoint))
    _fire_app_started(checkpoint)
    assert not os.path.exists(_yaml_of(checkpoint))


def _fire_app_started(checkpoint: str) -> None:
    """The host's app_started callbacks with ``checkpoint`` registered in its checkpoint list; waits for the scan."""
    sd_models = host_import("modules.sd_models")
    fastapi = host_import("fastapi")
    info = sd_models.CheckpointInfo(checkpoint)
    info.register()
    try:
        host_import("modules.script_callbacks").app_started_callback(None, fastapi.FastAPI())
        for thread in threading.enumerate():
            if thread.name == SCAN_THREAD:
                thread.join(SCAN_TIMEOUT_S)
    finally:
        for key in [k for k, v in sd_models.checkpoints_list.items() if v is info]:
            del sd_models.checkpoints_list[key]
        for key in [k for k, v in sd_models.checkpoint_aliases.items() if v is info]:
            del sd_models.checkpoint_aliases[key]


def test_app_started_scans_the_checkpoint_list(auto_yaml_option, tmp_path):
    auto_yaml_option.set(AUTO_YAML_OPTION, True)
    checkpoint = _vpred_checkpoint(str(tmp_path), "listed")
    _fire_app_started(checkpoint)
    assert os.path.isfile(_yaml_of(checkpoint))


def _script_with_ui(data):
    gr = host_import("gradio")
    script = data.script_class()
    script.is_txt2img, script.is_img2img = True, False
    with gr.Blocks():
        script.ui(False)
    return script


def test_infotext_round_trips_through_host_paste(loaded_script, tmp_path):
    """process() -> the host's create_infotext -> infotext_utils.parse_generation_parameters -> the accordion's
    paste-back getters give a request with the same settings (the applied values; forced here, so the requested)."""
    _, data = loaded_script
    processing = host_import("modules.processing")
    infotext_utils = host_import("modules.infotext_utils")
    ui = pack("a1111_extension.ui")
    model = tiny_ldm_model(tmp_path)
    model.sd_model_hash = None
    p = processing.StableDiffusionProcessingTxt2Img(sd_model=model, prompt="a cat", negative_prompt="", steps=3,
                                                    sampler_name="Euler", do_not_save_samples=True)
    script = _script_with_ui(data)
    script.before_process(p, *_paste_args())
    p.setup_prompts()
    p.all_seeds, p.all_subseeds = [0], [0]
    script.process(p, *_paste_args())
    try:
        text = processing.create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds)
    finally:
        script.postprocess(p, None, *_paste_args())
    params = infotext_utils.parse_generation_parameters(text)
    assert params["Negative prompt"] == ","  # comma mode writes the negative actually used
    pasted = tuple(getter(params) for _, getter in script.infotext_fields)
    assert None not in pasted and pasted[0] is True
    assert ui.request_from_args(pasted) == ui.request_from_args(_paste_args())
