"""What an empty negative prompt becomes in ComfyUI (zero / comma / host_default; the decision is the core's)."""

from __future__ import annotations

import torch

from ..vpred_core.sampling.uncond import (
    negative_text_for_mode,
    should_zero_uncond,
    validate_uncond_mode,
    zero_cross_attention,
)

# Tensors in a conditioning entry's options dict that ConditioningZeroOut zeroes besides the cross-attention.
ZEROED_OPTION_KEYS = ("pooled_output", "conditioning_lyrics")


def zero_conditioning(conditioning: list) -> list:
    """ConditioningZeroOut semantics: cross-attention and pooled output zeroed, other options (e.g. SDXL width,
    height, crops) kept; returns new entries and never mutates the input."""
    out = []
    for context, options in conditioning:
        options = options.copy()
        for key in ZEROED_OPTION_KEYS:
            if isinstance(options.get(key), torch.Tensor):
                options[key] = torch.zeros_like(options[key])
        out.append([zero_cross_attention(context), options])
    return out


def encode_text(clip, text: str) -> list:
    """CLIPTextEncode: tokenize and encode with the clip's scheduled hooks."""
    if clip is None:
        raise RuntimeError("clip input is None: the checkpoint has no text encoder")
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def negative_conditioning(clip, text: str, mode: str) -> list:
    """Encode a negative prompt with the uncond mode applied (core decides the text and whether to zero)."""
    conditioning = encode_text(clip, negative_text_for_mode(text, mode))
    return zero_conditioning(conditioning) if should_zero_uncond(text, mode) else conditioning


def apply_uncond_mode(conditioning: list, mode: str, clip=None) -> list:
    """Treat ``conditioning`` as the encoding of an empty negative and replace it per mode: zero =
    ConditioningZeroOut, comma = encode ',' with ``clip`` (required), host_default = unchanged (the same object)."""
    validate_uncond_mode(mode)
    if should_zero_uncond("", mode):
        return zero_conditioning(conditioning)
    if mode == "host_default":
        return conditioning
    if clip is None:
        raise ValueError("uncond mode 'comma' needs the clip input to encode ','")
    return encode_text(clip, negative_text_for_mode("", mode))
