"""CFG and CFG rescale (Lin et al. Alg. 2): diffusers' rescale_noise_cfg, float64 references, precision at
sigma_max, 5-D latents, windows, cfg == 1."""

import math

import pytest
import torch

from vpred_core.sampling.cfg import (
    SigmaWindow,
    cfg_combine,
    rescale_cfg_denoised,
    rescale_noise_cfg,
    std_over_non_batch,
    validate_phi,
)
from vpred_core.sampling.prediction import alpha_from_sigma, s_from_sigma

HOST_SIGMA_MAX = 4518.7637
TOLERANCE_AT_SIGMA_MAX = 1e-5  # issue 4: agreement with the float64 formula at sigma_max


def make_case(shape=(2, 4, 16, 16), sigma=HOST_SIGMA_MAX, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * math.sqrt(1 + sigma**2)
    cond = torch.randn(shape, generator=gen) + 1.5
    uncond = torch.randn(shape, generator=gen) * 0.5
    return x, torch.full((shape[0],), sigma), cond, uncond


def reference_x0(x, sigma, cond, uncond, scale, phi, space):
    """Float64 Alg. 2 done literally: convert to the space, diffusers' formula, convert back."""
    from diffusers.guiders.guider_utils import rescale_noise_cfg as diffusers_rescale

    x, cond, uncond = (t.double() for t in (x, cond, uncond))
    sig = sigma.double().view(-1, *[1] * (x.ndim - 1))
    alpha, s = alpha_from_sigma(sig), s_from_sigma(sig)
    to_space = {"v": lambda x0: (alpha**2 * x - x0) / s, "eps": lambda x0: (x - x0) / sig, "x0": lambda x0: x0}[space]
    back = {"v": lambda y: alpha**2 * x - s * y, "eps": lambda y: x - sig * y, "x0": lambda y: y}[space]
    y_c, y_u = to_space(cond), to_space(uncond)
    y_cfg = y_u + scale * (y_c - y_u)
    return back(diffusers_rescale(y_cfg, y_c, guidance_rescale=phi))


def test_rescale_noise_cfg_matches_diffusers():
    from diffusers.guiders.guider_utils import rescale_noise_cfg as diffusers_rescale

    _, _, cond, uncond = make_case()
    guided = cfg_combine(cond, uncond, 7.0)
    torch.testing.assert_close(rescale_noise_cfg(guided, cond, 0.7), diffusers_rescale(guided, cond, 0.7))


@pytest.mark.parametrize("space", ["v", "eps", "x0"])
@pytest.mark.parametrize("sigma", [0.05, 1.0, 14.6, HOST_SIGMA_MAX])
def test_matches_float64_reference(space, sigma):
    x, sig, cond, uncond = make_case(sigma=sigma)
    ours = rescale_cfg_denoised(x, sig, cond, uncond, 7.0, 0.7, space)
    ref = reference_x0(x, sig, cond, uncond, 7.0, 0.7, space)
    assert ours.dtype == torch.float32
    assert (ours.double() - ref).abs().max().item() <= TOLERANCE_AT_SIGMA_MAX * max(1.0, ref.abs().max().item())


def test_x_minus_denoised_form_loses_precision_at_sigma_max():
    """Why the core never forms x - denoised: in float32 at sigma 4518 that round trip alone costs ~1e-4..1e-3."""
    x, sig, cond, uncond = make_case()
    ref = reference_x0(x, sig, cond, uncond, 7.0, 0.7, "v")
    naive = (x - (x - ref.float())).double()  # what returning x - denoised and re-adding x does
    ours = rescale_cfg_denoised(x, sig, cond, uncond, 7.0, 0.7, "v").double()
    assert (naive - ref).abs().max().item() > 10 * (ours - ref).abs().max().item()


def test_std_over_all_non_batch_dims_5d():
    x = torch.randn(3, 4, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    std = std_over_non_batch(x)
    assert std.shape == (3, 1, 1, 1, 1)
    for i in range(3):
        assert std[i].item() == pytest.approx(x[i].std().item(), rel=1e-6)


def test_5d_latents_match_reference():
    x, sig, cond, uncond = make_case(shape=(2, 4, 3, 8, 8), sigma=3.0)
    ours = rescale_cfg_denoised(x, sig, cond, uncond, 5.0, 0.7, "v")
    assert (ours.double() - reference_x0(x, sig, cond, uncond, 5.0, 0.7, "v")).abs().max().item() < 1e-5


def test_phi_zero_is_plain_cfg_and_cfg1_returns_cond():
    x, sig, cond, uncond = make_case(sigma=2.0)
    assert torch.equal(rescale_cfg_denoised(x, sig, cond, uncond, 7.0, 0.0), cfg_combine(cond, uncond, 7.0))
    assert rescale_cfg_denoised(x, sig, cond, None, 1.0, 0.7) is cond


def test_window_applies_only_inside():
    x, sig, cond, uncond = make_case(sigma=2.0)
    sig = torch.tensor([2.0, 20.0])
    out = rescale_cfg_denoised(x, sig, cond, uncond, 7.0, 0.7, "v", SigmaWindow(sigma_high=10.0, sigma_low=1.0))
    full = rescale_cfg_denoised(x, sig, cond, uncond, 7.0, 0.7, "v")
    torch.testing.assert_close(out[0], full[0])
    torch.testing.assert_close(out[1], cfg_combine(cond, uncond, 7.0)[1])


@pytest.mark.parametrize("phi", [-0.1, 1.01, float("nan"), "0.5"])
def test_phi_validation(phi):
    with pytest.raises(ValueError, match="phi"):
        validate_phi(phi)


def test_bad_space_and_window():
    x, sig, cond, uncond = make_case(sigma=2.0)
    with pytest.raises(ValueError, match="space"):
        rescale_cfg_denoised(x, sig, cond, uncond, 7.0, 0.7, "latent")
    with pytest.raises(ValueError, match="window"):
        SigmaWindow(sigma_high=1.0, sigma_low=2.0)
