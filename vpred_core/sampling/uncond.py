"""Unconditional (negative) prompt modes for an empty negative prompt, as stable ids.

- ``host_default``: whatever the host does for "" (SD1/SD2 webuis and ComfyUI encode "" through CLIP; SDXL
  webuis zero the cross-attention and the pooled part of ``vector`` for an exactly empty negative).
- ``zero``: ComfyUI ``ConditioningZeroOut`` semantics: cross-attention context and pooled output zeroed,
  SDXL size/crop embeddings kept (in a webui ``vector`` only the first 1280 pooled dims are zeroed).
- ``comma``: encode "," instead, a non-empty token sequence many v-pred model cards recommend.
A non-empty negative prompt is never changed by any mode.
"""

from __future__ import annotations

import torch

UNCOND_MODE_IDS = ("host_default", "zero", "comma")
COMMA_NEGATIVE = ","
SDXL_POOLED_DIM = 1280


def validate_uncond_mode(mode: str) -> str:
    """Return ``mode`` if it is a known id, else raise ValueError."""
    if mode not in UNCOND_MODE_IDS:
        raise ValueError(f"uncond mode must be one of {UNCOND_MODE_IDS}, got {mode!r}")
    return mode


def is_empty_negative(text: str | None) -> bool:
    """True for None or a negative prompt that is empty after stripping whitespace."""
    return text is None or not text.strip()


def negative_text_for_mode(text: str | None, mode: str) -> str:
    """Text to encode for the negative: "," for ``comma`` on an empty negative, else the text itself ("" if None)."""
    validate_uncond_mode(mode)
    if mode == "comma" and is_empty_negative(text):
        return COMMA_NEGATIVE
    return "" if text is None else text


def should_zero_uncond(text: str | None, mode: str) -> bool:
    """True when the encoded negative must be zeroed (``zero`` mode and an empty negative)."""
    return validate_uncond_mode(mode) == "zero" and is_empty_negative(text)


def _zero_rows(tensor: torch.Tensor, rows: torch.Tensor | None, upto: int | None = None) -> torch.Tensor:
    out = tensor.clone()
    view = out[..., :upto] if upto is not None else out
    if rows is None:
        view.zero_()
    else:
        view[rows.to(device=tensor.device, dtype=torch.bool)] = 0
    return out


def zero_cross_attention(context: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Copy of the cross-attention tensor with every batch row (or the rows flagged in the boolean ``rows``)
    zeroed: ConditioningZeroOut for the cross-attention."""
    return _zero_rows(context, rows)


def zero_sdxl_vector(vector: torch.Tensor, pooled_dim: int = SDXL_POOLED_DIM,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    """Copy of an SDXL ``vector`` (B, 1280 + 6*256) with the pooled CLIP-G dims [..., :1280] zeroed (in every row,
    or the rows flagged in ``rows``) and the size/crop/target-size embeddings kept (what webuis do for an empty SDXL
    negative)."""
    if vector.shape[-1] < pooled_dim:
        raise ValueError(f"SDXL vector has {vector.shape[-1]} dims, fewer than the {pooled_dim} pooled dims")
    return _zero_rows(vector, rows, pooled_dim)
