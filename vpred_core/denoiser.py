"""A k-diffusion compatible discrete-time denoiser for eps- and v-prediction models over any schedule.

k-diffusion samplers call ``denoiser(x, sigma, **extra_args)`` with VE ``x`` and expect x0; this wrapper maps
sigma to the model's training timestep (log-sigma interpolation, k-diffusion ``DiscreteSchedule``), feeds
``c_in * x`` (the VP sample z) in the model's dtype, and combines the output with c_skip / c_out
(k-diffusion ``VDenoiser`` / ``DiscreteEpsDDPMDenoiser``). Scalings are computed in float64 and the
conversion to x0 in float32 or wider, whatever the model dtype.
"""

from __future__ import annotations

import torch

from .prediction import append_dims, denoised_from_model_output, kdiffusion_scalings, validate_prediction
from .schedules import SCHEDULE_DTYPE, sigma_to_t, sigmas_from_alphas_cumprod, t_to_sigma
from .spacing import sigma_schedule
from .terminal_math import terminal_x0

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
        """x0 estimate for VE ``x`` at per-sample ``sigma`` (shape (B,) or scalar)."""
        sigma64 = torch.as_tensor(sigma, device=x.device).expand(x.shape[0]).to(SCHEDULE_DTYPE)
        out_dtype = torch.promote_types(x.dtype, MIN_OUTPUT_DTYPE)
        x_out = x.to(out_dtype)
        _, _, c_in = kdiffusion_scalings(sigma64, self.prediction)
        model_in = (x_out * append_dims(c_in, x.ndim).to(out_dtype)).to(self.model_dtype(x))
        output = self.inner_model(model_in, self.sigma_to_t(sigma64), **kwargs).to(out_dtype)
        return denoised_from_model_output(x_out, sigma64, output, self.prediction).to(out_dtype)

    def terminal_denoised(self, z: torch.Tensor, **kwargs) -> torch.Tensor:
        """x0 at exact SNR 0 from the VP sample z (unit-variance noise): x0 = -v(z, T) (Lin et al. 2023 sec. 3.2)."""
        return terminal_x0(self.inner_model, z, self.sigmas.shape[0] - 1, self.prediction, **kwargs)
