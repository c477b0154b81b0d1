"""Build real ``.safetensors`` files with the key names and shapes of each Stable Diffusion architecture.

The header is written exactly as the safetensors format defines it (8-byte little-endian length, JSON,
8-byte-aligned padding with spaces) and the data region is extended with ``truncate``: a sparse file whose
tensors are all zeros. The files load with ``safetensors`` itself; large ones cost no disk space.

Public API (other tests may import it):
- ``write_safetensors(path, tensors, metadata=None) -> Path`` with ``tensors = {name: (dtype, shape)}``
- ``checkpoint_tensors(family, variant="base", layout="ldm", unet_only=False, blocks=0) -> dict``
- ``build_checkpoint(path, family, variant="base", *, layout="ldm", unet_only=False, markers=(), metadata=None,
  blocks=0) -> Path``
- ``real_checkpoint_tensors(kind, ema=False) -> dict``: every tensor of a real SD1.5 / SDXL checkpoint
  (``REAL_KINDS``), from ``data/checkpoint_keys.json.gz`` (see its ``provenance``); ``ema`` adds the EMA copy
  of the UNet that full SD1.x training checkpoints carry.
- ``save_torch_checkpoint(path, tensors) -> Path``: the same table as a real ``torch.save`` zip, saved the way
  Lightning saves (``{"state_dict": module.state_dict(), "global_step", "epoch"}``, with the state dict's
  ``_metadata``); tensors are stride-0 views, so the file is small while its pickle is full size.
- ``FAMILIES``, ``VARIANT_IN_CHANNELS``, ``DTYPE_BYTES``
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import struct
from collections import OrderedDict
from pathlib import Path

DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "U8": 1, "BOOL": 1}
HEADER_ALIGN = 8
VARIANT_IN_CHANNELS = {"base": 4, "inpaint": 9, "instruct_pix2pix": 8}

# family: (context_dim, adm_in_channels, model_channels, cross-attn block (ldm, diffusers), text-encoder keys)
FAMILIES = {
    "sd1": dict(context=768, adm=None, channels=320, ldm_block="input_blocks.1.1", diff_block="down_blocks.0",
                text={"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768]}),
    "sd2": dict(context=1024, adm=None, channels=320, ldm_block="input_blocks.1.1", diff_block="down_blocks.0",
                text={"cond_stage_model.model.token_embedding.weight": [49408, 1024],
                      "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": [3072, 1024]}),
    "sdxl": dict(context=2048, adm=2816, channels=320, ldm_block="input_blocks.4.1", diff_block="down_blocks.1",
                 text={"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
                       "conditioner.embedders.1.model.token_embedding.weight": [49408, 1280],
                       "conditioner.embedders.1.model.ln_final.weight": [1280]}),
    "sdxl_refiner": dict(context=1280, adm=2560, channels=384, ldm_block="input_blocks.4.1",
                         diff_block="down_blocks.1",
                         text={"conditioner.embedders.0.model.token_embedding.weight": [49408, 1280],
                               "conditioner.embedders.0.model.ln_final.weight": [1280]}),
}
VAE_TENSORS = {"first_stage_model.decoder.conv_in.weight": [512, 4, 3, 3],
               "first_stage_model.encoder.conv_in.weight": [128, 3, 3, 3]}


def write_safetensors(path: str | Path, tensors: dict[str, tuple[str, list[int]]],
                      metadata: dict[str, str] | None = None) -> Path:
    """Write a valid safetensors file whose (zero) data region is sparse."""
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % HEADER_ALIGN)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        handle.truncate(8 + len(raw) + offset)
    return path


def _unet_tensors(family: str, variant: str, layout: str, prefix: str, blocks: int) -> dict[str, list[int]]:
    spec = FAMILIES[family]
    ch, ctx, in_ch = spec["channels"], spec["context"], VARIANT_IN_CHANNELS[variant]
    width = ch if spec["ldm_block"].startswith("input_blocks.1") else ch * 2
    time_dim = ch * 4
    if layout == "ldm":
        out = {"input_blocks.0.0.weight": [ch, in_ch, 3, 3], "input_blocks.0.0.bias": [ch],
               "time_embed.0.weight": [time_dim, ch], "out.2.weight": [4, ch, 3, 3]}
        attn = f"{spec['ldm_block']}.transformer_blocks.0"
        if spec["adm"]:
            out["label_emb.0.0.weight"] = [time_dim, spec["adm"]]
    else:
        out = {"conv_in.weight": [ch, in_ch, 3, 3], "conv_in.bias": [ch],
               "time_embedding.linear_1.weight": [time_dim, ch], "conv_out.weight": [4, ch, 3, 3]}
        attn = f"{spec['diff_block']}.attentions.0.transformer_blocks.0"
        if spec["adm"]:
            out["add_embedding.linear_1.weight"] = [time_dim, spec["adm"]]
    out.update({f"{attn}.attn1.to_q.weight": [width, width], f"{attn}.attn2.to_q.weight": [width, width],
                f"{attn}.attn2.to_k.weight": [width, ctx], f"{attn}.attn2.to_v.weight": [width, ctx]})
    for index in range(blocks):  # filler blocks: realistic header sizes (an SDXL checkpoint has ~2500 tensors)
        for part in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "ff.net.2", "norm1", "norm2"):
            out[f"extra_blocks.{index}.transformer_blocks.0.{part}.weight"] = [width] if "norm" in part else [width,
                                                                                                              width]
    return {prefix + name: shape for name, shape in out.items()}


def checkpoint_tensors(family: str, variant: str = "base", layout: str = "ldm", unet_only: bool = False,
                       blocks: int = 0, dtype: str = "F16") -> dict[str, tuple[str, list[int]]]:
    """Tensor table (name -> (dtype, shape)) of a checkpoint of ``family`` / ``variant``."""
    if family not in FAMILIES or variant not in VARIANT_IN_CHANNELS:
        raise ValueError(f"unknown family/variant {family}/{variant}")
    if layout == "diffusers" and not unet_only:
        raise ValueError("the diffusers layout exists only for UNet-only files here")
    prefix = "" if unet_only else "model.diffusion_model."
    shapes = _unet_tensors(family, variant, layout, prefix, blocks)
    if not unet_only:
        shapes.update(FAMILIES[family]["text"])
        shapes.update(VAE_TENSORS)
    return {name: (dtype, shape) for name, shape in shapes.items()}


def build_checkpoint(path: str | Path, family: str, variant: str = "base", *, layout: str = "ldm",
                     unet_only: bool = False, markers: tuple[str, ...] = (), metadata: dict[str, str] | None = None,
                     blocks: int = 0) -> Path:
    """Write a checkpoint of ``family``/``variant``; ``markers`` adds empty tensors such as ``v_pred``/``ztsnr``."""
    tensors = checkpoint_tensors(family, variant, layout, unet_only, blocks)
    for marker in markers:
        tensors[marker] = ("F32", [0])
    return write_safetensors(path, tensors, metadata)


REAL_TABLES = Path(__file__).parent / "data" / "checkpoint_keys.json.gz"
REAL_KINDS = ("sd15", "sdxl")
UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."  # ldm's LitEma: the UNet's names without dots, plus decay and num_updates


@functools.cache
def _real_tables() -> dict:
    with gzip.open(REAL_TABLES, "rt", encoding="utf-8") as handle:
        return json.load(handle)["tables"]


def real_checkpoint_tensors(kind: str, ema: bool = False) -> dict[str, tuple[str, list[int]]]:
    """Every tensor (name -> (dtype, shape)) of a real ``kind`` checkpoint, in file order."""
    tensors = {name: (dtype, list(shape)) for name, dtype, shape in _real_tables()[kind]}
    if ema:
        for name, spec in list(tensors.items()):
            if name.startswith(UNET_PREFIX):
                tensors[EMA_PREFIX + name[len("model."):].replace(".", "")] = spec
        tensors[EMA_PREFIX + "decay"] = ("F32", [])
        tensors[EMA_PREFIX + "num_updates"] = ("I64", [])
    return tensors


def save_torch_checkpoint(path: str | Path, tensors: dict[str, tuple[str, list[int]]]) -> Path:
    """``torch.save`` a Lightning-style checkpoint of ``tensors`` (a real zip checkpoint, small on disk)."""
    import torch

    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "U8": torch.uint8, "BOOL": torch.bool}
    state: OrderedDict = OrderedDict()
    for name, (dtype, shape) in tensors.items():
        zero = torch.zeros((), dtype=dtypes[dtype])
        state[name] = zero.expand(*shape) if shape else zero
    modules = {""}
    for name in tensors:
        parts = name.split(".")[:-1]
        modules.update(".".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    state._metadata = OrderedDict((module, {"version": 1}) for module in sorted(modules))  # what state_dict() adds
    torch.save({"state_dict": state, "global_step": 840_000, "epoch": 5}, path)
    return Path(path)
