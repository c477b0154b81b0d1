"""Classifier-free guidance and CFG rescale (Lin et al. 2023, Algorithm 2) in a named space.

x_cfg = x_u + w (x_c - x_u); x_rescaled = x_cfg * std(x_c) / std(x_cfg); x_final = phi x_rescaled + (1 - phi) x_cfg,
std per sample over all non-batch dims (unbiased, as torch.std in diffusers and ComfyUI).

Spaces (``RESCALE_SPACE_IDS``), all expressed from the VE sample x, sigma and the denoised x0:
- ``v``   (default; ComfyUI RescaleCFG): v = (alpha^2 x - x0) / s, i.e. y = a x + b x0 with a = alpha^2/s, b = -1/s
- ``eps`` (diffusers on an eps model):    eps = (x - x0) / sigma,  a = 1/sigma, b = -1/sigma
- ``x0``  (a popular A1111 extension, but per sample here): a = 0, b = 1.
Because guidance is linear, y_cfg = a x + b x0_cfg, and with k = 1 + phi (r - 1), r = std(y_c) / std(y_cfg),
x0_final = k x0_cfg + (a / b) (k - 1) x. Only the std ratio needs the space; it is computed in float64 and the
result never goes through ``x - denoised``, which loses ~4e-3 in float32 at sigma 4518.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .prediction import alpha_from_sigma, append_dims, s_from_sigma

RESCALE_SPACE_IDS = ("v", "x0", "eps")
DEFAULT_RESCALE_PHI = 0.7
STATS_DTYPE = torch.float64
FALLBACK_STATS_DTYPE = torch.float32
# Apple MPS has no float64; DirectML ("privateuseone") and Intel Arc XPUs lack it or emulate it unreliably.
NO_FLOAT64_DEVICE_TYPES = ("mps", "privateuseone", "xpu")
STD_EPS = 1e-12


def stats_dtype(device: torch.device) -> torch.dtype:
    """float64 for the std ratio, float32 on devices without (reliable) float64 (MPS, DirectML, XPU)."""
    return FALLBACK_STATS_DTYPE if torch.device(device).type in NO_FLOAT64_DEVICE_TYPES else STATS_DTYPE


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """x_cfg = x_u + w (x_c - x_u) (Ho & Salimans 2022)."""
    return uncond + scale * (cond - uncond)


def std_over_non_batch(x: torch.Tensor) -> torch.Tensor:
    """Unbiased std per sample over all non-batch dims, shaped (B, 1, ..., 1) (works for 4-D and 5-D)."""
    return x.flatten(1).std(dim=1).view(x.shape[0], *([1] * (x.ndim - 1)))


def validate_phi(phi: float) -> float:
    """Return phi if 0 <= phi <= 1, else raise ValueError."""
    if not isinstance(phi, (int, float)) or not 0.0 <= float(phi) <= 1.0 or math.isnan(float(phi)):
        raise ValueError(f"CFG rescale phi must be in [0, 1], got {phi!r}")
    return float(phi)


def rescale_noise_cfg(guided: torch.Tensor, cond: torch.Tensor, phi: float = DEFAULT_RESCALE_PHI) -> torch.Tensor:
    """phi * guided * std(cond) / std(guided) + (1 - phi) * guided (Lin et al. Alg. 2 on raw outputs, as diffusers)."""
    validate_phi(phi)
    rescaled = guided * (std_over_non_batch(cond) / std_over_non_batch(guided))
    return phi * rescaled + (1.0 - phi) * guided


def space_coefficients(sigma: torch.Tensor, space: str):
    """(a, b) with y = a x + b x0 for the named space at VE sigma (finite at sigma = inf)."""
    if space == "v":
        s = s_from_sigma(sigma)
        alpha = alpha_from_sigma(sigma)
        return alpha * alpha / s, -1.0 / s
    if space == "eps":
        return 1.0 / sigma, -1.0 / sigma
    if space == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma)
    raise ValueError(f"CFG rescale space must be one of {RESCALE_SPACE_IDS}, got {space!r}")


@dataclass(frozen=True)
class SigmaWindow:
    """Apply a patch only while sigma_low <= sigma <= sigma_high (inclusive; defaults: always)."""

    sigma_high: float = math.inf
    sigma_low: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.sigma_low <= self.sigma_high:
            raise ValueError(
                f"sigma window needs 0 <= sigma_low <= sigma_high, got {self.sigma_low}, {self.sigma_high}"
            )

    def contains(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample boolean mask of sigmas inside the window."""
        sigma = torch.as_tensor(sigma)
        return (sigma >= self.sigma_low) & (sigma <= self.sigma_high)


def rescale_factor(y_cond: torch.Tensor, y_cfg: torch.Tensor, phi: float) -> torch.Tensor:
    """k = 1 + phi (std(y_c) / std(y_cfg) - 1), per sample (float64)."""
    ratio = std_over_non_batch(y_cond) / std_over_non_batch(y_cfg).clamp_min(STD_EPS)
    return 1.0 + phi * (ratio - 1.0)


def rescale_cfg_denoised(
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond_x0: torch.Tensor,
    uncond_x0: torch.Tensor | None,
    cond_scale: float,
    phi: float = DEFAULT_RESCALE_PHI,
    space: str = "v",
    window: SigmaWindow | None = None,
) -> torch.Tensor:
    """Guided and rescaled x0 from (x, sigma, cond x0, uncond x0) (Lin et al. Alg. 2 in ``space``).

    ``uncond_x0`` None (cfg == 1, uncond skipped) returns cond_x0 unchanged: with w = 1 x_cfg = x_c, r = 1."""
    validate_phi(phi)
    if uncond_x0 is None:
        return cond_x0
    x0_cfg = cfg_combine(cond_x0, uncond_x0, cond_scale)
    sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
    if phi == 0.0:
        return x0_cfg
    dtype = stats_dtype(x.device)
    a, b = (append_dims(c, x.ndim) for c in space_coefficients(sigma.to(dtype), space))
    x_wide = x.to(dtype)
    ax = torch.where(a == 0, torch.zeros_like(x_wide), a * x_wide)
    k = rescale_factor(ax + b * cond_x0.to(dtype), ax + b * x0_cfg.to(dtype), phi)
    # eps space at sigma = inf (a = b = 0): eps = (z - alpha x0) / s = z for cond and guided alike, ratio 1.
    k = torch.where(b == 0, torch.ones_like(k), k)
    shift = torch.where(a == 0, torch.zeros_like(x_wide), (a / b) * (k - 1.0) * x_wide)
    result = (k * x0_cfg.to(dtype) + shift).to(x0_cfg.dtype)
    if window is None:
        return result
    inside = append_dims(window.contains(sigma), x.ndim)
    return torch.where(inside, result, x0_cfg)
