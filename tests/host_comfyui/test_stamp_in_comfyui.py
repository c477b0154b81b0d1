"""A checkpoint stamped by ``python -m vpred_core stamp`` loads through ComfyUI's own ``CheckpointLoaderSimple``
(the pack's loader is not involved) with the model sampling the stamp states (``COMFYUI_PATH``; skipped otherwise).

ComfyUI reads the ``v_pred`` / ``ztsnr`` markers for SDXL only (``comfy/supported_models.py`` ``SDXL.model_type``),
so the file is SDXL-keyed: tensor names and shapes of ComfyUI's own ``UNetModel`` built on the meta device with what
ComfyUI's detection matches as SDXL (``SDXL.unet_config``: 320 channels, context 2048, ADM 2816, linear transformers,
transformer_depth [0, 0, 2, 2, 10, 10]) and shrunk where the match does not look (channel_mult [1, 1, 1], one
transformer block in the middle and output blocks): ~160M parameters, written as a sparse zero file. The VAE is
TAESD's keys; there is no text encoder (ComfyUI then loads no CLIP)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from comfy_host_env import REPO_ROOT

pytestmark = pytest.mark.host
ckpt_factory = pytest.importorskip("ckpt_factory")

ZTSNR_SIGMA_MAX = 4518.76
SD_SIGMA_MAX = 14.6146
SIGMA_RTOL = 1e-3
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
DTYPE_NAMES = {torch.float16: "F16", torch.float32: "F32"}
# Matched by comfy.supported_models.SDXL: model_channels, use_linear_in_transformer, transformer_depth, context_dim,
# adm_in_channels, use_temporal_attention. Everything else is shrunk.
SDXL_DETECTED_TINY_UNET = dict(
    use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=320,
    num_res_blocks=[2, 2, 2], channel_mult=[1, 1, 1], transformer_depth=[0, 0, 2, 2, 10, 10],
    transformer_depth_middle=1, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1], context_dim=2048,
    adm_in_channels=2816, num_classes="sequential", use_linear_in_transformer=True, num_head_channels=64,
    use_spatial_transformer=True, legacy=False, use_temporal_attention=False, use_temporal_resblock=False,
)
V_ZTSNR = ("--prediction", "v", "--ztsnr", "on")
V_ONLY = ("--prediction", "v", "--ztsnr", "off")
EPS = ("--prediction", "eps", "--ztsnr", "off")


def tensor_table(module: torch.nn.Module, prefix: str) -> dict[str, tuple[str, list[int]]]:
    return {prefix + name: (DTYPE_NAMES[t.dtype], list(t.shape)) for name, t in module.state_dict().items()}


@pytest.fixture(scope="module")
def sdxl_tensors(comfy_nodes) -> dict[str, tuple[str, list[int]]]:
    """Names, dtypes and shapes of an SDXL-detected checkpoint, from ComfyUI's own modules (meta device)."""
    import comfy.ops
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**SDXL_DETECTED_TINY_UNET, dtype=torch.float16, device="meta",
                         operations=comfy.ops.disable_weight_init)
        vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    return {**tensor_table(unet, UNET_PREFIX), **tensor_table(vae.half(), VAE_PREFIX)}


@pytest.fixture()
def checkpoint(tmp_path, sdxl_tensors, comfy_nodes):
    """An unstamped SDXL-keyed checkpoint in a folder ComfyUI lists as ``checkpoints``; the name is unique to the
    test (ComfyUI resolves a name in the first listed folder that has it), the folder is unlisted afterwards."""
    import folder_paths

    folder_paths.add_model_folder_path("checkpoints", str(tmp_path))
    yield ckpt_factory.write_safetensors(tmp_path / f"{tmp_path.name}.safetensors", sdxl_tensors)
    folder_paths.folder_names_and_paths["checkpoints"][0].remove(str(tmp_path))


def stamp(path, *argv) -> str:
    """``python -m vpred_core stamp`` as a user runs it (this interpreter, the repository on PYTHONPATH)."""
    proc = subprocess.run([sys.executable, "-m", "vpred_core", "stamp", str(path), *argv], cwd=REPO_ROOT,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def load_with_comfyui(nodes, path):
    """ComfyUI's built-in CheckpointLoaderSimple: (model type, model_sampling) of the loaded MODEL."""
    model, clip, vae = nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]().load_checkpoint(path.name)
    assert clip is None and vae is not None
    return model.model.model_type.name, model.get_model_object("model_sampling")


def test_unstamped_sdxl_loads_as_eps(comfy_nodes, checkpoint):
    """The control: without markers ComfyUI loads the same file as EPS with the standard schedule."""
    model_type, sampling = load_with_comfyui(comfy_nodes, checkpoint)
    assert model_type == "EPS"
    assert float(sampling.sigma_max) == pytest.approx(SD_SIGMA_MAX, rel=SIGMA_RTOL)


def test_stamped_v_ztsnr_loads_as_v_prediction_with_zsnr(comfy_nodes, checkpoint):
    import comfy.model_sampling

    assert "file rewritten" in stamp(checkpoint, *V_ZTSNR)
    model_type, sampling = load_with_comfyui(comfy_nodes, checkpoint)
    assert model_type == "V_PREDICTION" and isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    assert float(sampling.sigma_max) == pytest.approx(ZTSNR_SIGMA_MAX, rel=SIGMA_RTOL)


def test_in_place_restamps_load_as_stated(comfy_nodes, checkpoint):
    """v + ZTSNR (rewrite), then v only, eps, v + ZTSNR again: in place, each loads as stamped."""
    stamp(checkpoint, *V_ZTSNR)
    for argv, model_type, sigma_max in ((V_ONLY, "V_PREDICTION", SD_SIGMA_MAX), (EPS, "EPS", SD_SIGMA_MAX),
                                         (V_ZTSNR, "V_PREDICTION", ZTSNR_SIGMA_MAX)):
        assert "in place" in stamp(checkpoint, *argv)
        loaded_type, sampling = load_with_comfyui(comfy_nodes, checkpoint)
        assert loaded_type == model_type, argv
        assert float(sampling.sigma_max) == pytest.approx(sigma_max, rel=SIGMA_RTOL), argv


def test_stamped_copy_with_out_loads_and_the_original_does_not_change(comfy_nodes, checkpoint):
    out = checkpoint.with_name(f"{checkpoint.stem}_v.safetensors")
    stamp(checkpoint, *V_ZTSNR, "--out", str(out))
    assert load_with_comfyui(comfy_nodes, out)[0] == "V_PREDICTION"
    assert load_with_comfyui(comfy_nodes, checkpoint)[0] == "EPS"
