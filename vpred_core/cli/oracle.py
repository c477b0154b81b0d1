"""An exact posterior-mean denoiser of a known class-conditional Gaussian "latent image" distribution, exposed
as a real eps- or v-prediction model over a chosen training schedule (the Bayes-optimal model a network trained
on that data and schedule converges to).

Data: x0 = b * 1 + a * p + delta with class c ~ pi, brightness b ~ N(mu_c, tau_c^2), pattern amplitude
a ~ N(m_c, kappa_c^2) along a fixed zero-mean pattern p of unit per-pixel RMS, and delta ~ N(0, nu^2 I).
In the orthonormal feature basis u_1 = 1/sqrt(D), u_2 = p/sqrt(D) the coefficients are Gaussian, so for
z = alpha x0 + s eps and one class: E[x0_k | z] = m_k + P_k alpha / (alpha^2 P_k + s^2) (y_k - alpha m_k),
y_k = <z, u_k>, P_k = var_k + nu^2, and the residual shrinks by nu^2 alpha / (alpha^2 nu^2 + s^2)
(Gaussian conditioning, e.g. Bishop 2006 eq. 2.116). The unconditional model mixes the class posteriors with
weights p(c | z) from the feature likelihoods N(y_k; alpha m_k, alpha^2 P_k + s^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..sampling.prediction import alpha_from_sigma, s_from_sigma, validate_prediction
from ..sampling.schedules import sigmas_from_alphas_cumprod, t_to_sigma

ORACLE_DTYPE = torch.float64
LATENT_SHAPE = (4, 64, 64)
PIXEL_STD = 0.1
DISC_RADIUS_FRACTION = 0.3


@dataclass(frozen=True)
class OracleClass:
    """One class: brightness N(mu, tau^2), pattern amplitude N(pattern_mean, pattern_std^2), prior weight."""

    name: str
    brightness_mean: float
    brightness_std: float = 0.5
    pattern_mean: float = 0.0
    pattern_std: float = 0.25
    weight: float = 1.0


DEFAULT_CLASSES = (
    OracleClass("dark", -1.5, pattern_mean=-0.5),
    OracleClass("gray", 0.0),
    OracleClass("bright", 1.5, pattern_mean=0.5),
)
BRIGHT_CLASS = 2


def disc_pattern(shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-mean pattern of unit per-pixel RMS: +1 inside a centred disc, -1 outside, then standardised."""
    h, w = shape[-2], shape[-1]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=ORACLE_DTYPE), torch.linspace(-1, 1, w, dtype=ORACLE_DTYPE),
                            indexing="ij")
    inside = (xx**2 + yy**2).sqrt() < DISC_RADIUS_FRACTION * 2
    pattern = torch.where(inside, 1.0, -1.0).to(ORACLE_DTYPE).expand(shape)
    pattern = pattern - pattern.mean()
    return pattern / pattern.pow(2).mean().sqrt()


class OracleModel(torch.nn.Module):
    """model(z, t, cond=None) -> eps or v of the exact posterior mean; ``cond`` holds class indices or -1
    (unconditional) per sample."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "v", classes=DEFAULT_CLASSES,
                 shape: tuple[int, ...] = LATENT_SHAPE, pixel_std: float = PIXEL_STD, dtype=torch.float32):
        super().__init__()
        self.prediction = validate_prediction(prediction)
        self.dtype = dtype
        self.shape = tuple(shape)
        self.pixel_std = pixel_std
        dim = math.prod(self.shape)
        basis = torch.stack([torch.ones(self.shape, dtype=ORACLE_DTYPE) / math.sqrt(dim),
                             disc_pattern(self.shape) / math.sqrt(dim)])
        self.register_buffer("basis", basis.flatten(1))
        root = math.sqrt(dim)
        self.register_buffer("means", torch.tensor([[c.brightness_mean * root, c.pattern_mean * root] for c in classes],
                                                   dtype=ORACLE_DTYPE))
        self.register_buffer("variances", torch.tensor(
            [[(c.brightness_std * root) ** 2, (c.pattern_std * root) ** 2] for c in classes], dtype=ORACLE_DTYPE)
            + pixel_std**2)
        weights = torch.tensor([c.weight for c in classes], dtype=ORACLE_DTYPE)
        self.register_buffer("log_prior", (weights / weights.sum()).log())
        self.register_buffer("log_sigmas", sigmas_from_alphas_cumprod(alphas_cumprod).log())

    def alpha_s(self, t: torch.Tensor):
        """(alpha, s) of the training schedule at (fractional) timesteps t, float64, shaped (B, 1)."""
        sigma = t_to_sigma(torch.as_tensor(t, dtype=ORACLE_DTYPE, device=self.basis.device), self.log_sigmas)
        return alpha_from_sigma(sigma).view(-1, 1), s_from_sigma(sigma).view(-1, 1)

    def class_weights(self, y, alpha, s, cond):
        """p(c | z) from the feature likelihoods (B, C); one-hot for conditioned samples."""
        var = alpha.unsqueeze(-1) ** 2 * self.variances + s.unsqueeze(-1) ** 2
        resid = y.unsqueeze(1) - alpha.unsqueeze(-1) * self.means
        loglik = -0.5 * (resid**2 / var + var.log()).sum(-1) + self.log_prior
        weights = loglik.softmax(dim=1)
        if cond is None:
            return weights
        cond = torch.as_tensor(cond, device=y.device).reshape(-1).expand(y.shape[0])
        onehot = torch.nn.functional.one_hot(cond.clamp_min(0), self.means.shape[0]).to(ORACLE_DTYPE)
        return torch.where((cond >= 0).view(-1, 1), onehot, weights)

    def posterior_mean(self, z: torch.Tensor, alpha, s, cond=None) -> torch.Tensor:
        """E[x0 | z] (B, D) in float64 for the class (or the mixture when cond is None / -1)."""
        y = z @ self.basis.T
        a3, s3 = alpha.unsqueeze(-1), s.unsqueeze(-1)
        gain = self.variances * a3 / (a3**2 * self.variances + s3**2)
        post = self.means + gain * (y.unsqueeze(1) - a3 * self.means)
        coeffs = (self.class_weights(y, alpha, s, cond).unsqueeze(-1) * post).sum(1)
        nu2 = self.pixel_std**2
        resid = z - y @ self.basis
        return coeffs @ self.basis + resid * (nu2 * alpha / (alpha**2 * nu2 + s**2))

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """Model output (eps or v) for VP input z at timestep t, in ``self.dtype``."""
        batch = z.shape[0]
        z64 = z.reshape(batch, -1).to(ORACLE_DTYPE)
        alpha, s = self.alpha_s(torch.as_tensor(t).reshape(-1).expand(batch))
        x0 = self.posterior_mean(z64, alpha, s, cond)
        out = (alpha * z64 - x0) / s if self.prediction == "v" else (z64 - alpha * x0) / s
        return out.view(z.shape).to(self.dtype)

    def sample_data(self, n: int, class_index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws of x0 from one class (for checking the oracle against its own data)."""
        b, a = (torch.randn(n, 2, generator=generator, dtype=ORACLE_DTYPE)
                * (self.variances[class_index] - self.pixel_std**2).sqrt() + self.means[class_index]).unbind(1)
        delta = torch.randn(n, self.basis.shape[1], generator=generator, dtype=ORACLE_DTYPE) * self.pixel_std
        return (b[:, None] * self.basis[0] + a[:, None] * self.basis[1] + delta).view(n, *self.shape)
