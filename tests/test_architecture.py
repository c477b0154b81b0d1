"""Architecture detection from real key names/shapes, for every family, variant and layout."""

import pytest
from ckpt_factory import FAMILIES, build_checkpoint, write_safetensors

from vpred_core.checkpoints.architecture import FAMILY_TABLE, detect_architecture
from vpred_core.checkpoints.safetensors_header import read_header

VARIANTS = {"base": "", "inpaint": "-inpaint", "instruct_pix2pix": "-instruct_pix2pix"}


def _detect(path):
    header = read_header(path)
    return detect_architecture(header.shape, header.names)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_full_checkpoints(tmp_path, family, variant):
    arch = _detect(build_checkpoint(tmp_path / "m.safetensors", family, variant))
    assert arch.id == family + VARIANTS[variant]
    assert not arch.unet_only and arch.reason == "" and arch.layout == "ldm checkpoint"


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_unet_only_files(tmp_path, family, layout):
    arch = _detect(build_checkpoint(tmp_path / "u.safetensors", family, unet_only=True, layout=layout))
    assert arch.id == family and arch.unet_only and "UNet only" in arch.description


def test_table_is_data_and_complete():
    assert {rule.family for rule in FAMILY_TABLE} == set(FAMILIES)
    assert len({(rule.context_dim, rule.adm_in_channels) for rule in FAMILY_TABLE}) == len(FAMILY_TABLE)


def test_sd2_description_mentions_768v(tmp_path):
    arch = _detect(build_checkpoint(tmp_path / "m.safetensors", "sd2"))
    assert "768-v" in arch.description


@pytest.mark.parametrize("tensors, reason", [
    ({}, "no UNet input convolution"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": ("F16", [4, 320])}, "no UNet"),
    ({"encoder.conv_in.weight": ("F16", [128, 3, 3, 3]), "decoder.conv_in.weight": ("F16", [512, 4, 3, 3])},
     "no UNet"),
    ({"model.diffusion_model.input_blocks.0.0.weight": ("F16", [320, 4, 3, 3]),
      "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": ("F16", [320, 4096])},
     "no table row for cross-attention width 4096"),
    ({"model.diffusion_model.input_blocks.0.0.weight": ("F16", [320, 5, 3, 3]),
      "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": ("F16", [320, 768])},
     "unexpected 5 input channels"),
    ({"model.diffusion_model.input_blocks.0.0.weight": ("F16", [320]),}, "no UNet input convolution"),
    ({"model.diffusion_model.x_embedder.proj.weight": ("F16", [1536, 16, 2, 2])}, "no UNet"),
])
def test_unknown_is_a_result_not_a_crash(tmp_path, tensors, reason):
    arch = _detect(write_safetensors(tmp_path / "x.safetensors", tensors))
    assert arch.id == "unknown" and not arch.known and reason in arch.reason


def test_cross_attention_found_by_scan_when_block_index_differs(tmp_path):
    tensors = {"model.diffusion_model.input_blocks.0.0.weight": ("F16", [320, 4, 3, 3]),
               "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": ("F16", [320, 768])}
    arch = _detect(write_safetensors(tmp_path / "x.safetensors", tensors))
    assert arch.family == "sd1" and "text encoder" in arch.reason


def test_to_dict_has_id(tmp_path):
    data = _detect(build_checkpoint(tmp_path / "m.safetensors", "sdxl", "inpaint")).to_dict()
    assert data["id"] == "sdxl-inpaint" and data["in_channels"] == 9 and data["context_dim"] == 2048
