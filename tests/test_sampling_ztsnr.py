"""Lin et al. 2023 reproduced with real k-diffusion samplers on the exact oracle model (bright class, mu = 1.5,
4x64x64 latents, 20 steps, antithetic noise pairs).

Tolerances come from the maths: for one class the oracle is affine in z, so a consistent sampler preserves the
class mean exactly (ratio 1) up to discretisation and the host clamp; antithetic pairs cancel the noise-driven
part of the batch mean. The flawed schedule's first x0 estimate from pure noise is mu (1 - g) with
g = alpha_T^2 P / (alpha_T^2 P + s_T^2 / D) ~ 0.95 (alpha_T^2 = 0.0047), i.e. near gray.
"""

import pytest
import torch
from kd_support import kdiffusion

from vpred_core.cli.demo import DEMO_CASES, DemoCase, antithetic_noise, sample_case, summarize

SAMPLES = 16
STEPS = 20
SHAPE = (4, 64, 64)
MU_BRIGHT = 1.5
FIXED_MIN_RATIO = 0.95
FLAWED_MAX_RATIO = 0.3
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "heun", "dpm_2", "lms"]


def run(case, sampler_name, seed=0, dtype=None, first_step="auto"):
    sampling, _ = kdiffusion()
    torch.manual_seed(seed)  # ancestral samplers draw their own noise
    noise = antithetic_noise(SAMPLES, SHAPE, seed)
    sampler = getattr(sampling, f"sample_{sampler_name}")
    samples = sample_case(case, noise, STEPS, sampler, dtype=dtype, first_step=first_step)
    return summarize(case, samples, MU_BRIGHT)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_vpred_ztsnr_trailing_reaches_class_brightness(sampler):
    result = run(DemoCase("fixed", "v", True, "trailing"), sampler)
    assert result.brightness_ratio >= FIXED_MIN_RATIO
    assert bool(torch.isfinite(result.samples).all())


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_exact_terminal_reaches_class_brightness(sampler):
    result = run(DemoCase("exact", "v", True, "trailing", terminal="exact"), sampler)
    assert result.brightness_ratio >= FIXED_MIN_RATIO and bool(torch.isfinite(result.samples).all())


@pytest.mark.parametrize("spacing", ["leading_plus_one", "trailing"])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_flawed_schedule_lands_near_gray(spacing, sampler):
    assert run(DemoCase("flawed", "eps", False, spacing), sampler).brightness_ratio < FLAWED_MAX_RATIO


def test_ztsnr_with_leading_spacing_falls_short():
    leading = run(DemoCase("leading", "v", True, "leading_plus_one"), "euler").brightness_ratio
    trailing = run(DemoCase("trailing", "v", True, "trailing"), "euler").brightness_ratio
    assert leading < FIXED_MIN_RATIO < trailing


def test_cfg_rescale_pulls_saturation_back_toward_cond():
    cond, cfg, rescaled = (run(DemoCase("x", "v", True, "trailing", scale, phi), "euler")
                           for scale, phi in ((1.0, 0.0), (7.0, 0.0), (7.0, 0.7)))
    assert cfg.saturation > 2 * cond.saturation  # CFG 7 over-saturates
    assert abs(rescaled.saturation - cond.saturation) < 0.5 * abs(cfg.saturation - cond.saturation)
    assert abs(rescaled.brightness_ratio - 1) < abs(cfg.brightness_ratio - 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_no_nan_at_sigma_max(dtype, sampler):
    for case in DEMO_CASES:
        result = run(case, sampler, dtype=dtype)
        assert bool(torch.isfinite(result.samples).all()), (case.label, sampler, dtype)


def test_heun_needs_first_order_first_step_at_ztsnr():
    """Documents the terminal rule: Heun's correction across 4518 -> sigma_1 diverges (vpred_core.sampling.denoiser)."""
    raw = run(DemoCase("raw", "v", True, "trailing"), "heun", first_step="sampler")
    fixed = run(DemoCase("fixed", "v", True, "trailing"), "heun")
    assert raw.brightness_spread > 5 * fixed.brightness_spread


def _oracle_denoiser(terminal="host_clamp"):
    from vpred_core.cli.oracle import BRIGHT_CLASS, OracleModel
    from vpred_core.sampling.denoiser import DiscreteDenoiser
    from vpred_core.sampling.schedules import ScheduleSpec

    abar = ScheduleSpec(ztsnr=True, terminal=terminal).alphas_cumprod()
    denoiser = DiscreteDenoiser(OracleModel(abar, "v", shape=(4, 8, 8)), abar, "v")
    return denoiser, {"cond": torch.full((2,), BRIGHT_CLASS)}


def test_ddim_first_step_is_euler_and_keeps_host_step_numbers():
    """In VE form the DDIM step is the Euler step, so wrapping Euler changes nothing but who takes step 0; the
    callback numbering stays the host's (0 .. n-1) and the wrapped sampler runs on sigmas[1:]."""
    from vpred_core.sampling.denoiser import with_ddim_first_step
    from vpred_core.sampling.prediction import start_sample

    sampling, _ = kdiffusion()
    denoiser, extra = _oracle_denoiser()
    sigmas = denoiser.get_sigmas(6)
    x = start_sample(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), float(sigmas[0]))
    native, wrapped_steps, inner_sigmas = [], [], []

    def inner(model, x, sigmas, **kw):
        inner_sigmas.append(sigmas)
        return sampling.sample_euler(model, x, sigmas, **kw)

    plain = sampling.sample_euler(denoiser, x, sigmas, extra_args=extra, callback=lambda d: native.append(d["i"]))
    wrapped = with_ddim_first_step(inner)(denoiser, x, sigmas, extra_args=extra,
                                          callback=lambda d: wrapped_steps.append(d["i"]))
    torch.testing.assert_close(wrapped, plain, rtol=1e-4, atol=1e-4)
    assert wrapped_steps == native == list(range(6))
    assert torch.equal(inner_sigmas[0], sigmas[1:])
    passthrough = with_ddim_first_step(inner, "sampler")(denoiser, x, sigmas, extra_args=extra)
    assert torch.equal(inner_sigmas[1], sigmas) and torch.equal(passthrough, plain)


def test_ddim_first_step_builds_no_autograd_graph():
    """The wrapper's own model call runs without grad, as k-diffusion's samplers do (``@torch.no_grad``), even when the
    caller has grad enabled (measured: a graph built for the first call made a 3-step SD1.5 run ~18 % slower)."""
    from vpred_core.sampling.denoiser import with_ddim_first_step
    from vpred_core.sampling.prediction import start_sample

    denoiser, extra = _oracle_denoiser()
    weight = torch.nn.Parameter(torch.ones(()))  # requires grad: a graph would hang on every output
    grad_modes = []

    def model(x, sigma, **kw):
        grad_modes.append(torch.is_grad_enabled())
        return denoiser(x, sigma, **kw) * weight

    def stop(model, x, sigmas, **kw):
        return x

    sigmas = denoiser.get_sigmas(4)
    x = start_sample(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), float(sigmas[0]))
    with torch.enable_grad():
        out = with_ddim_first_step(stop)(model, x, sigmas, extra_args=extra)
    assert grad_modes == [False] and not out.requires_grad


def test_exact_terminal_start_holds_z_and_stays_finite():
    from vpred_core.sampling.denoiser import DiscreteDenoiser, with_ddim_first_step
    from vpred_core.sampling.prediction import start_sample
    from vpred_core.sampling.schedules import ScheduleSpec

    sampling, _ = kdiffusion()
    denoiser, extra = _oracle_denoiser("exact")
    abar_exact = ScheduleSpec(ztsnr=True, terminal="exact").alphas_cumprod()
    sigmas = denoiser.get_sigmas(4)
    assert torch.isinf(sigmas[0])
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x = start_sample(noise, float(sigmas[0]))
    assert torch.equal(x, noise)
    affine_v = DiscreteDenoiser(lambda z, t: 0.5 * z + 0.1, abar_exact, "v")
    torch.testing.assert_close(affine_v(x, sigmas[0].expand(2)), -(0.5 * noise + 0.1))  # x0 = -v(z, T), z = x
    out = with_ddim_first_step(sampling.sample_heun)(denoiser, x, sigmas, extra_args=extra)
    assert bool(torch.isfinite(out).all())
    eps_denoiser = DiscreteDenoiser(denoiser.inner_model, abar_exact, "eps")
    with pytest.raises(ValueError, match="cannot be sampled at zero terminal SNR"):
        eps_denoiser(x, torch.full((2,), float("inf")))


def test_exact_terminal_first_step_from_a_clamped_sigma_max():
    """Hosts whose sigma lists cannot hold inf keep sigma_max 4518.76; with exact_terminal the first step is taken
    as at SNR 0: x0 = -v(z, T) recovered from D, eps_hat = z (not the clamped alpha_T = 2.2e-4 mixture)."""
    from vpred_core.sampling.denoiser import DiscreteDenoiser, with_ddim_first_step
    from vpred_core.sampling.prediction import start_sample, vp_sample
    from vpred_core.sampling.schedules import ScheduleSpec

    affine_v = DiscreteDenoiser(lambda z, t: 0.5 * z + 0.1, ScheduleSpec(ztsnr=True).alphas_cumprod(), "v")
    sigmas = affine_v.get_sigmas(4)
    x = start_sample(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)), float(sigmas[0]))
    seen = {}

    def stop(model, x, sigmas, **kw):
        seen["x1"] = x
        return x

    with_ddim_first_step(stop, exact_terminal=True)(affine_v, x, sigmas, callback=lambda d: seen.update(d))
    z = vp_sample(x, float(sigmas[0]))
    x0 = -(0.5 * z + 0.1)
    torch.testing.assert_close(seen["denoised"], x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["x1"], x0 + sigmas[1] * z, rtol=1e-5, atol=1e-5)
    clamped = {}
    with_ddim_first_step(stop)(affine_v, x, sigmas, callback=lambda d: clamped.update(d))
    assert not torch.allclose(clamped["denoised"], x0, rtol=0, atol=1e-5)
