"""Tiny SD1.x-style models built from ComfyUI's own classes, for host tests (imported only inside ComfyUI)."""

from __future__ import annotations

import torch

SEED = 1234
INIT_STD = 0.02
TINY_CHANNELS = 32
TINY_CONTEXT_DIM = 32
TINY_HEADS = 4
# SD15 detection in comfy/supported_models.py matches these exact values.
SD15_CHANNELS = 320
SD15_CONTEXT_DIM = 768
SD15_HEADS = 8
LATENT_CHANNELS = 4
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model."


def tiny_unet_config(model_channels: int, context_dim: int, num_heads: int) -> dict:
    """One resolution level, one res block, one transformer block: the smallest SD1-shaped UNet."""
    return {
        "use_checkpoint": False, "image_size": 32, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
        "model_channels": model_channels, "num_res_blocks": [1], "channel_mult": [1],
        "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": 1,
        "context_dim": context_dim, "num_heads": num_heads, "num_head_channels": -1,
        "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False,
        "use_spatial_transformer": True, "legacy": False,
    }


def init_weights(module: torch.nn.Module, seed: int = SEED) -> torch.nn.Module:
    """ComfyUI ops skip weight init; fill every parameter with small seeded normals."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * INIT_STD)
    return module


def tiny_sd15_model(model_channels: int = TINY_CHANNELS, context_dim: int = TINY_CONTEXT_DIM,
                    num_heads: int = TINY_HEADS):
    """A real comfy.model_base.BaseModel (SD15 config, EPS) with a tiny UNet, wrapped in a real ModelPatcher."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(tiny_unet_config(model_channels, context_dim, num_heads))
    config.set_inference_dtype(torch.float32, None)
    base = init_weights(config.get_model({}, "", device=torch.device("cpu")))
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def tiny_conditioning(context_dim: int = TINY_CONTEXT_DIM, tokens: int = 77, seed: int = SEED) -> list:
    """A CONDITIONING list with one random cross-attention context."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, context_dim, generator=gen), {}]]


def checkpoint_state_dict() -> dict:
    """State dict of a loadable SD1.5-shaped checkpoint: tiny UNet (detected as SD15), TAESD VAE, CLIP-L."""
    import comfy.sd1_clip
    import comfy.taesd.taesd

    unet = tiny_sd15_model(SD15_CHANNELS, SD15_CONTEXT_DIM, SD15_HEADS).model.diffusion_model
    sd = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    vae = init_weights(comfy.taesd.taesd.TAESD(latent_channels=LATENT_CHANNELS))
    sd.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    clip = init_weights(comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32))
    sd.update({CLIP_PREFIX + k: v for k, v in clip.state_dict().items()})
    return {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
