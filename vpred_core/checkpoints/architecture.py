"""Detect the model architecture from tensor names and shapes only (a data table, no weights read).

The UNet's cross-attention width (``attn2.to_k.weight`` shape[1]) gives the family (768 SD1, 1024 SD2,
2048 SDXL base, 1280 SDXL refiner), the first convolution's input channels give the variant (4 base,
9 inpainting, 8 instruct-pix2pix). Text-encoder keys tell a full checkpoint from a UNet-only file.
Anything that does not match gives an ``unknown`` result with the reason, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

UNKNOWN = "unknown"
VARIANT_BASE = "base"


@dataclass(frozen=True)
class UnetLayout:
    """Where a UNet's keys live: a prefix and the layout's key names."""

    name: str
    prefix: str
    conv_in: str
    cross_attn_keys: tuple[str, ...]
    adm_key: str


_LDM_CROSS = ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
              "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight")
_DIFFUSERS_CROSS = ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight")
LDM_CONV_IN = "input_blocks.0.0.weight"
LDM_ADM = "label_emb.0.0.weight"
DIFFUSERS_CONV_IN = "conv_in.weight"
DIFFUSERS_ADM = "add_embedding.linear_1.weight"

# Checked in order; the first whose conv_in key exists wins.
UNET_LAYOUTS = (
    UnetLayout("ldm checkpoint", "model.diffusion_model.", LDM_CONV_IN, _LDM_CROSS, LDM_ADM),
    UnetLayout("ldm unet", "", LDM_CONV_IN, _LDM_CROSS, LDM_ADM),
    UnetLayout("ldm unet", "diffusion_model.", LDM_CONV_IN, _LDM_CROSS, LDM_ADM),
    UnetLayout("diffusers unet", "", DIFFUSERS_CONV_IN, _DIFFUSERS_CROSS, DIFFUSERS_ADM),
    UnetLayout("diffusers unet", "unet.", DIFFUSERS_CONV_IN, _DIFFUSERS_CROSS, DIFFUSERS_ADM),
)
FULL_CHECKPOINT_LAYOUT = "ldm checkpoint"


@dataclass(frozen=True)
class FamilyRule:
    """One row of the family table: cross-attention width, optional ADM width, text-encoder key."""

    family: str
    context_dim: int
    adm_in_channels: int | None
    text_encoder_key: str
    description: str


FAMILY_TABLE = (
    FamilyRule("sd1", 768, None, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
               "Stable Diffusion 1.x"),
    FamilyRule("sd2", 1024, None, "cond_stage_model.model.token_embedding.weight",
               "Stable Diffusion 2.x (512 base and 768-v share this layout)"),
    FamilyRule("sdxl", 2048, 2816, "conditioner.embedders.1.model.token_embedding.weight", "SDXL base"),
    FamilyRule("sdxl_refiner", 1280, 2560, "conditioner.embedders.0.model.token_embedding.weight", "SDXL refiner"),
)
VARIANT_BY_IN_CHANNELS = {4: VARIANT_BASE, 9: "inpaint", 8: "instruct_pix2pix"}
VARIANT_DESCRIPTIONS = {VARIANT_BASE: "", "inpaint": " inpainting", "instruct_pix2pix": " instruct-pix2pix"}


@dataclass(frozen=True)
class Architecture:
    """Detected architecture; ``family == "unknown"`` when nothing matched (``reason`` says why)."""

    family: str = UNKNOWN
    variant: str = UNKNOWN
    unet_only: bool = False
    layout: str = UNKNOWN
    in_channels: int | None = None
    context_dim: int | None = None
    adm_in_channels: int | None = None
    description: str = "unknown architecture"
    reason: str = ""

    @property
    def id(self) -> str:
        """Short id such as ``sd1``, ``sdxl-inpaint`` or ``unknown``."""
        if self.family == UNKNOWN:
            return UNKNOWN
        return self.family if self.variant == VARIANT_BASE else f"{self.family}-{self.variant}"

    @property
    def known(self) -> bool:
        return self.family != UNKNOWN

    def to_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}


ShapeOf = Callable[[str], "tuple[int, ...] | None"]


def detect_architecture(shape_of: ShapeOf, names: list[str] | None = None) -> Architecture:
    """Detect from ``shape_of(name) -> shape | None``; ``names`` (all tensor names) enables a fallback scan."""
    layout = next((lay for lay in UNET_LAYOUTS if _matrix(shape_of(lay.prefix + lay.conv_in), 4)), None)
    if layout is None:
        return Architecture(reason="no UNet input convolution found (not a Stable Diffusion UNet checkpoint?)")
    in_channels = shape_of(layout.prefix + layout.conv_in)[1]
    context_dim = _context_dim(shape_of, layout, names)
    adm_shape = shape_of(layout.prefix + layout.adm_key)
    adm = adm_shape[1] if _matrix(adm_shape, 2) else None
    rule = next((r for r in FAMILY_TABLE if r.context_dim == context_dim and r.adm_in_channels == adm), None)
    unet_only = layout.name != FULL_CHECKPOINT_LAYOUT
    common = dict(layout=layout.name, unet_only=unet_only, in_channels=in_channels, context_dim=context_dim,
                  adm_in_channels=adm)
    if rule is None:
        return Architecture(**common, reason=f"no table row for cross-attention width {context_dim}, ADM {adm}")
    variant = VARIANT_BY_IN_CHANNELS.get(in_channels)
    if variant is None:
        return Architecture(**common, reason=f"{rule.description} UNet with unexpected {in_channels} input channels")
    description = rule.description + VARIANT_DESCRIPTIONS[variant] + (" (UNet only)" if unet_only else "")
    reason = ""
    if not unet_only and shape_of(rule.text_encoder_key) is None:
        reason = f"text encoder key {rule.text_encoder_key} not found (pruned or renamed checkpoint)"
    return Architecture(rule.family, variant, description=description, reason=reason, **common)


def _matrix(shape: tuple[int, ...] | None, min_dims: int) -> bool:
    return shape is not None and len(shape) >= min_dims


def _context_dim(shape_of: ShapeOf, layout: UnetLayout, names: list[str] | None) -> int | None:
    for key in layout.cross_attn_keys:
        shape = shape_of(layout.prefix + key)
        if _matrix(shape, 2):
            return shape[1]
    suffix = "attn2.to_k.weight"
    for name in names or ():
        if name.startswith(layout.prefix) and name.endswith(suffix):
            shape = shape_of(name)
            if _matrix(shape, 2):
                return shape[1]
    return None
