"""Negative-prompt nodes with an explicit mode for an empty negative (zero / comma / host_default)."""

from __future__ import annotations

import torch

from ..vpred_core.sampling.uncond import (
    UNCOND_MODE_IDS,
    negative_text_for_mode,
    should_zero_uncond,
    validate_uncond_mode,
    zero_cross_attention,
)
from .common import CATEGORY, combo, display_name, node_id

# Tensors in a conditioning entry's options dict that ConditioningZeroOut zeroes besides the cross-attention.
ZEROED_OPTION_KEYS = ("pooled_output", "conditioning_lyrics")
MODE_TOOLTIP = ("What an EMPTY negative becomes: zero = zeroed conditioning (ConditioningZeroOut), comma = encode "
                "',', host_default = encode '' as ComfyUI does. A non-empty negative is always encoded as written.")
CONDITIONING_TOOLTIP = "The negative (unconditional) conditioning for the sampler."


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


class NegativePrompt:
    """CLIP Text Encode for the negative prompt, with an explicit empty-negative mode."""

    NODE_ID = node_id("NegativePrompt")
    DISPLAY_NAME = display_name("Negative Prompt (uncond mode)")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("negative",)
    OUTPUT_TOOLTIPS = (CONDITIONING_TOOLTIP,)
    FUNCTION = "encode"
    DESCRIPTION = ("Encodes a negative prompt. When it is empty, 'mode' picks the unconditional input many "
                   "v-pred/ZTSNR models are sensitive to: zeroed conditioning, ',' or ComfyUI's encoded ''.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The CLIP text encoder."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                "tooltip": "Negative prompt; leave empty to use the mode."}),
            "mode": combo(UNCOND_MODE_IDS, "zero", MODE_TOOLTIP),
        }}

    def encode(self, clip, text, mode):
        return (negative_conditioning(clip, text, mode),)


class UncondMode:
    """Apply an uncond mode to an existing (empty-prompt) negative CONDITIONING."""

    NODE_ID = node_id("UncondMode")
    DISPLAY_NAME = display_name("Uncond Mode (conditioning)")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("negative",)
    OUTPUT_TOOLTIPS = (CONDITIONING_TOOLTIP,)
    FUNCTION = "apply"
    DESCRIPTION = ("Treats the incoming CONDITIONING as the encoding of an empty negative and replaces it per mode: "
                   "zero = ConditioningZeroOut, comma = re-encode ',' with the CLIP input (required for comma), "
                   "host_default = pass through unchanged.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING", {"tooltip": "Negative conditioning of an empty prompt."}),
                "mode": combo(UNCOND_MODE_IDS, "zero", MODE_TOOLTIP),
            },
            "optional": {"clip": ("CLIP", {"tooltip": "Text encoder, needed only for mode 'comma'."})},
        }

    def apply(self, conditioning, mode, clip=None):
        validate_uncond_mode(mode)
        if should_zero_uncond("", mode):
            return (zero_conditioning(conditioning),)
        if mode == "host_default":
            return (conditioning,)
        if clip is None:
            raise ValueError("uncond mode 'comma' needs the clip input to encode ','")
        return (encode_text(clip, negative_text_for_mode("", mode)),)
