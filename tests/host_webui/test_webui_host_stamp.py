"""A checkpoint stamped by ``python -m vpred_core stamp`` is detected by the webuis' own loaders, without the
extension and without a YAML beside it (``WEBUI_PATH``): A1111 dev, reForge, Forge. Each test first checks the
unstamped file is detected as eps, so a stamp that wrote nothing would fail.

- A1111 dev: ``sd_models.read_state_dict`` + ``sd_models_config.find_checkpoint_config`` (``v_pred`` ->
  ``configs/sd_xl_v.yaml``, whose denoiser is VScaling) and ``apply_alpha_schedule_override`` on a model whose
  ``ztsnr`` is set the way ``load_model_weights`` sets it (``'ztsnr' in state_dict``). A1111 v1.8 / v1.10 read no
  marker (skipped with the reason).
- reForge: ``modules_forge.forge_loader.load_checkpoint_guess_config`` (ldm_patched, ComfyUI's detection) ->
  V_PREDICTION with the ZTSNR schedule (sigma_max 4518.76), and the ``ztsnr`` key ``load_model_for_a1111`` reads.
- Forge: ``backend.loader.split_state_dict`` (huggingface_guess) -> ``model_type`` V_PREDICTION, ``ztsnr`` True.

reForge and Forge detect SDXL from the UNet structure, so their file has the keys of the host's own UNet class built
on the meta device with what the SDXL match looks at (320 channels, context 2048, ADM 2816, linear transformers,
transformer_depth [0, 0, 2, 2, 10, 10]), shrunk elsewhere; A1111 dev needs only ``ckpt_factory``'s SDXL keys."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import types

import pytest
import torch
from webui_host_env import (
    ROOT,
    WEBUI_PATH,
    ZTSNR_SIGMA_MAX,
    host_import,
    initialize_forge_backend,
    initialized_shared,
    is_forge_family,
)

pytestmark = [pytest.mark.host, pytest.mark.skipif(not WEBUI_PATH, reason="WEBUI_PATH is not set (no webui tree)")]
ckpt_factory = pytest.importorskip("ckpt_factory")

SD_SIGMA_MAX = 14.6146
SIGMA_RTOL = 1e-3
UNET_PREFIX = "model.diffusion_model."
DTYPE_NAMES = {torch.float16: "F16", torch.float32: "F32"}
V_ZTSNR = ("--prediction", "v", "--ztsnr", "on")
TINY_SDXL_UNET = dict(
    in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2], channel_mult=[1, 1, 1],
    transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=1,
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1], context_dim=2048, adm_in_channels=2816,
    num_classes="sequential", use_linear_in_transformer=True, num_head_channels=64, use_spatial_transformer=True,
)
LDM_PATCHED_EXTRA = dict(image_size=32, use_checkpoint=False, legacy=False, use_temporal_attention=False,
                         use_temporal_resblock=False)
LOAD_MODEL_WEIGHTS_ZTSNR = "'ztsnr' in state_dict"


def stamp(path, *argv) -> str:
    """``python -m vpred_core stamp`` as a user runs it (this interpreter, the repository on PYTHONPATH)."""
    proc = subprocess.run([sys.executable, "-m", "vpred_core", "stamp", str(path), *argv], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def write_unet_checkpoint(path, unet: torch.nn.Module):
    """A sparse zero checkpoint with the tensor names and shapes of ``unet`` (built on the meta device)."""
    table = {UNET_PREFIX + name: (DTYPE_NAMES[t.dtype], list(t.shape)) for name, t in unet.state_dict().items()}
    return ckpt_factory.write_safetensors(path, table)


# --------------------------------------------------------------------------------------------- A1111 dev


@pytest.fixture(scope="module")
def a1111_dev():
    if is_forge_family():
        pytest.skip("not an A1111 tree (reForge / Forge: tested below)")
    initialized_shared()
    config = host_import("modules.sd_models_config")
    if not hasattr(config, "config_sdxlv"):
        pytest.skip("this A1111 reads no v_pred marker (A1111 dev does: sd_models_config.config_sdxlv)")
    return types.SimpleNamespace(config=config, sd_models=host_import("modules.sd_models"),
                                 shared=host_import("modules.shared"))


def a1111_config_for(a1111_dev, path) -> tuple[str, dict]:
    """What ``load_model`` does first: the host's reader, then its config lookup (no YAML is beside the file)."""
    state_dict = a1111_dev.sd_models.read_state_dict(str(path), map_location="cpu")
    info = types.SimpleNamespace(filename=str(path))
    return a1111_dev.config.find_checkpoint_config(state_dict, info), state_dict


def test_a1111_dev_detects_stamped_sdxl_as_v(a1111_dev, tmp_path):
    path = ckpt_factory.build_checkpoint(tmp_path / "sdxl.safetensors", "sdxl")
    assert a1111_config_for(a1111_dev, path)[0] == a1111_dev.config.config_sdxl
    stamp(path, *V_ZTSNR)
    found, _ = a1111_config_for(a1111_dev, path)
    assert found == a1111_dev.config.config_sdxlv
    omegaconf, sgm_util = host_import("omegaconf"), host_import("sgm.util")
    scaling = host_import("sgm.modules.diffusionmodules.denoiser_scaling")
    denoiser = sgm_util.instantiate_from_config(omegaconf.OmegaConf.load(found).model.params.denoiser_config)
    assert isinstance(denoiser.scaling, scaling.VScaling)


def test_a1111_dev_applies_ztsnr_of_a_stamped_file(a1111_dev, tmp_path):
    from vpred_core.sampling.schedules import ScheduleSpec

    assert LOAD_MODEL_WEIGHTS_ZTSNR in inspect.getsource(a1111_dev.sd_models.load_model_weights)
    path = ckpt_factory.build_checkpoint(tmp_path / "sdxl.safetensors", "sdxl")
    for argv, sigma_max in (((), SD_SIGMA_MAX), (V_ZTSNR, ZTSNR_SIGMA_MAX)):
        if argv:
            stamp(path, *argv)
        _, state_dict = a1111_config_for(a1111_dev, path)
        alphas = ScheduleSpec().alphas_cumprod().float()
        model = types.SimpleNamespace(alphas_cumprod=alphas, alphas_cumprod_original=alphas,
                                      ztsnr="ztsnr" in state_dict)  # as load_model_weights sets it
        a1111_dev.sd_models.apply_alpha_schedule_override(model)
        terminal = model.alphas_cumprod[-1].double()
        assert ((1 - terminal) / terminal).sqrt().item() == pytest.approx(sigma_max, rel=SIGMA_RTOL)


# --------------------------------------------------------------------------------------------- reForge


@pytest.fixture(scope="module")
def reforge():
    if not is_forge_family():
        pytest.skip("not a reForge tree (no modules_forge)")
    initialized_shared()
    loader = host_import("modules_forge.forge_loader")
    if not hasattr(loader, "load_checkpoint_guess_config"):
        pytest.skip("not a reForge tree (no modules_forge.forge_loader.load_checkpoint_guess_config)")
    return types.SimpleNamespace(loader=loader, sd_models=host_import("modules.sd_models"),
                                 ops=host_import("ldm_patched.modules.ops"),
                                 openaimodel=host_import("ldm_patched.ldm.modules.diffusionmodules.openaimodel"))


def reforge_checkpoint(reforge, path):
    with torch.device("meta"):
        unet = reforge.openaimodel.UNetModel(**TINY_SDXL_UNET, **LDM_PATCHED_EXTRA, dtype=torch.float16,
                                             device="meta", operations=reforge.ops.disable_weight_init)
    return write_unet_checkpoint(path, unet)


def reforge_loads(reforge, path) -> tuple[str, float, bool]:
    """(model type, sigma_max) of what reForge's loader builds, and the ``ztsnr`` flag load_model_for_a1111 reads."""
    forge_sd = reforge.loader.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False)
    model = forge_sd.unet.model
    state_dict = reforge.sd_models.read_state_dict(str(path), map_location="cpu")
    return model.model_type.name, float(model.model_sampling.sigma_max), "ztsnr" in state_dict


def test_reforge_loads_stamped_sdxl_as_v_prediction_with_ztsnr(reforge, tmp_path):
    assert LOAD_MODEL_WEIGHTS_ZTSNR in inspect.getsource(reforge.loader.load_model_for_a1111)
    path = reforge_checkpoint(reforge, tmp_path / "tiny_sdxl.safetensors")
    model_type, sigma_max, ztsnr = reforge_loads(reforge, path)
    assert (model_type, ztsnr) == ("EPS", False)
    assert sigma_max == pytest.approx(SD_SIGMA_MAX, rel=SIGMA_RTOL)
    stamp(path, *V_ZTSNR)
    model_type, sigma_max, ztsnr = reforge_loads(reforge, path)
    assert (model_type, ztsnr) == ("V_PREDICTION", True)
    assert sigma_max == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_RTOL)


# --------------------------------------------------------------------------------------------- Forge


@pytest.fixture(scope="module")
def forge():
    if host_import("importlib.util").find_spec("backend") is None:
        pytest.skip("not a Forge tree (no backend package)")
    initialize_forge_backend()
    host_import("modules.paths")  # puts repositories/huggingface_guess on sys.path
    return types.SimpleNamespace(loader=host_import("backend.loader"), unet=host_import("backend.nn.unet"))


def test_forge_detects_stamped_sdxl_as_v_prediction_with_ztsnr(forge, tmp_path):
    with torch.device("meta"):
        unet = forge.unet.IntegratedUNet2DConditionModel(**TINY_SDXL_UNET)
    path = write_unet_checkpoint(tmp_path / "tiny_sdxl.safetensors", unet.half())
    _, guess = forge.loader.split_state_dict(str(path))
    assert (type(guess).__name__, guess.model_type.name, guess.ztsnr) == ("SDXL", "EPS", False)
    stamp(path, *V_ZTSNR)
    _, guess = forge.loader.split_state_dict(str(path))
    assert (guess.model_type.name, guess.ztsnr) == ("V_PREDICTION", True)
