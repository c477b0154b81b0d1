"""The terminal-safe first step and the exact terminal inside a real ComfyUI (oracle UNet, see oracle_model.py):
the SamplerCustom / SamplerCustomAdvanced path with SAMPLER objects, what the wrapper must keep working (step
callbacks, inpainting masks, img2img, two-stage KSamplerAdvanced with add_noise off / leftover noise), samplers
that are not KSAMPLERs, and the exact terminal under every scheduler ComfyUI lists (fp32 and fp16, no NaN/inf)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from comfy_host_env import host_node

pytestmark = pytest.mark.host

STEPS = 20
SEED = 31
IMAGES = 8  # 4 antithetic pairs
RATIO_LOW, RATIO_HIGH = 0.95, 1.05
CUSTOM_SAMPLERS = ("heun", "dpm_2_ancestral", "euler", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc")
SMALL = (2, 4, 16, 16)  # batch for the mechanics tests (the oracle works at any latent size it was built for)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batched ops: far faster than two threads on a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def columns(comfy_nodes, one_thread):
    from test_sampler_sweep import models

    return models(comfy_nodes)


@pytest.fixture()
def antithetic(monkeypatch):
    import oracle_model

    with oracle_model.antithetic_noise(monkeypatch):
        yield


def pack_sampling(comfy_nodes, model, terminal="host_clamp", first_step="auto"):
    return comfy_nodes.NODE_CLASS_MAPPINGS["VPredZTSNR_ModelSampling"].execute(
        model, "v", "on", "auto", 0.00085, 0.012, 1000, terminal, first_step).result[0]


def conds():
    import oracle_model

    return (oracle_model.class_conditioning(oracle_model.BRIGHT_CLASS_INDEX),
            oracle_model.class_conditioning(oracle_model.UNCONDITIONAL))


def ratio(model, samples) -> float:
    import oracle_model

    return oracle_model.brightness(model, samples).mean().item() / oracle_model.BRIGHT_MEAN


def custom_sample(comfy_nodes, model, sampler_name, advanced: bool):
    """SamplerCustom (or SamplerCustomAdvanced + CFGGuider + RandomNoise) with a KSamplerSelect SAMPLER object and
    the pack's Trailing Schedule SIGMAS; returns (samples, the SAMPLER object)."""
    import oracle_model

    sampler = host_node(comfy_nodes, "KSamplerSelect", sampler_name)[0]
    sigmas = host_node(comfy_nodes, "VPredZTSNR_TrailingSchedule", model, STEPS, "trailing", 1.0)[0]
    latent = {"samples": torch.zeros(IMAGES, *oracle_model.LATENT_SHAPE)}
    positive, negative = conds()
    if not advanced:
        out = host_node(comfy_nodes, "SamplerCustom", model, True, SEED, 1.0, positive, negative, sampler, sigmas,
                        latent)[0]
        return out["samples"], sampler
    guider = host_node(comfy_nodes, "CFGGuider", model, positive, negative, 1.0)[0]
    noise = host_node(comfy_nodes, "RandomNoise", SEED)[0]
    out = host_node(comfy_nodes, "SamplerCustomAdvanced", noise, guider, sampler, sigmas, latent)[0]
    return out["samples"], sampler


@pytest.mark.parametrize("advanced", [False, True], ids=["SamplerCustom", "SamplerCustomAdvanced"])
def test_sampler_objects_through_custom_sampling(comfy_nodes, columns, antithetic, advanced):
    """SAMPLER objects go through the same wrapper point: heun and dpm_2_ancestral fail with ComfyUI alone and pass
    with the pack (host clamp and exact terminal); the SAMPLER object itself is never modified."""
    rows = []
    for name in CUSTOM_SAMPLERS:
        row = {}
        for mode, model in columns.items():
            samples, _ = custom_sample(comfy_nodes, model, name, advanced)
            row[mode] = ratio(model, samples)
        rows.append((name, row))
        print(f"{name:18} " + "  ".join(f"{m} {r:.3f}" for m, r in row.items()))
        assert RATIO_LOW <= row["after"] <= RATIO_HIGH and RATIO_LOW <= row["exact"] <= RATIO_HIGH, (name, row)
    failing_alone = {name for name, row in rows if not RATIO_LOW <= row["before"] <= RATIO_HIGH}
    assert {"heun", "dpm_2_ancestral"} <= failing_alone


def test_sampler_object_is_not_mutated(comfy_nodes, columns, antithetic):
    import comfy.samplers

    sampler = comfy.samplers.sampler_object("heun")
    function, options = sampler.sampler_function, sampler.extra_options
    sigmas = comfy_nodes.NODE_CLASS_MAPPINGS["VPredZTSNR_TrailingSchedule"].execute(
        columns["after"], 4, "trailing", 1.0).result[0]
    positive, negative = conds()
    latent = torch.zeros(2, 4, 64, 64)
    comfy.sample.sample_custom(columns["after"], torch.randn_like(latent), 1.0, sampler, sigmas, positive, negative,
                               latent, seed=SEED)
    assert sampler.sampler_function is function and sampler.extra_options is options


def test_step_callbacks_keep_comfyuis_numbering(comfy_nodes, columns):
    """Previews and progress: one callback per step, i = 0 .. n-1 with ComfyUI's total n, the first from the DDIM
    step (its x0 is the model's x0 at sigma_max)."""
    import comfy.sample

    positive, negative = conds()
    latent = torch.zeros(2, 4, 64, 64)
    for name in ("heun", "dpmpp_2m", "dpm_2_ancestral"):
        seen = []

        def record(i, x0, x, total, seen=seen):
            seen.append((i, total))

        comfy.sample.sample(columns["after"], torch.randn_like(latent), 6, 1.0, name, "vpred_trailing", positive,
                            negative, latent, callback=record, seed=SEED)
        total = 6  # dpm_2_ancestral: KSampler adds a step and drops the penultimate sigma, the total stays 6
        assert [i for i, _ in seen] == list(range(total)) and {t for _, t in seen} == {total}, (name, seen)


def test_inpainting_mask_keeps_the_unmasked_latent(comfy_nodes, columns):
    """KSamplerX0Inpaint blends the mask inside every model call, the DDIM step's included: where the mask is 0 the
    result is the input latent."""
    import oracle_model

    positive, negative = conds()
    model = columns["after"]
    source = torch.full((2, *oracle_model.LATENT_SHAPE), 0.3)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 32:] = 1.0
    latent = {"samples": source, "noise_mask": mask}
    out = comfy_nodes.common_ksampler(model, SEED, 8, 1.0, "heun", "vpred_trailing", positive, negative,
                                      latent)[0]["samples"]
    torch.testing.assert_close(out[..., :32], source[..., :32], rtol=0, atol=1e-5)
    assert not torch.allclose(out[..., 32:], source[..., 32:], atol=0.1)


def test_late_starts_are_untouched(comfy_nodes, one_thread):
    """img2img (denoise < 1) and KSamplerAdvanced start_at_step > 0 do not start at SNR ~0: with first_step auto
    the result is bit-identical to the sampler's own first step; a full-denoise run is not (the wrapper acts)."""
    import oracle_model

    base = oracle_model.oracle_model()
    auto, own = pack_sampling(comfy_nodes, base), pack_sampling(comfy_nodes, base, first_step="sampler")
    positive, negative = conds()
    latent = {"samples": torch.full(SMALL[:1] + oracle_model.LATENT_SHAPE, 0.2)}

    def run(model, **kwargs):
        return comfy_nodes.common_ksampler(model, SEED, 10, 1.0, "heun", "vpred_trailing", positive, negative,
                                           latent, **kwargs)[0]["samples"]

    assert torch.equal(run(auto, denoise=0.5), run(own, denoise=0.5))
    assert torch.equal(run(auto, start_step=3), run(own, start_step=3))
    assert not torch.equal(run(auto), run(own))


def test_two_stage_advanced_sampling_equals_one_run(comfy_nodes, columns):
    """KSamplerAdvanced stage 1 (add_noise, end_at_step 4, return_with_leftover_noise) then stage 2 (add_noise off,
    start_at_step 4) equals one run with a one-step sampler: stage 1 takes the DDIM step, stage 2 starts below SNR ~0
    and is untouched."""
    import oracle_model

    model = columns["after"]
    positive, negative = conds()
    empty = {"samples": torch.zeros(SMALL[:1] + oracle_model.LATENT_SHAPE)}
    whole = comfy_nodes.common_ksampler(model, SEED, 10, 1.0, "heun", "vpred_trailing", positive, negative,
                                        empty)[0]["samples"]
    first = comfy_nodes.common_ksampler(model, SEED, 10, 1.0, "heun", "vpred_trailing", positive, negative, empty,
                                        start_step=0, last_step=4, force_full_denoise=False)[0]
    second = comfy_nodes.common_ksampler(model, SEED, 10, 1.0, "heun", "vpred_trailing", positive, negative, first,
                                         disable_noise=True, start_step=4, last_step=10000,
                                         force_full_denoise=True)[0]["samples"]
    torch.testing.assert_close(second, whole, rtol=1e-5, atol=1e-4)
    one_step = comfy_nodes.common_ksampler(model, SEED, 10, 1.0, "heun", "vpred_trailing", positive, negative,
                                           empty, start_step=0, last_step=1, force_full_denoise=False)[0]["samples"]
    assert torch.isfinite(one_step).all()


class RecordingSampler:
    """A sampler that is not a KSAMPLER (as some packs ship): records the sigmas it was given."""

    def __init__(self):
        import comfy.samplers

        self.inner = comfy.samplers.sampler_object("euler")
        self.seen = []

    def sample(self, model_wrap, sigmas, *args, **kwargs):
        self.seen.append(sigmas.clone())
        return self.inner.sample(model_wrap, sigmas, *args, **kwargs)

    def max_denoise(self, model_wrap, sigmas):
        return self.inner.max_denoise(model_wrap, sigmas)


def test_non_ksampler_samplers_pass_through_with_a_log_line(comfy_nodes, columns, caplog):
    import comfy.sample

    positive, negative = conds()
    latent = torch.zeros(1, 4, 64, 64)
    model = columns["after"]
    sigmas = comfy_nodes.NODE_CLASS_MAPPINGS["VPredZTSNR_TrailingSchedule"].execute(model, 4, "trailing", 1.0).result[0]
    sampler = RecordingSampler()
    with caplog.at_level(logging.INFO):
        out = comfy.sample.sample_custom(model, torch.randn_like(latent), 1.0, sampler, sigmas, positive, negative,
                                         latent, seed=SEED)
    assert torch.equal(sampler.seen[0], sigmas.to(sampler.seen[0])) and torch.isfinite(out).all()
    assert "is not a KSAMPLER" in caplog.text
    exact = columns["exact"]
    sigmas = comfy_nodes.NODE_CLASS_MAPPINGS["VPredZTSNR_TrailingSchedule"].execute(exact, 4, "trailing", 1.0).result[0]
    with pytest.raises(ValueError, match="exact terminal"):
        comfy.sample.sample_custom(exact, torch.randn_like(latent), 1.0, RecordingSampler(), sigmas, positive,
                                   negative, latent, seed=SEED)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_exact_terminal_under_every_scheduler(comfy_nodes, one_thread, dtype):
    """terminal 'exact': every scheduler ComfyUI lists (and vpred_trailing) gives finite sigmas below the first,
    the table-based ones start at inf, the ones that take sigma_max start at sigma_{T-1}; sampling is finite in fp32
    and fp16, and the first step's x0 is -v(noise, T)."""
    import comfy.sample
    import comfy.samplers
    import oracle_model

    base = oracle_model.oracle_model(dtype)
    model = pack_sampling(comfy_nodes, base, terminal="exact")
    ms = model.get_model_object("model_sampling")
    sigma_last_finite = float(ms.sigmas[-2])
    assert math.isinf(float(ms.sigmas[-1])) and float(ms.sigma_max) == sigma_last_finite
    positive, negative = conds()
    latent = torch.zeros(2, *oracle_model.LATENT_SHAPE)
    print(f"\n{dtype}: sigma_max reported {float(ms.sigma_max):.2f}")
    for scheduler in comfy.samplers.KSampler.SCHEDULERS:
        sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, 10)
        assert bool(torch.isfinite(sigmas[1:]).all()) and not torch.isnan(sigmas).any(), scheduler
        first = float(sigmas[0])
        assert math.isinf(first) or first <= sigma_last_finite * (1 + 1e-6), (scheduler, first)
        noise = comfy.sample.prepare_noise(latent, SEED)
        steps = []

        def record(i, x0, x, total, steps=steps):
            steps.append((i, x0.clone()))

        for sampler in ("euler", "heun", "dpmpp_2m_sde"):
            out = comfy.sample.sample(model, noise, 10, 1.0, sampler, scheduler, positive, negative, latent,
                                      callback=record, seed=SEED)
            assert bool(torch.isfinite(out).all()), (scheduler, sampler)
        print(f"  {scheduler:16} starts at {first:.2f}, {float(sigmas[1]):.2f}; samples finite")
        if math.isinf(first):
            v = base.model.diffusion_model.oracle(noise, torch.full((2,), 999.0),
                                                  torch.full((2,), oracle_model.BRIGHT_CLASS_INDEX))
            # fp16: the model sees z rounded to fp16 and returns v in fp16
            torch.testing.assert_close(steps[0][1], -v.float(), rtol=0, atol=1e-6 if dtype == torch.float32 else 4e-3)
