"""The core's exact posterior-mean oracle as the UNet of a real ComfyUI BaseModel, and antithetic noise for ComfyUI's
own samplers (imported only inside ComfyUI host tests).

The model is a v-prediction model trained on SD betas + exact ZTSNR (abar_T = 0): ``comfy.model_base.BaseModel`` with
``ModelType.V_PREDICTION`` whose ``diffusion_model`` is the oracle. The class to generate travels in the
cross-attention context (``context[:, 0, 0]``: class index, -1 = unconditional), so ComfyUI's own conditioning,
batching and CFG code carry it.

Antithetic noise: with one class conditioned the data are Gaussian and the oracle's posterior mean is affine in its
input, so every sampler step is affine in the initial noise and in the noise it injects. If every random draw of the
second half of the batch is the negative of the first half's (initial noise, ancestral noise, Brownian-tree noise),
the batch mean brightness is the sampler's noise-free mean path: its bias, not luck. :func:`antithetic_noise` makes
ComfyUI's own noise sources do that for the duration of a ``with`` block and restores them afterwards.
"""

from __future__ import annotations

import contextlib

import torch

from vpred_core.cli.oracle import BRIGHT_CLASS, DEFAULT_CLASSES, OracleModel
from vpred_core.sampling.schedules import ScheduleSpec

CONTEXT_DIM = 8
UNCONDITIONAL = -1
LATENT_SHAPE = (4, 64, 64)
BRIGHT_CLASS_INDEX = BRIGHT_CLASS
BRIGHT_MEAN = DEFAULT_CLASSES[BRIGHT_CLASS].brightness_mean
TRAINING_SCHEDULE = ScheduleSpec(ztsnr=True, terminal="exact")  # SD betas, Lin et al.'s exact ZTSNR


class OracleUNet(torch.nn.Module):
    """``diffusion_model(x, timesteps, context=..., ...)`` -> v of the oracle for the class in the context."""

    def __init__(self, oracle: OracleModel):
        super().__init__()
        self.oracle = oracle
        self.dtype = oracle.dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        classes = None if context is None else context[:, 0, 0].round().long()
        return self.oracle(x, timesteps, classes)


def oracle_model(dtype: torch.dtype = torch.float32):
    """A ModelPatcher around a real SD15-config BaseModel (v-prediction) whose UNet is the oracle."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import tiny_model

    config = comfy.supported_models.SD15(tiny_model.tiny_unet_config(32, 32, 4))
    config.set_inference_dtype(dtype, None)
    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION,
                                      device=torch.device("cpu"))
    oracle = OracleModel(TRAINING_SCHEDULE.alphas_cumprod(), prediction="v", shape=LATENT_SHAPE, dtype=dtype)
    base.diffusion_model = OracleUNet(oracle)
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def class_conditioning(class_index: int) -> list:
    """A CONDITIONING whose context carries ``class_index`` (-1: unconditional)."""
    return [[torch.full((1, 1, CONTEXT_DIM), float(class_index)), {}]]


def brightness(model, samples: torch.Tensor) -> torch.Tensor:
    """Per-image mean pixel of sampled latents in the model's own space (undoing ``process_latent_out``)."""
    return model.model.process_latent_in(samples).double().mean(dim=(1, 2, 3))


def antithetic(noise: torch.Tensor) -> torch.Tensor:
    """Second half of the batch = minus the first half (batch size must be even)."""
    half = noise.shape[0] // 2
    return torch.cat([noise[:half], -noise[:half]])


@contextlib.contextmanager
def antithetic_noise(monkeypatch):
    """Make ComfyUI's initial noise (comfy.sample.prepare_noise) and its samplers' noise samplers
    (default_noise_sampler, BrownianTreeNoiseSampler) antithetic across the two halves of the batch."""
    import comfy.k_diffusion.sampling as kds
    import comfy.sample

    prepare_noise, default_sampler, brownian = comfy.sample.prepare_noise, kds.default_noise_sampler, \
        kds.BrownianTreeNoiseSampler

    def antithetic_sampler(inner):
        return lambda sigma, sigma_next: antithetic(inner(sigma, sigma_next))

    with monkeypatch.context() as patch:
        patch.setattr(comfy.sample, "prepare_noise", lambda *a, **k: antithetic(prepare_noise(*a, **k)))
        patch.setattr(kds, "default_noise_sampler", lambda *a, **k: antithetic_sampler(default_sampler(*a, **k)))
        patch.setattr(kds, "BrownianTreeNoiseSampler", lambda *a, **k: antithetic_sampler(brownian(*a, **k)))
        yield
