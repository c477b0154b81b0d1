"""The crafted YAML makes a stock webui load the checkpoint as v-pred with the right betas (``WEBUI_PATH``).

The webui's own lookup (``sd_models_config.find_checkpoint_config``) finds the YAML beside a checkpoint; it is
loaded with OmegaConf and instantiated with the host's ``instantiate_from_config`` as ``sd_models.load_model``
does. Only sizes are shrunk in memory (UNet / VAE channels) and the text encoder is left out (it would download
weights); parameterization, betas and the denoiser config are the file's own."""

from __future__ import annotations

import types

import pytest
import torch
import yaml
from webui_host_env import WEBUI_PATH, host_import, initialized_shared, is_forge_family, load_vpred_script, pack

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]
ckpt_factory = pytest.importorskip("ckpt_factory")

ALPHAS_ATOL = 1e-6  # ldm stores float32 buffers; the core computes in float64
SIGMAS_RTOL = 1e-5
DEFAULT_BETA_END = 0.012
UPTRAIN_BETA_END = 0.024
TINY_UNET = {"model_channels": 32, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [],
             "num_heads": 1, "num_head_channels": -1, "transformer_depth": 1}
TINY_VAE = {"ch": 32, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": []}
NO_TEXT_ENCODER = "__is_unconditional__"


def _checkpoint_info(path: str):
    """The host's CheckpointInfo for ``path`` (a bare object with ``filename`` where it cannot be built)."""
    initialized_shared()
    sd_models = host_import("modules.sd_models")
    try:
        return sd_models.CheckpointInfo(path)
    except Exception:  # noqa: BLE001 - hash cache / options of another host version
        return types.SimpleNamespace(filename=path)


def _host_config_path(checkpoint: str) -> str:
    sd_models_config = host_import("modules.sd_models_config")
    found = sd_models_config.find_checkpoint_config_near_filename(_checkpoint_info(checkpoint))
    assert found is not None, "the webui did not find the crafted YAML beside the checkpoint"
    return found


def _write_crafted(tmp_path, family: str, linear_end: float | None) -> str:
    """A v-pred checkpoint and its crafted YAML: the extension's auto path, or the core with an override."""
    path = str(tmp_path / f"{family}_v.safetensors")
    ckpt_factory.build_checkpoint(path, family, markers=("v_pred", "ztsnr"))
    if linear_end is None:
        assert pack("a1111_extension.checkpoints").write_yaml_if_needed(path) is not None
    else:
        sidecar_yaml = pack("vpred_core.checkpoints.sidecar_yaml")
        override = tmp_path / "override.yaml"
        override.write_text(yaml.safe_dump({"prediction": "v", "linear_end": linear_end}))
        assert sidecar_yaml.write_yaml_for_checkpoint(path, override_path=str(override)).status == sidecar_yaml.WRITTEN
    return path


def _shrunk_ldm_config(config_path: str):
    omegaconf = host_import("omegaconf")
    config = omegaconf.OmegaConf.load(config_path)
    params = config.model.params
    params.unet_config.params.update(TINY_UNET)
    params.first_stage_config.params.ddconfig.update(TINY_VAE)
    params.cond_stage_config = NO_TEXT_ENCODER
    return config


def _core_alphas(linear_end: float) -> torch.Tensor:
    return pack("vpred_core.sampling.schedules").ScheduleSpec(linear_end=linear_end).alphas_cumprod()


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("linear_end", [None, UPTRAIN_BETA_END])
def test_crafted_yaml_loads_ldm_model_as_vpred(tmp_path, family, linear_end):
    initialized_shared()  # modules.paths puts the host's repositories (ldm, sgm) on sys.path
    ldm_util = host_import("ldm.util")
    checkpoint = _write_crafted(tmp_path, family, linear_end)
    config = _shrunk_ldm_config(_host_config_path(checkpoint))
    model = ldm_util.instantiate_from_config(config.model)
    assert type(model).__name__ == "LatentDiffusion"
    assert model.parameterization == "v"
    expected = _core_alphas(linear_end or DEFAULT_BETA_END)
    diff = (model.alphas_cumprod.double() - expected).abs().max().item()
    assert diff < ALPHAS_ATOL, f"alphas_cumprod differs from the core's by {diff:g}"


@pytest.mark.parametrize("linear_end", [None, UPTRAIN_BETA_END])
def test_crafted_sdxl_yaml_denoiser_is_vscaling(tmp_path, linear_end):
    initialized_shared()
    sgm_util = host_import("sgm.util")
    scaling = host_import("sgm.modules.diffusionmodules.denoiser_scaling")
    omegaconf = host_import("omegaconf")
    checkpoint = _write_crafted(tmp_path, "sdxl", linear_end)
    config = omegaconf.OmegaConf.load(_host_config_path(checkpoint))
    assert config.model.target == "sgm.models.diffusion.DiffusionEngine"
    denoiser = sgm_util.instantiate_from_config(config.model.params.denoiser_config)
    assert isinstance(denoiser.scaling, scaling.VScaling)  # what sd_models_xl.extend_sdxl reads as "v"
    expected = _core_alphas(linear_end or DEFAULT_BETA_END)
    expected_sigmas = ((1 - expected) / expected).sqrt()
    torch.testing.assert_close(denoiser.sigmas.double(), expected_sigmas, rtol=SIGMAS_RTOL, atol=0)


# ---- issue 10 item 3: a YAML added / edited / removed after a first request is seen at once (A1111 request) ------

FRESH_STEPS = 4


def _write_yaml(checkpoint: str, directory, linear_end: float) -> str:
    sidecar_yaml = pack("vpred_core.checkpoints.sidecar_yaml")
    override = directory / "override.yaml"
    override.write_text(yaml.safe_dump({"prediction": "v", "linear_end": linear_end}))
    outcome = sidecar_yaml.write_yaml_for_checkpoint(checkpoint, override_path=str(override), force=True)
    assert outcome.status == sidecar_yaml.WRITTEN, outcome
    return outcome.yaml_path


def test_yaml_beside_the_checkpoint_is_read_again_for_every_request(tmp_path):
    """The model object stays loaded (the host reads a YAML only when it loads a checkpoint); the pack reads the
    checkpoint's statements per request, keyed on the checkpoint and the YAML beside it (size, mtime)."""
    if is_forge_family():
        pytest.skip("A1111 request (webui_a1111.py)")
    import os

    import webui_a1111

    _, data = load_vpred_script()
    models = webui_a1111.Models(str(tmp_path))
    try:
        model = models.make("later_yaml", ())
        webui_a1111.use_model(model)
        checkpoint = model.sd_checkpoint_info.filename

        def keys():
            result = webui_a1111.generate(data, webui_a1111.txt2img(model, "Euler", FRESH_STEPS), skip_decode=True)
            return result.vpred_keys()

        assert keys() == {}  # states nothing: the host alone
        written = _write_yaml(checkpoint, tmp_path, 0.0125)
        first = keys()
        assert (first["VPred prediction"], float(first["VPred linear end"])) == ("v", 0.0125)
        _write_yaml(checkpoint, tmp_path, 0.013)  # edited
        assert float(keys()["VPred linear end"]) == 0.013
        os.remove(written)
        assert keys() == {}
    finally:
        models.close()
