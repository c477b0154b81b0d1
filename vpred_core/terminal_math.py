"""Closed forms at and next to an exact zero-terminal-SNR step (sigma_T = +inf, alpha_T = 0, s_T = 1).

At SNR 0 the VP sample is pure noise z = eps, the v-model's x0 estimate is x0 = alpha z - s v = -v
(Lin et al. 2023 sec. 3.2), and the deterministic DDIM step (Song et al. 2021 eq. 12) to VE sigma_next is
x = x0 + sigma_next * eps_hat with eps_hat = (z - alpha x0) / s. An eps model has no x0 at SNR 0.
"""

from __future__ import annotations

import math

import torch

from .prediction import alpha_from_sigma, append_dims, s_from_sigma


def initial_noise_scale(sigma: float, pure_noise: bool = True) -> float:
    """sqrt(1 + sigma^2) for a start from pure noise (VP z has unit variance, ComfyUI ``max_denoise``), else sigma."""
    return math.sqrt(1.0 + sigma * sigma) if pure_noise else sigma


def terminal_x0(model, z: torch.Tensor, terminal_t: int, prediction: str, **kwargs) -> torch.Tensor:
    """x0 = -v(z, T) at SNR 0 (alpha = 0, s = 1); ValueError for eps models (x0 = (z - eps)/0)."""
    if prediction != "v":
        raise ValueError(
            f"a {prediction!r}-prediction model cannot be sampled at zero terminal SNR: x0 = (z - s*eps)/alpha "
            "divides by alpha = 0; use v-prediction or a clamped terminal ('host_clamp')"
        )
    t = torch.full((z.shape[0],), terminal_t, dtype=torch.float64, device=z.device)
    v = model(z.to(getattr(model, "dtype", z.dtype)), t, **kwargs).to(z.dtype)
    return -v


def eps_from_vp(z: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    """eps_hat = (z - alpha x0) / s for the VP sample z at VE sigma (= z at sigma = inf)."""
    sigma = append_dims(torch.as_tensor(sigma, dtype=torch.float64, device=z.device), z.ndim)
    alpha, s = alpha_from_sigma(sigma).to(z.dtype), s_from_sigma(sigma).to(z.dtype)
    return (z - alpha * x0) / s


def ddim_step_to(x0: torch.Tensor, eps_hat: torch.Tensor, sigma_next) -> torch.Tensor:
    """VE x at sigma_next = x0 + sigma_next * eps_hat (deterministic DDIM step, Song et al. 2021 eq. 12)."""
    sigma_next = append_dims(torch.as_tensor(sigma_next, dtype=eps_hat.dtype, device=eps_hat.device), eps_hat.ndim)
    return x0 + sigma_next * eps_hat
