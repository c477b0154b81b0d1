"""A k-diffusion compatible classifier-free-guidance wrapper with CFG rescale from the core."""

from __future__ import annotations

import math

import torch

from .cfg import SigmaWindow, rescale_cfg_denoised


class GuidedDenoiser(torch.nn.Module):
    """D_cfg(x, sigma) = rescale_cfg_denoised(x, sigma, D(x, sigma, cond), D(x, sigma, uncond), w, phi, space).

    ``cond`` / ``uncond`` are keyword dicts for the inner denoiser; cond_scale == 1 skips the uncond pass
    (as hosts do), which the rescale handles as cfg == 1."""

    def __init__(self, denoiser, cond: dict, uncond: dict, cond_scale: float, phi: float = 0.0,
                 space: str = "v", window: SigmaWindow | None = None):
        super().__init__()
        self.inner = denoiser
        self.cond, self.uncond = cond, uncond
        self.cond_scale, self.phi, self.space, self.window = cond_scale, phi, space, window

    def guide(self, x: torch.Tensor, sigma: torch.Tensor, denoise, **kwargs) -> torch.Tensor:
        cond_x0 = denoise(x, **self.cond, **kwargs)
        uncond_x0 = None if self.cond_scale == 1.0 else denoise(x, **self.uncond, **kwargs)
        return rescale_cfg_denoised(x, sigma, cond_x0, uncond_x0, self.cond_scale, self.phi, self.space, self.window)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.guide(x, sigma, lambda xx, **kw: self.inner(xx, sigma, **kw), **kwargs)

    def terminal_denoised(self, z: torch.Tensor, **kwargs) -> torch.Tensor:
        """Guided x0 at exact SNR 0 (every rescale space is x-independent there, so z stands in for x)."""
        sigma = torch.full((z.shape[0],), math.inf, dtype=torch.float64, device=z.device)
        return self.guide(z, sigma, self.inner.terminal_denoised, **kwargs)
