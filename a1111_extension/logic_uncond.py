"""Host-free empty-negative handling for the webui: "," rewriting and zeroing of uncond rows."""

from __future__ import annotations

import torch

from vpred_core.sampling.uncond import SDXL_POOLED_DIM, is_empty_negative, negative_text_for_mode, should_zero_uncond

CROSSATTN_KEY = "crossattn"
VECTOR_KEY = "vector"


def rewrite_negatives(prompts: list[str] | None, mode: str) -> list[str] | None:
    """Negative prompts with empty entries replaced by "," in ``comma`` mode (others unchanged)."""
    if prompts is None:
        return None
    return [negative_text_for_mode(text, mode) for text in prompts]


def rows_to_zero(prompts: list[str] | None, mode: str) -> list[bool]:
    """Per-image flags: True where the negative is empty and the mode is ``zero``."""
    return [should_zero_uncond(text, mode) for text in (prompts or [])]


def _zero_rows(tensor: torch.Tensor, mask: torch.Tensor, upto: int | None = None) -> torch.Tensor:
    out = tensor.clone()
    view = out[..., :upto] if upto is not None else out
    view[mask] = 0
    return out


def zero_uncond_rows(uncond, rows: list[bool]):
    """Uncond batch with the flagged rows zeroed: a tensor (SD1/SD2 cross-attention) entirely; a dict (SDXL) in
    ``crossattn`` and the first 1280 pooled dims of ``vector`` only, keeping the size/crop embeddings.
    Returns ``uncond`` unchanged when no row is flagged or the batch size does not match."""
    if not any(rows):
        return uncond
    tensor = uncond[CROSSATTN_KEY] if isinstance(uncond, dict) else uncond
    if tensor.shape[0] != len(rows):
        return uncond
    mask = torch.tensor(rows, device=tensor.device)
    if not isinstance(uncond, dict):
        return _zero_rows(uncond, mask)
    out = type(uncond)(uncond) if type(uncond) is dict else _copy_dict_like(uncond)
    out[CROSSATTN_KEY] = _zero_rows(uncond[CROSSATTN_KEY], mask)
    if VECTOR_KEY in uncond:
        out[VECTOR_KEY] = _zero_rows(uncond[VECTOR_KEY], mask, SDXL_POOLED_DIM)
    return out


def _copy_dict_like(uncond):
    """Copy of a dict subclass (A1111's DictWithShape keeps a ``shape``)."""
    try:
        return type(uncond)(dict(uncond), uncond.shape)
    except (TypeError, AttributeError):
        return dict(uncond)


def any_empty(prompts: list[str] | None) -> bool:
    return any(is_empty_negative(text) for text in (prompts or []))
