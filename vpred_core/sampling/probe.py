"""Prediction-type probe: tell an eps, v, x0 or rectified-flow network from three forward passes.

Used when a checkpoint states nothing (no marker key, metadata or YAML): run the network on a known clean latent and
known noise and see which prediction type its outputs are.

The callable
------------
``unet(x_in, t) -> output`` is the raw network, below any host model-sampling wrapper: ``x_in`` (B, C, H, W) in the
host's dtype and device is exactly what the network receives, ``t`` (B,) float32 is the network timestep, and
``output`` is the raw network output, same shape. The probe builds every input itself, each in its own convention:

- eps / v / x0 passes: the VP sample z = alpha_t x0 + s_t eps, t in 0..T-1. This is what k-diffusion and ComfyUI feed
  (c_in * x with VE x = z / alpha, c_in = 1 / sqrt(sigma^2 + 1)) and what LDM's / the webuis' ``apply_model`` gets.
- flow pass: x = (1 - sigma) x0 + sigma eps at t = 1000 sigma (ComfyUI ``CONST`` / ``ModelSamplingDiscreteFlow``,
  multiplier 1000 as SD3; c_in = 1). ``flow_multiplier`` changes the 1000 for the flow pass; the terminal pass
  (t = T - 1 = 999) reads as sigma ~ 1 for a flow model only with the multiplier 1000.

So hosts pass the network itself: ComfyUI ``model.model.diffusion_model(x, t, context=..., y=...)`` (not
``BaseModel.apply_model``, which applies its own c_in and sigma-to-t map), A1111 / Forge / reForge
``sd_model.model.diffusion_model(x, t, context=...)``. x0 lives in the space the UNet was trained in: latents after the
VAE scaling factor (per-pixel std about 1). The callable closes over the model's unconditional input, expanded to B:
SD1.x the CLIP-L encoding of the empty prompt "" (1, 77, 768); SD2.x the OpenCLIP-H encoding of "" (1, 77, 1024);
SDXL cross-attention (1, 77, 2048) and ``y`` (1, 2816) of the empty prompt, either zeroed text parts (the webuis'
empty negative; SGM's caption dropout zeroes embeddings in training) or the encoded "", with size embeddings
original = target = (8H, 8W), crop (0, 0). Inpainting / instruct-pix2pix hosts append their extra input channels
inside the callable (zero mask, zero image latent); ``channels`` is the latent (output) channel count.

The passes
----------
x0 is a smooth field (:func:`smooth_field`: 1/|k| amplitudes up to 2 cycles per image, unit RMS per channel, the
natural-image spectrum, so an image model can denoise it), eps ~ N(0, I); both from one seeded CPU generator,
float64, cast to the host dtype only for the call. One call, batch 3 (``max_batch`` splits it):

1. ``vp``: t = PROBE_TIMESTEP = 500, z = alpha x0 + s eps (SD's schedule: alpha 0.526, s 0.851, SNR 0.38).
2. ``flow``: sigma = FLOW_PROBE_SIGMA = 0.6, x = 0.4 x0 + 0.6 eps, t = 600.
3. ``terminal``: x = eps at t = T - 1: pure noise, in distribution for every type (VP at SNR ~0, flow at sigma ~1).
4. Only after a v verdict with ``ztsnr_hint``: x = eps + 2 u at t = T - 1, u the unit uniform offset (second call).

The decision
------------
Step 1, the reading of a pass. Least squares (float64) gives out ~ a eps + b x0 and its R^2. Every type converts
linearly to an x0 estimate x0_hat = P x_in + Q out (eps: (z - s eps_hat) / alpha, Ho et al. 2020; v: alpha z - s v,
Salimans & Ho 2022; x0: out; flow: x - sigma u, Liu et al. 2022). Applied to the coefficients this gives
x0_hat = k eps + g x0 and the reading's x0 error e = ||x0_hat - x0|| / ||x0|| (recovery 1 - g, noise leak k; the
residual the fit leaves is measured by R^2 instead). Read the right way, the output of a model that denoises x0 has a
small e; read the wrong way, an O(1) linear map of it. eps, v and x0 are read on pass 1, flow on pass 2.

Step 2, terminal passthrough rho = <out, eps> / <eps, eps> on pass 3. At SNR 0 an eps model returns its input noise
(eps_hat = z, rho = 1), a flow model u = eps - E[x0] (rho = 1), a v model about -E[x0] (rho = alpha_T ~ 0.07, or 0),
an x0 model E[x0] (rho ~ 0): {eps, flow} against {v, x0} with no denoising needed. Step 1 alone is not enough: fed a
VP sample, the trained flow network's output read as v within 0.08 at t = 400 and 0.30 at t = 500 (GroupNorm makes a
network partly blind to its input's scale, so off-convention outputs are unpredictable); rho rules v out (0.86).

Score of a type: err = max(e, |rho - TERMINAL_PASSTHROUGH[type]|), both must hold. Verdict: the lowest score if its
pass has R^2 >= MIN_FIT_R2, err <= MAX_READING_ERROR and the runner-up scores at least MIN_MARGIN more; otherwise
``unknown``. ``margin`` = runner-up score - winner score.

Measurements (``reading error`` = winner score)
-----------------------------------------------
Honest models, the tiny UNets of ``tests/probe_training.py`` trained on synthetic latents at 16x16 (where the
Bayes-optimal denoiser itself only reaches e ~ 0.3: few pixels per image mode), probed at 16x16; float32, float16 and
bfloat16 copies agree to 2 decimals:

    model     verdict  score  runner-up    margin  R^2   rho   kappa
    eps       eps      0.34   flow 0.74    0.40    0.93  0.98  -
    v         v        0.36   flow 0.97    0.61    0.63  0.03  2.59
    v+ZTSNR   v        0.35   flow 0.96    0.60    0.64  0.04  0.53
    x0        x0       0.32   flow 1.11    0.79    0.79  0.12  -
    flow      flow     0.32   v 0.86       0.53    0.66  0.86  -

At 32x32 the same networks score 0.20-0.29 with margins 0.45-0.98 (kappa 4.69 / 0.30). The exact oracle
(``vpred_core.cli.oracle``, float64, 64x64, probed with a draw of its own data as ``clean_latent``): eps score
<= 0.13, margin >= 0.59; v score <= 0.11, margin >= 0.87, on the SD schedule and on exact ZTSNR. The Gaussian
posterior mean of the synthetic training data at 64x64 (a Wiener filter, what a perfect denoiser of that data does at
SD size): scores 0.02-0.04, margins 0.62 (eps, runner-up flow) to 1.28 (x0).
Junk: 12 randomly initialised tiny UNets: best score >= 0.84, margin <= 0.17, R^2 <= 0.045; a zero network: 0.86,
R^2 0; the identity network: 0.88, margin 0.01, R^2 1.0; random real-size UNets (diffusers, SD1.5 config, 860M,
32x32 and 64x64: 0.86-0.87, margin 0.11, R^2 <= 0.006; SDXL config, 2.6B, 32x32: 0.83, margin 0.15, R^2 0.004); the
oracle probed with the default field, which is not like its data: best 0.85-0.89. All ``unknown``.

Thresholds
----------
- MAX_READING_ERROR = 0.5: honest scores <= 0.36 (at the hardest size), junk >= 0.84. A zero output reads as v with
  error s = 0.85 and an input copy as flow with 0.88, so a network must denoise to get a verdict.
- MIN_MARGIN = 0.2: honest margins >= 0.40, junk <= 0.17.
- MIN_FIT_R2 = 0.3: honest >= 0.63, random networks <= 0.045 (R^2 alone does not suffice: the identity has 1.0).
  The three gates overlap on purpose; the tests break each one on a network only it stops.

ZTSNR (Lin et al. 2023)
-----------------------
kappa = -<out(eps + 2u) - out(eps), u> / 2 at t = T - 1 (:func:`terminal_gain`) is how far a v model's x0 estimate
(about -v there) follows a uniform offset of pure noise, an offset 2 noise standard deviations along u, well inside
what pure noise looks like. A model trained to SNR 0 saw only noise at T, and its target -x0 does not depend on it:
kappa = 0. A model trained with alpha_T = 0.068 reads the leftover signal (the brightness problem Lin et al. fix):
for training latents of variance P along u the Gaussian posterior gives kappa = alpha_T P / (alpha_T^2 P + s_T^2)
- alpha_T, >= 2 once P >= 36, i.e. once the global latent mean varies by std >= 0.05 across images at 64x64x4.
Measured: ZTSNR-trained 0.53 (16x16) / 0.30 (32x32), exact oracle 0.00; SD-schedule trained 2.59 / 4.69, Gaussian
at 64x64 12.1, oracle 13.9. ZTSNR_MAX_TERMINAL_GAIN = 1.0 and NON_ZTSNR_MIN_TERMINAL_GAIN = 2.0 leave an
inconclusive band (ztsnr None). Only v verdicts get the hint (an eps model cannot be sampled at SNR 0; x0 models
were not measured). A network learns t = T from about 1/1000 of its training samples, and no real checkpoint was
available here: treat ztsnr as a hint below anything a file states.

Guarantees: fixed seed and a private generator (the global RNG is never touched), no gradients, modules put in eval
mode for the call and every ``training`` flag restored, weights never written; all fitting in float64 on the CPU
(MPS has no float64). Cost: 3 network evaluations at the latent size (4 for a v model), in one call (two for v).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .prediction import flow_sample, x0_from_eps, x0_from_flow, x0_from_v, z_from_x0_eps
from .schedules import ScheduleSpec

logger = logging.getLogger(__name__)

PROBE_PREDICTION_IDS = ("eps", "v", "x0", "flow", "unknown")
HYPOTHESES = ("eps", "v", "x0", "flow")
FIELD_DTYPE = torch.float64
FIT_DTYPE = torch.float64
PROBE_SEED = 20261129
PROBE_LATENT_MAX_CYCLES = 2
PROBE_TIMESTEP = 500
FLOW_PROBE_SIGMA = 0.6
FLOW_TIMESTEP_MULTIPLIER = 1000.0
TERMINAL_SHIFT = 2.0
# Share of pure input noise a model of each type passes to its output at t = T (module docstring, step 2).
TERMINAL_PASSTHROUGH = {"eps": 1.0, "v": 0.0, "x0": 0.0, "flow": 1.0}

MIN_FIT_R2 = 0.3
MAX_READING_ERROR = 0.5
MIN_MARGIN = 0.2
ZTSNR_MAX_TERMINAL_GAIN = 1.0
NON_ZTSNR_MIN_TERMINAL_GAIN = 2.0

UnetCallable = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# The probe's inputs: a smooth image-like clean latent and seeded Gaussian noise
# ----------------------------------------------------------------------------------------------------------------
def field_frequencies(max_cycles: int) -> torch.Tensor:
    """Integer frequencies (kx, ky) in cycles per image with 0 < |k| <= max_cycles, one of each +-k pair (K, 2)."""
    pairs = [(kx, ky) for kx in range(max_cycles + 1) for ky in range(-max_cycles, max_cycles + 1)
             if (kx > 0 or ky > 0) and kx * kx + ky * ky <= max_cycles * max_cycles]
    return torch.tensor(pairs, dtype=FIELD_DTYPE)


def smooth_field(n: int, channels: int, height: int, width: int, generator: torch.Generator,
                 max_cycles: int = PROBE_LATENT_MAX_CYCLES) -> torch.Tensor:
    """Periodic random field sum_k |k|^-1 (A_k cos 2pi<k, r> + B_k sin 2pi<k, r>), A, B ~ N(0, 1), r in the unit
    square, standardised to zero mean and unit RMS per channel (n, C, H, W), float64. Amplitude 1/|k| is the
    natural-image spectrum (power ~ 1/f^2, van der Schaaf & van Hateren 1996); the same draw at any resolution."""
    freqs = field_frequencies(max_cycles)
    amplitude = freqs.norm(dim=1).reciprocal()
    coeffs = torch.randn(n, channels, freqs.shape[0], 2, generator=generator, dtype=FIELD_DTYPE) * amplitude[:, None]
    y = (torch.arange(height, dtype=FIELD_DTYPE) + 0.5) / height
    x = (torch.arange(width, dtype=FIELD_DTYPE) + 0.5) / width
    phase = 2 * math.pi * (freqs[:, 0, None, None] * x[None, None, :] + freqs[:, 1, None, None] * y[None, :, None])
    values = (torch.einsum("nck,khw->nchw", coeffs[..., 0], phase.cos())
              + torch.einsum("nck,khw->nchw", coeffs[..., 1], phase.sin()))
    values = values - values.mean(dim=(-2, -1), keepdim=True)
    return values / values.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()


def probe_latent_and_noise(channels: int, height: int, width: int, seed: int = PROBE_SEED):
    """(x0, eps): the probe's clean latent (one smooth field, unit RMS per channel, like an SD latent after the VAE
    scaling factor) and standard Gaussian noise, both (1, C, H, W) float64 on the CPU from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    x0 = smooth_field(1, channels, height, width, generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=FIELD_DTYPE)
    return x0, eps


def uniform_direction(shape: Sequence[int]) -> torch.Tensor:
    """u = 1 / sqrt(N) everywhere: the unit-norm uniform latent offset (global brightness), float64."""
    return torch.full(tuple(shape), 1.0 / math.sqrt(math.prod(shape)), dtype=FIELD_DTYPE)


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------
def _basis(eps: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    return torch.stack([eps.reshape(-1), x0.reshape(-1)]).to(FIT_DTYPE)


def gram_matrix(eps: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """G = [[<eps, eps>, <eps, x0>], [<x0, eps>, <x0, x0>]] (float64)."""
    basis = _basis(eps, x0)
    return basis @ basis.T


def noise_signal_coefficients(output: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """(a, b) minimising ||output - a eps - b x0||^2: the normal equations G (a, b) = (<eps, out>, <x0, out>)."""
    basis = _basis(eps, x0)
    return torch.linalg.solve(basis @ basis.T, basis @ output.reshape(-1).to(FIT_DTYPE))


def fit_r2(output: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, coeffs: torch.Tensor) -> float:
    """R^2 = 1 - ||out - a eps - b x0||^2 / ||out||^2 (uncentred): the share of the output the fit explains."""
    out = output.reshape(-1).to(FIT_DTYPE)
    residual = out - coeffs.to(FIT_DTYPE) @ _basis(eps, x0)
    total = out.pow(2).sum()
    return float(1.0 - residual.pow(2).sum() / total) if total > 0 else 0.0


def noise_passthrough(output: torch.Tensor, eps: torch.Tensor) -> float:
    """rho = <out, eps> / <eps, eps>: the share of the input noise in the output for a pure-noise input."""
    noise = eps.reshape(-1).to(FIT_DTYPE)
    return float(output.reshape(-1).to(FIT_DTYPE) @ noise / (noise @ noise))


def implied_x0_coefficients(prediction: str, input_coeffs: torch.Tensor, output_coeffs: torch.Tensor,
                            alpha: float, s: float, sigma: float) -> torch.Tensor:
    """(k, g) with x0_hat = k eps + g x0: the model's x0 estimate if its output is a ``prediction`` output, from the
    (eps, x0) coefficients of its input and output (the conversions are linear, so they act on coefficients)."""
    if prediction == "eps":
        return x0_from_eps(input_coeffs, output_coeffs, alpha, s)
    if prediction == "v":
        return x0_from_v(input_coeffs, output_coeffs, alpha, s)
    if prediction == "x0":
        return output_coeffs.clone()
    if prediction == "flow":
        return x0_from_flow(input_coeffs, output_coeffs, sigma)
    raise ValueError(f"prediction must be one of {HYPOTHESES}, got {prediction!r}")


def implied_x0_error(x0_coeffs: torch.Tensor, gram: torch.Tensor) -> float:
    """||x0_hat - x0|| / ||x0|| for x0_hat = k eps + g x0: sqrt(d^T G d / G_x0x0), d = (k, g - 1)."""
    d = x0_coeffs.to(FIT_DTYPE) - torch.tensor([0.0, 1.0], dtype=FIT_DTYPE)
    return float((d @ gram @ d / gram[1, 1]).clamp_min(0).sqrt())


def terminal_gain(out_shifted: torch.Tensor, out_noise: torch.Tensor, direction: torch.Tensor, shift: float) -> float:
    """kappa = -<out(eps + d u) - out(eps), u> / d at t = T: how far a v model's x0 estimate (about -v there)
    follows a uniform offset of its pure-noise input; 0 for a model trained to SNR 0 (module docstring, ZTSNR)."""
    diff = (out_shifted.to(FIT_DTYPE) - out_noise.to(FIT_DTYPE)).reshape(-1)
    return float(-(diff @ direction.reshape(-1).to(FIT_DTYPE)) / shift)


# ----------------------------------------------------------------------------------------------------------------
# Result and decision
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PassFit:
    """One probe input, ``noise_scale`` eps + ``signal_scale`` x0 at network timestep ``timestep``, and the
    least-squares fit of the network's output, ``eps_coeff`` eps + ``x0_coeff`` x0, explaining ``r2`` of it."""

    name: str
    timestep: float
    noise_scale: float
    signal_scale: float
    eps_coeff: float
    x0_coeff: float
    r2: float


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :func:`probe_prediction_type`.

    ``prediction`` in PROBE_PREDICTION_IDS; ``margin``: runner-up minus winner reading error (>= MIN_MARGIN for a
    verdict); ``ztsnr``: None unless a v model's terminal gain is decisive; ``fit_quality``: R^2 of the winner's
    pass; ``reading_error``: per hypothesis, the worse of its x0 error and its terminal-passthrough mismatch."""

    prediction: str
    margin: float
    ztsnr: bool | None
    fit_quality: float
    reading_error: dict[str, float]
    x0_error: dict[str, float]
    terminal_passthrough: float
    terminal_gain: float | None
    fits: tuple[PassFit, ...]
    forward_passes: int
    calls: int
    latent_shape: tuple[int, ...]
    dtype: str
    reason: str
    thresholds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs, reports and infotext."""
        ztsnr = {None: "unknown", True: "yes", False: "no"}[self.ztsnr]
        gain = "" if self.terminal_gain is None else f" (terminal gain {self.terminal_gain:.2f})"
        size = "x".join(str(n) for n in self.latent_shape[-2:])
        why = f"; {self.reason}" if self.prediction == "unknown" else ""
        return (f"prediction {self.prediction} (margin {self.margin:.2f}, fit R2 {self.fit_quality:.2f}), "
                f"ZTSNR {ztsnr}{gain}; {self.forward_passes} passes at {size} {self.dtype}{why}")

    def to_dict(self) -> dict:
        """JSON-ready dict (numbers, lists, strings; None for a quantity not measured or not finite)."""
        return _json_ready(asdict(self))


def _json_ready(value):
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def reading_error(x0_error: float, passthrough: float, prediction: str) -> float:
    """max(x0 error of the reading, |terminal passthrough - the type's passthrough|): a reading must pass both."""
    return max(x0_error, abs(passthrough - TERMINAL_PASSTHROUGH[prediction]))


def decide_prediction(errors: dict[str, float], r2: dict[str, float]) -> tuple[str, float, str]:
    """(prediction, margin, reason): the reading with the smallest error if its pass fits (R^2 >= MIN_FIT_R2), its
    error is at most MAX_READING_ERROR and the runner-up's is at least MIN_MARGIN larger; else "unknown"."""
    if not all(math.isfinite(e) for e in errors.values()):
        return "unknown", 0.0, "non-finite network output"
    best, runner_up = sorted(errors, key=errors.get)[:2]
    margin = errors[runner_up] - errors[best]
    if r2[best] < MIN_FIT_R2:
        return "unknown", margin, f"{best} pass fit R2 {r2[best]:.2f} < {MIN_FIT_R2}"
    if errors[best] > MAX_READING_ERROR:
        return "unknown", margin, f"best reading {best} has error {errors[best]:.2f} > {MAX_READING_ERROR}"
    if margin < MIN_MARGIN:
        return "unknown", margin, f"{best} vs {runner_up} margin {margin:.2f} < {MIN_MARGIN}"
    return best, margin, f"{best} error {errors[best]:.2f}, runner-up {runner_up} {errors[runner_up]:.2f}"


def decide_ztsnr(prediction: str, gain: float | None) -> bool | None:
    """True if a v model's terminal gain is <= ZTSNR_MAX_TERMINAL_GAIN, False if >= NON_ZTSNR_MIN_TERMINAL_GAIN,
    else None (also for every other prediction: not validated there)."""
    if prediction != "v" or gain is None or not math.isfinite(gain):
        return None
    if gain <= ZTSNR_MAX_TERMINAL_GAIN:
        return True
    if gain >= NON_ZTSNR_MIN_TERMINAL_GAIN:
        return False
    return None


# ----------------------------------------------------------------------------------------------------------------
# Running the network
# ----------------------------------------------------------------------------------------------------------------
def _training_flags(unet) -> list[tuple[torch.nn.Module, bool]]:
    return [(module, module.training) for module in unet.modules()] if isinstance(unet, torch.nn.Module) else []


def _run(unet: UnetCallable, inputs: torch.Tensor, timesteps: torch.Tensor, dtype, device,
         max_batch: int | None) -> tuple[torch.Tensor, int]:
    """``unet`` outputs for float64 CPU ``inputs`` (B, C, H, W) at network ``timesteps`` (B,), as float64 CPU."""
    outputs = []
    step = inputs.shape[0] if max_batch is None else max(1, int(max_batch))
    for start in range(0, inputs.shape[0], step):
        # cast on the CPU, then move (MPS has no float64); bring outputs back before widening them
        x = inputs[start:start + step].to(dtype).to(device)
        t = timesteps[start:start + step].to(torch.float32).to(device)
        out = unet(x, t)
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(f"the probed network returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        outputs.append(out.detach().to("cpu").to(FIT_DTYPE))
    return torch.cat(outputs), len(outputs)


def probe_passes(abar: torch.Tensor, flow_multiplier: float = FLOW_TIMESTEP_MULTIPLIER) -> tuple[PassFit, ...]:
    """The three passes (name, network timestep, noise scale, signal scale; fits still NaN) for a VP schedule."""
    if abar.shape[0] <= PROBE_TIMESTEP:
        raise ValueError(f"alphas_cumprod has {abar.shape[0]} timesteps; the probe needs more than {PROBE_TIMESTEP}")
    alpha, s = float(abar[PROBE_TIMESTEP].sqrt()), float((1 - abar[PROBE_TIMESTEP]).sqrt())
    sigma, nan = FLOW_PROBE_SIGMA, math.nan
    return (PassFit("vp", float(PROBE_TIMESTEP), s, alpha, nan, nan, nan),
            PassFit("flow", flow_multiplier * sigma, sigma, 1.0 - sigma, nan, nan, nan),
            PassFit("terminal", float(abar.shape[0] - 1), 1.0, 0.0, nan, nan, nan))


def fit_pass(spec: PassFit, output: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor) -> PassFit:
    """``spec`` with the least-squares coefficients of ``output`` and their R^2 filled in."""
    coeffs = noise_signal_coefficients(output, eps, x0)
    return PassFit(spec.name, spec.timestep, spec.noise_scale, spec.signal_scale, float(coeffs[0]),
                   float(coeffs[1]), fit_r2(output, eps, x0, coeffs))


def reading_x0_error(prediction: str, fit: PassFit, gram: torch.Tensor) -> float:
    """x0 error of reading ``fit``'s output as a ``prediction`` output (eps/v/x0 on the vp pass, flow on flow)."""
    inputs = torch.tensor([fit.noise_scale, fit.signal_scale], dtype=FIT_DTYPE)
    outputs = torch.tensor([fit.eps_coeff, fit.x0_coeff], dtype=FIT_DTYPE)
    # the input is noise_scale eps + signal_scale x0: (s, alpha) on the vp pass, (sigma, 1 - sigma) on the flow pass
    implied = implied_x0_coefficients(prediction, inputs, outputs, alpha=fit.signal_scale, s=fit.noise_scale,
                                      sigma=fit.noise_scale)
    return implied_x0_error(implied, gram)


class ProbeResultCache:
    """Probe results per source key (e.g. the state of the checkpoint and its YAML), bounded: the oldest entry goes
    first. A key of None is never stored (nothing to key the result on)."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._results: OrderedDict = OrderedDict()

    def get(self, key):
        return None if key is None else self._results.get(key)

    def put(self, key, result) -> None:
        if key is None:
            return
        self._results[key] = result
        while len(self._results) > self.max_entries:
            self._results.popitem(last=False)

    def __len__(self) -> int:
        return len(self._results)


INPAINT_EXTRA_CHANNELS = 5  # mask + masked-image latent: SD inpainting UNets take 9 input channels


def with_extra_input_channels(x_in: torch.Tensor, extra: int) -> torch.Tensor:
    """The probe's latent ``x_in`` as the input of a network that takes ``extra`` more channels than the latent:
    inpainting UNets (mask + masked-image latent) get the mask 1 and the image latent 0 (everything to be generated,
    what ComfyUI and the webuis feed an inpainting model in txt2img), instruct-pix2pix-style UNets zeros."""
    if extra <= 0:
        return x_in
    fill = x_in.new_zeros(x_in.shape[0], extra, *x_in.shape[2:])
    if extra == INPAINT_EXTRA_CHANNELS:
        fill[:, 0] = 1.0
    return torch.cat([x_in, fill], dim=1)


def probe_prediction_type(unet: UnetCallable, channels: int = 4, *, size: tuple[int, int] = (64, 64),
                          dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                          alphas_cumprod: torch.Tensor | None = None,
                          flow_multiplier: float = FLOW_TIMESTEP_MULTIPLIER, ztsnr_hint: bool = True,
                          clean_latent: torch.Tensor | None = None, max_batch: int | None = None,
                          seed: int = PROBE_SEED) -> ProbeResult:
    """Decide eps / v / x0 / flow / unknown for the raw network ``unet(x_in, t) -> output``.

    ``x_in`` is exactly what the network receives (``dtype`` on ``device``, shape (B, channels, *size)): a VP sample
    alpha x0 + s eps for the eps/v/x0 pass, a flow sample (1 - sigma) x0 + sigma eps for the flow pass, pure noise
    (plus a uniform offset) at the terminal passes; ``t`` is float32 (B,), the network timestep (0..T-1;
    ``flow_multiplier`` * sigma for the flow pass). ``alphas_cumprod``: the VP training schedule assumed (default
    SD's scaled_linear 0.00085..0.012, T = 1000). ``clean_latent``: (C, H, W) or (1, C, H, W) to probe with instead
    of the built-in smooth field (it then sets the shape), for a model whose data the field is not like.
    ``ztsnr_hint``: after a v verdict, one more evaluation (t = T - 1) for ``ztsnr``. ``max_batch`` caps the batch
    of a call. See the module docstring for the conditioning hosts close over and for the decision rule."""
    if clean_latent is not None:
        x0 = clean_latent.detach().to("cpu").to(FIT_DTYPE).reshape(1, *clean_latent.shape[-3:])
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=FIELD_DTYPE)
    else:
        x0, eps = probe_latent_and_noise(channels, size[0], size[1], seed)
    abar = (ScheduleSpec().alphas_cumprod() if alphas_cumprod is None
            else torch.as_tensor(alphas_cumprod).detach().to("cpu").to(FIT_DTYPE))
    vp, flow, terminal = probe_passes(abar, flow_multiplier)
    inputs = torch.cat([z_from_x0_eps(x0, eps, vp.signal_scale, vp.noise_scale),
                        flow_sample(x0, eps, flow.noise_scale), eps])
    timesteps = torch.tensor([vp.timestep, flow.timestep, terminal.timestep], dtype=FIT_DTYPE)
    flags = _training_flags(unet)
    try:
        if flags:
            unet.eval()
        with torch.no_grad():
            outputs, calls = _run(unet, inputs, timesteps, dtype, device, max_batch)
            gain, passes_run = None, inputs.shape[0]
            if bool(torch.isfinite(outputs).all()):
                fits = tuple(fit_pass(spec, out, eps, x0) for spec, out in zip((vp, flow, terminal), outputs,
                                                                                strict=True))
                passthrough = noise_passthrough(outputs[2], eps)
                gram = gram_matrix(eps, x0)
                x0_errors = {h: reading_x0_error(h, fits[1] if h == "flow" else fits[0], gram) for h in HYPOTHESES}
            else:
                fits, passthrough = (vp, flow, terminal), math.nan
                x0_errors = dict.fromkeys(HYPOTHESES, math.nan)
            errors = {h: reading_error(x0_errors[h], passthrough, h) for h in HYPOTHESES}
            r2 = {h: (fits[1] if h == "flow" else fits[0]).r2 for h in HYPOTHESES}
            prediction, margin, reason = decide_prediction(errors, r2)
            if ztsnr_hint and prediction == "v":
                direction = uniform_direction(eps.shape)
                shifted, extra = _run(unet, eps + TERMINAL_SHIFT * direction, timesteps[2:], dtype, device,
                                      max_batch)
                gain = terminal_gain(shifted, outputs[2:], direction, TERMINAL_SHIFT)
                calls, passes_run = calls + extra, passes_run + 1
    finally:
        for module, training in flags:
            module.training = training
    result = ProbeResult(
        prediction=prediction, margin=float(margin), ztsnr=decide_ztsnr(prediction, gain),
        fit_quality=float(r2.get(prediction, max(r2.values()))), reading_error=errors, x0_error=x0_errors,
        terminal_passthrough=passthrough, terminal_gain=gain, fits=fits, forward_passes=int(passes_run),
        calls=calls, latent_shape=tuple(x0.shape), dtype=str(dtype).removeprefix("torch."), reason=reason,
        thresholds={"min_fit_r2": MIN_FIT_R2, "max_reading_error": MAX_READING_ERROR, "min_margin": MIN_MARGIN,
                    "ztsnr_max_terminal_gain": ZTSNR_MAX_TERMINAL_GAIN,
                    "non_ztsnr_min_terminal_gain": NON_ZTSNR_MIN_TERMINAL_GAIN})
    logger.info("%s", result.summary())
    return result
