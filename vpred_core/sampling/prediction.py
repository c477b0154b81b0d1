"""Prediction-type conversions in VP space, k-diffusion denoiser scalings, and the closed forms at SNR 0.

VP notation (Salimans & Ho 2022, "Progressive Distillation", sec. 4): z = alpha * x0 + s * eps with
alpha = sqrt(abar), s = sqrt(1 - abar); v = alpha * eps - s * x0. With the VE sigma = s / alpha
(Karras et al. 2022): alpha = 1 / sqrt(1 + sigma^2), s = sigma / sqrt(1 + sigma^2), and VE x = z / alpha.
All helpers are finite at sigma = +inf (alpha = 0, s = 1). There the VP sample is pure noise z = eps, the
v-model's x0 estimate is x0 = alpha z - s v = -v (Lin et al. 2023 sec. 3.2), and the deterministic DDIM step
(Song et al. 2021 eq. 12) to VE sigma_next is x = x0 + sigma_next * eps_hat with eps_hat = (z - alpha x0) / s.
An eps model has no x0 at SNR 0.
"""

from __future__ import annotations

import math

import torch

PREDICTION_IDS = ("eps", "v", "x0")


def _as_tensor(sigma, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(sigma, torch.Tensor):
        return sigma
    return torch.as_tensor(sigma, dtype=like.dtype if like is not None else torch.float64)


def validate_prediction(prediction: str) -> str:
    """Return ``prediction`` if it is a known id, else raise ValueError."""
    if prediction not in PREDICTION_IDS:
        raise ValueError(f"prediction must be one of {PREDICTION_IDS}, got {prediction!r}")
    return prediction


def alpha_from_sigma(sigma) -> torch.Tensor:
    """alpha = 1 / sqrt(1 + sigma^2) (VP signal scale of the VE sigma; 0 at sigma = inf)."""
    sigma = _as_tensor(sigma)
    return torch.rsqrt(1.0 + sigma * sigma)


def s_from_sigma(sigma) -> torch.Tensor:
    """s = sigma / sqrt(1 + sigma^2) = 1 / sqrt(1 + 1/sigma^2) (VP noise scale; 1 at sigma = inf, 0 at 0)."""
    sigma = _as_tensor(sigma)
    return torch.rsqrt(1.0 + torch.reciprocal(sigma * sigma))


def z_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha, s) -> torch.Tensor:
    """z = alpha * x0 + s * eps, the VP sample a eps/v/x0 network receives (Ho et al. 2020 eq. 4)."""
    return alpha * x0 + s * eps


def flow_sample(x0: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """x = (1 - sigma) * x0 + sigma * eps, sigma in [0, 1] (rectified flow, Liu et al. 2022; SD3, Esser et al. 2024)."""
    return (1 - sigma) * x0 + sigma * eps


def x0_from_flow(x: torch.Tensor, u: torch.Tensor, sigma) -> torch.Tensor:
    """x0 = x - sigma * u for the flow velocity u = eps - x0 (rectified flow; ComfyUI ``CONST`` denoised)."""
    return x - sigma * u


def x0_from_v(z: torch.Tensor, v: torch.Tensor, alpha, s) -> torch.Tensor:
    """x0 = alpha * z - s * v (Salimans & Ho 2022, eq. for v-parameterisation)."""
    return alpha * z - s * v


def eps_from_v(z: torch.Tensor, v: torch.Tensor, alpha, s) -> torch.Tensor:
    """eps = s * z + alpha * v (Salimans & Ho 2022)."""
    return s * z + alpha * v


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha, s) -> torch.Tensor:
    """v = alpha * eps - s * x0 (Salimans & Ho 2022)."""
    return alpha * eps - s * x0


def x0_from_eps(z: torch.Tensor, eps: torch.Tensor, alpha, s) -> torch.Tensor:
    """x0 = (z - s * eps) / alpha (Ho et al. 2020); undefined at alpha = 0 (an eps model cannot sample SNR 0)."""
    return (z - s * eps) / alpha


def eps_from_x0(z: torch.Tensor, x0: torch.Tensor, alpha, s) -> torch.Tensor:
    """eps = (z - alpha * x0) / s (Ho et al. 2020)."""
    return (z - alpha * x0) / s


def kdiffusion_scalings(sigma, prediction: str):
    """(c_skip, c_out, c_in) with D = c_skip * x + c_out * F(c_in * x): eps (1, -sigma, alpha),
    v (alpha^2, -s, alpha) (Karras et al. 2022 / k-diffusion VDenoiser with sigma_data = 1)."""
    validate_prediction(prediction)
    sigma = _as_tensor(sigma)
    alpha = alpha_from_sigma(sigma)
    if prediction == "v":
        return alpha * alpha, -s_from_sigma(sigma), alpha
    if prediction == "eps":
        return torch.ones_like(sigma), -sigma, alpha
    return torch.zeros_like(sigma), torch.ones_like(sigma), alpha


def denoised_from_model_output(x: torch.Tensor, sigma, output: torch.Tensor, prediction: str) -> torch.Tensor:
    """D(x, sigma) = c_skip * x + c_out * output for VE ``x`` (k-diffusion denoiser); x0 = -v at sigma = inf."""
    sigma = _as_tensor(sigma, x)
    c_skip, c_out, _ = kdiffusion_scalings(sigma, prediction)
    c_skip, c_out = (append_dims(c, x.ndim) for c in (c_skip, c_out))
    skip = torch.where(c_skip == 0, torch.zeros_like(x), c_skip * x)
    return skip + c_out * output


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a per-sample (B,) or scalar tensor as (B, 1, ..., 1) with ``ndim`` dims for broadcasting."""
    t = t.reshape(-1) if t.ndim else t.reshape(1)
    return t.view(t.shape[0], *([1] * (ndim - 1)))


def vp_sample(x: torch.Tensor, sigma) -> torch.Tensor:
    """The VP sample z = alpha * x of a VE sample x at per-sample ``sigma``.

    Convention for a start at exact SNR 0 (sigma = inf, where the VE x is infinite): there ``x`` holds z itself,
    unit-variance noise, and is returned unchanged. Every sampler entry point of the core follows it."""
    sigma = append_dims(torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0]), x.ndim)
    alpha = alpha_from_sigma(sigma)
    return torch.where(torch.isinf(sigma), x, (alpha * x).to(x.dtype))


def start_sample(noise: torch.Tensor, sigma_0: float) -> torch.Tensor:
    """The VE sample a sampler starts from at ``sigma_0`` for unit-variance ``noise``: noise * sqrt(1 + sigma_0^2)
    (the VP z is the noise itself; ComfyUI ``max_denoise``); at sigma_0 = inf the noise (z, see :func:`vp_sample`)."""
    return noise if math.isinf(sigma_0) else noise * math.sqrt(1.0 + sigma_0 * sigma_0)


def require_v_at_snr0(prediction: str, sigma: torch.Tensor) -> None:
    """ValueError for a non-v model asked for x0 at sigma = inf: x0 = (z - s*eps)/alpha divides by alpha = 0."""
    if prediction != "v" and bool(torch.isinf(torch.as_tensor(sigma)).any()):
        raise ValueError(
            f"a {prediction!r}-prediction model cannot be sampled at zero terminal SNR: x0 = (z - s*eps)/alpha "
            "divides by alpha = 0; use v-prediction or a clamped terminal ('host_clamp')"
        )


def eps_from_vp(z: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    """eps_hat = (z - alpha x0) / s for the VP sample z at VE sigma (= z at sigma = inf)."""
    sigma = append_dims(torch.as_tensor(sigma, dtype=torch.float64, device=z.device), z.ndim)
    alpha, s = alpha_from_sigma(sigma).to(z.dtype), s_from_sigma(sigma).to(z.dtype)
    return (z - alpha * x0) / s


def ddim_step_to(x0: torch.Tensor, eps_hat: torch.Tensor, sigma_next) -> torch.Tensor:
    """VE x at sigma_next = x0 + sigma_next * eps_hat (deterministic DDIM step, Song et al. 2021 eq. 12)."""
    sigma_next = append_dims(torch.as_tensor(sigma_next, dtype=eps_hat.dtype, device=eps_hat.device), eps_hat.ndim)
    return x0 + sigma_next * eps_hat
