"""Prediction-type probe (vpred_core.sampling.probe): trained honest models, the exact oracle, ideal and junk
networks, a random SD1.5-size UNet, and the probe's contract with the host (inputs, dtype, state, determinism)."""

import json
import math

import pytest
import torch
from probe_training import (
    DATA_SIZE,
    OBJECTIVE_PREDICTION,
    OBJECTIVE_ZTSNR,
    OBJECTIVES,
    load_model,
    new_network,
    train_denoiser,
)

from vpred_core.cli.oracle import OracleModel
from vpred_core.sampling import probe
from vpred_core.sampling.prediction import flow_sample, z_from_x0_eps
from vpred_core.sampling.probe import (
    FLOW_PROBE_SIGMA,
    FLOW_TIMESTEP_MULTIPLIER,
    MAX_READING_ERROR,
    MIN_FIT_R2,
    MIN_MARGIN,
    PROBE_TIMESTEP,
    TERMINAL_SHIFT,
    implied_x0_coefficients,
    implied_x0_error,
    noise_signal_coefficients,
    probe_latent_and_noise,
    probe_prediction_type,
    uniform_direction,
)
from vpred_core.sampling.schedules import ScheduleSpec

SIZE = (DATA_SIZE, DATA_SIZE)
ABAR = ScheduleSpec().alphas_cumprod()
# Lowest margin measured on the trained models (eps, 0.40 at 16x16); the tests state 0.3.
TRAINED_MIN_MARGIN = 0.3


def vp_scales(t: int, abar: torch.Tensor = ABAR) -> tuple[float, float]:
    return float(abar[t].sqrt()), float((1 - abar[t]).sqrt())


class IdealNetwork(torch.nn.Module):
    """A network that knows the probe's clean latent and answers in its own convention: it reads its input as a VP
    sample at t (flow: as (1 - t/1000) x0 + (t/1000) eps) and returns the exact eps / v / x0 / flow output."""

    def __init__(self, prediction: str, x0: torch.Tensor):
        super().__init__()
        self.prediction, self.x0 = prediction, x0

    def forward(self, x, t):
        outputs = []
        for xi, ti in zip(x.to(torch.float64), t.tolist(), strict=True):
            if self.prediction == "flow":
                sigma = ti / FLOW_TIMESTEP_MULTIPLIER
                outputs.append((xi - self.x0[0]) / sigma)
                continue
            alpha, s = vp_scales(round(ti))
            eps = (xi - alpha * self.x0[0]) / s
            outputs.append({"eps": eps, "v": alpha * eps - s * self.x0[0], "x0": self.x0[0]}[self.prediction])
        return torch.stack(outputs).to(x.dtype)


class Recorder(torch.nn.Module):
    """Records every call's input and timesteps, and answers like ``inner``."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return self.inner(x, t)


def assert_verdict(result, prediction, ztsnr=None, min_margin=MIN_MARGIN):
    assert result.prediction == prediction, result.summary()
    assert result.margin >= min_margin, result.summary()
    assert result.ztsnr is ztsnr, result.summary()


# ----------------------------------------------------------------------------------------------------------------
# Honest models: tiny UNets trained with each objective (tests/probe_training.py), float32 and float16 copies
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_trained_models_are_classified(objective, dtype):
    result = probe_prediction_type(load_model(objective, dtype), 4, size=SIZE, dtype=dtype)
    expected_ztsnr = OBJECTIVE_ZTSNR[objective] if OBJECTIVE_PREDICTION[objective] == "v" else None
    assert_verdict(result, OBJECTIVE_PREDICTION[objective], expected_ztsnr, TRAINED_MIN_MARGIN)
    assert result.fit_quality >= MIN_FIT_R2 and result.dtype == str(dtype).removeprefix("torch.")
    assert result.forward_passes == (4 if OBJECTIVE_PREDICTION[objective] == "v" else 3)


def test_fp16_copy_runs_in_fp16_and_agrees_with_fp32():
    seen = []
    model = load_model("v", torch.float16)
    result16 = probe_prediction_type(lambda x, t: seen.append(x.dtype) or model(x, t), 4, size=SIZE,
                                     dtype=torch.float16)
    result32 = probe_prediction_type(load_model("v"), 4, size=SIZE)
    assert set(seen) == {torch.float16}
    for hypothesis, error in result32.reading_error.items():
        assert result16.reading_error[hypothesis] == pytest.approx(error, abs=0.01)
    assert result16.terminal_gain == pytest.approx(result32.terminal_gain, abs=0.05)


# ----------------------------------------------------------------------------------------------------------------
# The exact oracle (a Bayes-optimal eps / v model of a Gaussian latent distribution)
# ----------------------------------------------------------------------------------------------------------------
ORACLE_SHAPE = (4, 32, 32)


@pytest.mark.parametrize("ztsnr", [False, True], ids=["sd_schedule", "exact_ztsnr"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_oracle_is_classified_with_its_own_data(prediction, ztsnr):
    oracle = OracleModel(ScheduleSpec(ztsnr=ztsnr, terminal="exact").alphas_cumprod(), prediction,
                         shape=ORACLE_SHAPE, dtype=torch.float64)
    for class_index in range(3):
        latent = oracle.sample_data(1, class_index, torch.Generator().manual_seed(class_index))
        result = probe_prediction_type(oracle, 4, dtype=torch.float64, clean_latent=latent)
        assert_verdict(result, prediction, ztsnr if prediction == "v" else None, min_margin=0.5)
        assert result.latent_shape == (1, *ORACLE_SHAPE)


def test_oracle_with_a_latent_unlike_its_data_is_unknown():
    """The oracle's prior has two high-variance directions; the default field is not among them, so it cannot
    denoise it and every reading is poor: the probe refuses rather than guesses."""
    oracle = OracleModel(ABAR, "v", shape=ORACLE_SHAPE, dtype=torch.float64)
    result = probe_prediction_type(oracle, 4, size=ORACLE_SHAPE[1:], dtype=torch.float64)
    assert result.prediction == "unknown" and "error" in result.reason


# ----------------------------------------------------------------------------------------------------------------
# Ideal and junk networks; each gate of the decision stops a network only it can stop
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "v", "x0", "flow"])
def test_ideal_networks(prediction):
    x0, _ = probe_latent_and_noise(4, *SIZE)
    result = probe_prediction_type(IdealNetwork(prediction, x0), 4, size=SIZE, dtype=torch.float64)
    # x0 error 0; the v network's terminal passthrough is alpha_T / s_T = 0.068 (TERMINAL_PASSTHROUGH says 0)
    assert result.prediction == prediction and result.reading_error[prediction] < 0.1, result.summary()
    assert result.margin > 0.5


@pytest.mark.parametrize("seed", range(6))
def test_random_tiny_unets_are_unknown(seed):
    result = probe_prediction_type(new_network(seed), 4, size=SIZE)
    assert result.prediction == "unknown", result.summary()


class Zero(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


class Identity(torch.nn.Module):
    def forward(self, x, t):
        return x.clone()


@pytest.mark.parametrize("network", [Zero(), Identity()], ids=["zero", "identity"])
def test_trivial_networks_are_unknown(network):
    assert probe_prediction_type(network, 4, size=SIZE).prediction == "unknown"


def test_fit_gate_stops_an_output_buried_in_noise():
    """Exact v coefficients plus an independent residual 3x larger: error ~0, big margin, R^2 ~0.1."""
    x0, _ = probe_latent_and_noise(4, *SIZE)
    ideal = IdealNetwork("v", x0)
    junk = torch.randn(3, *x0.shape[1:], generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 3

    def buried(x, t):
        return ideal(x, t) + junk[: x.shape[0]].to(x.dtype)

    result = probe_prediction_type(buried, 4, size=SIZE, dtype=torch.float64, ztsnr_hint=False)
    assert result.reading_error["v"] < MAX_READING_ERROR and result.margin > MIN_MARGIN
    assert result.prediction == "unknown" and "R2" in result.reason, result.summary()


def test_error_gate_stops_a_half_hearted_v_model():
    """0.35 x the v output: still nearest v by far, but its x0 estimate is wrong by about 0.6."""
    x0, _ = probe_latent_and_noise(4, *SIZE)
    ideal = IdealNetwork("v", x0)
    result = probe_prediction_type(lambda x, t: 0.35 * ideal(x, t), 4, size=SIZE, dtype=torch.float64)
    assert result.margin > MIN_MARGIN and result.fit_quality > MIN_FIT_R2
    assert result.prediction == "unknown" and "error" in result.reason, result.summary()


def test_margin_gate_stops_a_network_consistent_with_two_types():
    """Exact eps output at VP timesteps, exact flow output at the flow pass: eps and flow both read perfectly."""
    x0, _ = probe_latent_and_noise(4, *SIZE)
    eps_net, flow_net = IdealNetwork("eps", x0), IdealNetwork("flow", x0)
    flow_t = FLOW_TIMESTEP_MULTIPLIER * FLOW_PROBE_SIGMA

    def two_faced(x, t):
        return torch.stack([(flow_net if float(ti) == flow_t else eps_net)(xi[None], ti[None])[0]
                            for xi, ti in zip(x, t, strict=True)])

    result = probe_prediction_type(two_faced, 4, size=SIZE, dtype=torch.float64)
    assert max(result.reading_error["eps"], result.reading_error["flow"]) < 0.05
    assert result.prediction == "unknown" and "margin" in result.reason, result.summary()


def test_non_finite_output_is_unknown():
    result = probe_prediction_type(lambda x, t: torch.full_like(x, math.inf), 4, size=SIZE)
    assert result.prediction == "unknown" and "non-finite" in result.reason
    json.dumps(result.to_dict(), allow_nan=False)


def test_wrong_output_shape_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        probe_prediction_type(lambda x, t: x[:, :3], 4, size=SIZE)


# ----------------------------------------------------------------------------------------------------------------
# A real-size SD1.5 UNet (diffusers UNet2DConditionModel, SD1.5 config) with random weights
# ----------------------------------------------------------------------------------------------------------------
def sd15_unet(seed: int):
    from vpred_core.cli.kdiffusion import declare_torchvision_op_schemas

    declare_torchvision_op_schemas()
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()


def test_random_sd15_size_unet_is_unknown():
    """860M parameters, SD1.5's block layout; probed at 32x32 to keep CI short (benchmarks/bench_probe.py: 64x64)."""
    unet = sd15_unet(0)
    assert sum(p.numel() for p in unet.parameters()) > 8e8
    context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0))
    result = probe_prediction_type(
        lambda x, t: unet(x, t, encoder_hidden_states=context.expand(x.shape[0], -1, -1)).sample, 4, size=(32, 32))
    assert result.prediction == "unknown", result.summary()
    assert result.fit_quality < MIN_FIT_R2


# ----------------------------------------------------------------------------------------------------------------
# The contract: what the callable receives, state, determinism, reporting
# ----------------------------------------------------------------------------------------------------------------
def test_callable_receives_the_documented_inputs():
    x0, eps = probe_latent_and_noise(4, *SIZE)
    recorder = Recorder(IdealNetwork("v", x0))
    result = probe_prediction_type(recorder, 4, size=SIZE, dtype=torch.float64)
    assert result.prediction == "v" and result.calls == len(recorder.calls) == 2
    (x, t), (x_shift, t_shift) = recorder.calls
    alpha, s = vp_scales(PROBE_TIMESTEP)
    expected = torch.cat([z_from_x0_eps(x0, eps, alpha, s), flow_sample(x0, eps, FLOW_PROBE_SIGMA), eps])
    torch.testing.assert_close(x, expected)
    assert t.dtype == torch.float32 and t.tolist() == [PROBE_TIMESTEP, 600.0, 999.0]
    torch.testing.assert_close(x_shift, eps + TERMINAL_SHIFT * uniform_direction(eps.shape))
    assert t_shift.tolist() == [999.0]


def test_max_batch_splits_calls_without_changing_the_result():
    model = load_model("flow")
    whole = probe_prediction_type(model, 4, size=SIZE)
    recorder = Recorder(model)
    split = probe_prediction_type(recorder, 4, size=SIZE, max_batch=1)
    assert [x.shape[0] for x, _ in recorder.calls] == [1, 1, 1] and split.calls == 3
    assert split.prediction == whole.prediction
    assert split.margin == pytest.approx(whole.margin, abs=1e-4)


def test_model_state_and_global_rng_are_untouched():
    model = load_model("v").train()
    model.attention.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seen_training = []
    model.register_forward_pre_hook(lambda m, args: seen_training.append(m.training))
    first = probe_prediction_type(model, 4, size=SIZE)
    assert seen_training and not any(seen_training), "the probe must run the network in eval mode"
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert first.to_dict() == probe_prediction_type(model, 4, size=SIZE).to_dict()


def test_no_gradients_are_recorded():
    model = load_model("eps")
    grads = []
    probe_prediction_type(lambda x, t: grads.append(torch.is_grad_enabled()) or model(x, t), 4, size=SIZE)
    assert grads == [False]


def test_summary_and_to_dict():
    result = probe_prediction_type(load_model("v_ztsnr"), 4, size=SIZE)
    line = result.summary()
    assert "\n" not in line and line.startswith("prediction v (margin ") and "ZTSNR yes" in line
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["prediction"] == "v" and data["ztsnr"] is True and data["forward_passes"] == 4
    assert [fit["name"] for fit in data["fits"]] == ["vp", "flow", "terminal"]
    assert set(data["reading_error"]) == {"eps", "v", "x0", "flow"}
    assert data["thresholds"]["min_margin"] == MIN_MARGIN


# ----------------------------------------------------------------------------------------------------------------
# The pure pieces
# ----------------------------------------------------------------------------------------------------------------
def test_coefficient_fit_recovers_known_coefficients():
    x0, eps = probe_latent_and_noise(4, 32, 32)
    coeffs = noise_signal_coefficients(0.3 * eps - 1.7 * x0, eps, x0)
    torch.testing.assert_close(coeffs, torch.tensor([0.3, -1.7], dtype=torch.float64))


@pytest.mark.parametrize("prediction", ["eps", "v", "x0", "flow"])
def test_exact_outputs_read_back_to_x0(prediction):
    """Each type's exact output (a, b) converts back to x0_hat = x0 (k = 0, g = 1) and error 0 under its own reading."""
    x0, eps = probe_latent_and_noise(4, 16, 16)
    alpha, s = vp_scales(PROBE_TIMESTEP)
    sigma = FLOW_PROBE_SIGMA
    exact = {"eps": (1.0, 0.0), "v": (alpha, -s), "x0": (0.0, 1.0), "flow": (1.0, -1.0)}[prediction]
    inputs = (sigma, 1 - sigma) if prediction == "flow" else (s, alpha)
    implied = implied_x0_coefficients(prediction, torch.tensor(inputs, dtype=torch.float64),
                                      torch.tensor(exact, dtype=torch.float64), alpha, s, sigma)
    torch.testing.assert_close(implied, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert implied_x0_error(implied, probe.gram_matrix(eps, x0)) == pytest.approx(0.0, abs=1e-12)


def test_probe_latent_is_image_like_and_fixed():
    x0, eps = probe_latent_and_noise(4, 64, 64)
    again, _ = probe_latent_and_noise(4, 64, 64)
    assert torch.equal(x0, again)
    torch.testing.assert_close(x0.pow(2).mean(dim=(-2, -1)), torch.ones(1, 4, dtype=torch.float64))
    spectrum = torch.fft.rfft2(x0).abs()
    assert spectrum[..., 3:-2, :].abs().max() < 1e-9 * spectrum.max()  # nothing above 2 cycles per image
    assert abs(float(eps.std()) - 1.0) < 0.02


def test_training_is_deterministic():
    first, _ = train_denoiser("v", steps=2, log_every=0)
    second, _ = train_denoiser("v", steps=2, log_every=0)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                  strict=True))


def test_extra_input_channels_of_inpainting_and_pix2pix_unets():
    """Inpainting UNets (4 + 5 channels) see mask 1 and a zero image latent, instruct-pix2pix (4 + 4) zeros, plain
    UNets the latent unchanged: what the hosts feed such a model in txt2img."""
    from vpred_core.sampling.probe import with_extra_input_channels

    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert with_extra_input_channels(x, 0) is x
    inpaint = with_extra_input_channels(x, 5)
    assert inpaint.shape == (3, 9, 8, 8) and torch.equal(inpaint[:, :4], x)
    assert torch.equal(inpaint[:, 4], torch.ones(3, 8, 8)) and not inpaint[:, 5:].any()
    pix2pix = with_extra_input_channels(x, 4)
    assert pix2pix.shape == (3, 8, 8, 8) and torch.equal(pix2pix[:, :4], x) and not pix2pix[:, 4:].any()


def test_probe_result_cache_is_bounded_oldest_first():
    from vpred_core.sampling.probe import ProbeResultCache

    cache = ProbeResultCache(3)
    for index in range(5):
        cache.put(("file", index), index)
    assert len(cache) == 3 and cache.get(("file", 1)) is None and cache.get(("file", 4)) == 4
    cache.put(None, "nothing to key on")
    assert cache.get(None) is None and len(cache) == 3
