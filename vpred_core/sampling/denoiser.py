"""k-diffusion compatible denoisers over any discrete schedule, guidance, and sampling from (exact) SNR 0.

- :class:`DiscreteDenoiser`: D(x, sigma) = c_skip x + c_out F(c_in x, t(sigma)) for eps and v models; sigma is
  mapped to the training timestep by log-sigma interpolation (k-diffusion ``DiscreteSchedule``), ``c_in x`` (the VP
  sample z) is fed in the model's dtype, scalings are float64 and the conversion to x0 float32 or wider.
- :class:`GuidedDenoiser`: classifier-free guidance with the core's CFG rescale.
- :func:`sample_from_schedule`: run a k-diffusion sampler from pure noise.
  sigmas[0] finite: start at x = noise * sqrt(1 + sigma_0^2) (unit-variance VP sample);
  sigmas[0] = +inf (``exact`` terminal): x0 = -v(noise, T), then a DDIM step to sigmas[1]; never inf/NaN;
  ``first_step="ddim"`` (``"auto"`` picks it when sigma_0 >= ``ZTSNR_SIGMA_THRESHOLD``, i.e. the schedule starts at
  (clamped) SNR 0): the first step is the first-order DDIM step and the chosen sampler runs on sigmas[1:]. A
  second-order correction across sigma 4518 -> sigma_1 multiplies model differences by about sigma_0 / (2 sigma_1);
  k-diffusion's Heun diverges there (measured: brightness std 11 instead of 0.5).
"""

from __future__ import annotations

import functools
import math

import torch

from .cfg import SigmaWindow, rescale_cfg_denoised
from .prediction import (
    alpha_from_sigma,
    append_dims,
    ddim_step_to,
    denoised_from_model_output,
    eps_from_vp,
    require_v_at_snr0,
    s_from_sigma,
    start_sample,
    validate_prediction,
    vp_sample,
)
from .schedules import (
    ALREADY_ZTSNR_MAX_ALPHAS_CUMPROD,
    SCHEDULE_DTYPE,
    sigma_schedule,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
)

MIN_OUTPUT_DTYPE = torch.float32


class DiscreteDenoiser(torch.nn.Module):
    """D(x, sigma) = c_skip * x + c_out * model(c_in * x, t(sigma)) for a discrete schedule."""

    def __init__(self, model, alphas_cumprod: torch.Tensor, prediction: str = "v", quantize: bool = True):
        super().__init__()
        self.inner_model = model
        self.prediction = validate_prediction(prediction)
        self.quantize = quantize
        sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
        self.register_buffer("sigmas_f64", sigmas, persistent=False)
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        self.register_buffer("sigmas", sigmas.float(), persistent=False)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        """Training timestep for ``sigma`` (nearest when quantized, else log-sigma interpolation)."""
        quantize = self.quantize if quantize is None else quantize
        return sigma_to_t(sigma, self.log_sigmas, quantize=quantize)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma of a (fractional) training timestep."""
        return t_to_sigma(t, self.log_sigmas).float()

    def get_sigmas(self, n: int, spacing: str = "trailing", denoise: float = 1.0) -> torch.Tensor:
        """n + 1 sampling sigmas from the model's own table; trailing starts at sigma_max (t = T)."""
        return sigma_schedule(self.sigmas, n, spacing, denoise)

    def model_dtype(self, x: torch.Tensor) -> torch.dtype:
        return getattr(self.inner_model, "dtype", x.dtype)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        """x0 estimate for VE ``x`` at per-sample ``sigma`` (shape (B,) or scalar). The model sees the VP sample
        c_in x = z; at sigma = inf ``x`` holds z (:func:`vp_sample`) and a v model gives x0 = -v(z, T) (Lin et al.
        2023 sec. 3.2); an eps model raises ValueError there."""
        sigma64 = torch.as_tensor(sigma, device=x.device).expand(x.shape[0]).to(SCHEDULE_DTYPE)
        require_v_at_snr0(self.prediction, sigma64)
        out_dtype = torch.promote_types(x.dtype, MIN_OUTPUT_DTYPE)
        x_out = x.to(out_dtype)
        model_in = vp_sample(x_out, sigma64).to(self.model_dtype(x))
        output = self.inner_model(model_in, self.sigma_to_t(sigma64), **kwargs).to(out_dtype)
        return denoised_from_model_output(x_out, sigma64, output, self.prediction).to(out_dtype)


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



FIRST_STEP_IDS = ("auto", "ddim", "sampler")
ZTSNR_SIGMA_THRESHOLD = math.sqrt((1.0 - ALREADY_ZTSNR_MAX_ALPHAS_CUMPROD) / ALREADY_ZTSNR_MAX_ALPHAS_CUMPROD)


def uses_ddim_first_step(sigma_0: float, first_step: str) -> bool:
    """Whether the first step is taken as a DDIM step (always for an infinite sigma_0)."""
    if first_step not in FIRST_STEP_IDS:
        raise ValueError(f"first_step must be one of {FIRST_STEP_IDS}, got {first_step!r}")
    if not math.isfinite(sigma_0):
        return True
    return first_step == "ddim" or (first_step == "auto" and sigma_0 >= ZTSNR_SIGMA_THRESHOLD)


def exact_terminal_x0(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """x0 = -v as at exact SNR 0, from a v model's D(x, sigma) at a clamped terminal sigma (hosts whose sigma
    lists cannot hold inf): D = alpha^2 x - s v, so -v = (D - alpha^2 x) / s (Salimans & Ho 2022)."""
    sigma = append_dims(torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0]), x.ndim)
    alpha2 = (alpha_from_sigma(sigma) ** 2).to(x.dtype)
    s = s_from_sigma(sigma).to(x.dtype)
    return torch.where(torch.isinf(sigma), denoised, (denoised - alpha2 * x) / s)


def with_ddim_first_step(sampler_fn, first_step: str = "auto", exact_terminal: bool = False):
    """Wrap a k-diffusion style sampler function ``fn(model, x, sigmas, extra_args=None, callback=None,
    disable=None, **kw)`` (k-diffusion's, ComfyUI's and the webuis' samplers all have this form) so that, when
    :func:`uses_ddim_first_step`, the step sigmas[0] -> sigmas[1] is the first-order DDIM step (one model call,
    x0 = D(x, sigma_0); x = x0 + sigma_1 * eps_hat, eps_hat = (z - alpha_0 x0) / s_0) and ``fn`` runs on
    sigmas[1:]. The step callback sees the host's own numbering (the first step is i = 0, then the sampler's
    i + 1). ``x`` at sigma_0 = inf holds z (:func:`vp_sample`); nothing is inf or NaN there.

    ``exact_terminal`` (a v model whose schedule ends at abar_T = 0, sampled from a host's clamped sigma_max):
    the first step is taken as at SNR 0, x0 = -v (:func:`exact_terminal_x0`) and eps_hat = z.
    The wrapper reports the wrapped function's signature (hosts inspect it for optional parameters)."""
    if first_step not in FIRST_STEP_IDS:
        raise ValueError(f"first_step must be one of {FIRST_STEP_IDS}, got {first_step!r}")

    @functools.wraps(sampler_fn)
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        sigma_0 = float(sigmas[0])
        if len(sigmas) < 2 or not uses_ddim_first_step(sigma_0, first_step):
            return sampler_fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **kwargs)
        extra_args = {} if extra_args is None else extra_args
        x = _ddim_first_step(model, x, sigmas, extra_args, callback, exact_terminal)
        if len(sigmas) == 2:
            return x
        shifted = None if callback is None else (lambda info: callback({**info, "i": info["i"] + 1}))
        return sampler_fn(model, x, sigmas[1:], extra_args=extra_args, callback=shifted, disable=disable, **kwargs)

    return sample


@torch.no_grad()  # as k-diffusion's samplers are: no autograd graph whatever the caller's grad mode
def _ddim_first_step(model, x, sigmas, extra_args: dict, callback, exact_terminal: bool) -> torch.Tensor:
    """The first step sigmas[0] -> sigmas[1] of :func:`with_ddim_first_step`: x at sigmas[1]."""
    sigma_0 = float(sigmas[0])
    x0 = model(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
    z = vp_sample(x, sigma_0)
    if exact_terminal:
        x0, eps_hat = exact_terminal_x0(x, x0, sigma_0), z
    else:
        eps_hat = eps_from_vp(z, x0, sigma_0)
    if callback is not None:
        callback({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": x0})
    return ddim_step_to(x0, eps_hat, sigmas[1])


def sample_from_schedule(sampler, denoiser, noise: torch.Tensor, sigmas: torch.Tensor, first_step: str = "auto",
                         **sampler_kwargs) -> torch.Tensor:
    """Run ``sampler(denoiser, x, sigmas, **kw)`` from unit-variance ``noise`` with the terminal-safe first step
    (see module docstring and :func:`with_ddim_first_step`)."""
    x = start_sample(noise, float(sigmas[0]))
    return with_ddim_first_step(sampler, first_step)(denoiser, x, sigmas, **sampler_kwargs)
