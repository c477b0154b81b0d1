"""Prediction conversions and the discrete denoiser against k-diffusion's own denoiser wrappers."""

import math

import pytest
import torch
from kd_support import kdiffusion

from vpred_core.sampling.denoiser import DiscreteDenoiser
from vpred_core.sampling.prediction import (
    alpha_from_sigma,
    denoised_from_model_output,
    eps_from_v,
    eps_from_x0,
    flow_sample,
    kdiffusion_scalings,
    s_from_sigma,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_flow,
    x0_from_v,
    z_from_x0_eps,
)
from vpred_core.sampling.schedules import ScheduleSpec

GEN = torch.Generator().manual_seed(1234)


def test_conversions_roundtrip_float64():
    sigma = torch.tensor(3.7, dtype=torch.float64)
    alpha, s = alpha_from_sigma(sigma), s_from_sigma(sigma)
    assert (alpha**2 + s**2).item() == pytest.approx(1.0, abs=1e-15)
    x0, eps = (torch.randn(2, 4, 8, 8, generator=GEN, dtype=torch.float64) for _ in range(2))
    z = z_from_x0_eps(x0, eps, alpha, s)
    torch.testing.assert_close(z, alpha * x0 + s * eps)
    v = v_from_x0_eps(x0, eps, alpha, s)
    assert torch.allclose(x0_from_v(z, v, alpha, s), x0, atol=1e-13)
    assert torch.allclose(eps_from_v(z, v, alpha, s), eps, atol=1e-13)
    assert torch.allclose(x0_from_eps(z, eps, alpha, s), x0, atol=1e-13)
    assert torch.allclose(eps_from_x0(z, x0, alpha, s), eps, atol=1e-13)



@pytest.mark.parametrize("sigma", [0.0, 0.3, 1.0])
def test_flow_sample_and_x0_from_flow(sigma):
    x0, eps = (torch.randn(2, 4, 8, 8, generator=GEN, dtype=torch.float64) for _ in range(2))
    x = flow_sample(x0, eps, sigma)
    torch.testing.assert_close(x, (1 - sigma) * x0 + sigma * eps)
    torch.testing.assert_close(x0_from_flow(x, eps - x0, sigma), x0, rtol=0, atol=1e-13)


def test_terminal_snr_limits_are_finite():
    inf = torch.tensor([math.inf], dtype=torch.float64)
    assert alpha_from_sigma(inf).item() == 0.0 and s_from_sigma(inf).item() == 1.0
    c_skip, c_out, c_in = kdiffusion_scalings(inf, "v")
    assert (c_skip.item(), c_out.item(), c_in.item()) == (0.0, -1.0, 0.0)
    v = torch.randn(1, 4, 4, 4, generator=GEN, dtype=torch.float64)
    x = torch.full_like(v, math.inf)
    assert torch.equal(denoised_from_model_output(x, inf, v, "v"), -v)


@pytest.mark.parametrize("sigma", [0.03, 1.0, 14.6, 4518.76])
def test_scalings_match_kdiffusion(sigma):
    _, external = kdiffusion()
    sig = torch.tensor([sigma], dtype=torch.float64)
    ref_v = external.VDenoiser(None).get_scalings(sig)
    for ours, ref in zip(kdiffusion_scalings(sig, "v"), ref_v, strict=True):
        assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    ref_eps = external.DiscreteEpsDDPMDenoiser(None, torch.ones(2), False).get_scalings(sig)  # (c_out, c_in)
    c_skip, *ours_eps = kdiffusion_scalings(sig, "eps")
    assert c_skip.item() == 1.0
    for ours, ref in zip(ours_eps, ref_eps, strict=True):
        assert ours.item() == pytest.approx(float(ref), rel=1e-12)


class AffineModel(torch.nn.Module):
    """A deterministic stand-in network: out = 0.5 x_in + t / 1000 (enough to compare two wrappers)."""

    def forward(self, x, t, **kwargs):
        return 0.5 * x + (t.to(x.dtype) / 1000).view(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("prediction,ref_name", [("v", "DiscreteVDDPMDenoiser"), ("eps", "DiscreteEpsDDPMDenoiser")])
@pytest.mark.parametrize("ztsnr", [False, True])
def test_denoiser_matches_kdiffusion_wrapper(prediction, ref_name, ztsnr):
    _, external = kdiffusion()
    abar = ScheduleSpec(ztsnr=ztsnr).alphas_cumprod()
    model = AffineModel()
    ours = DiscreteDenoiser(model, abar, prediction, quantize=False)
    ref = getattr(external, ref_name)(model, abar.float(), quantize=False)
    x = torch.randn(3, 4, 8, 8, generator=GEN)
    for sigma in ours.get_sigmas(10, "trailing")[:-1]:
        sig = torch.full((3,), float(sigma))
        torch.testing.assert_close(ours(x * sigma, sig), ref(x * sigma, sig), rtol=1e-4, atol=1e-4)


def test_denoiser_5d_latents_and_fp16_model():
    model = AffineModel().half()
    model.dtype = torch.float16
    d = DiscreteDenoiser(model, ScheduleSpec(ztsnr=True).alphas_cumprod(), "v")
    x = torch.randn(2, 4, 3, 8, 8, generator=GEN) * d.sigma_max
    out = d(x, d.sigma_max.expand(2))
    assert out.dtype == torch.float32 and out.shape == x.shape and bool(torch.isfinite(out).all())
