"""ComfyUI model sampling of the pack: what a MODEL already is, the core's resolution of ``auto`` settings, and the
model_sampling object ComfyUI samples with (sigmas from the core's float64 schedule; the exact ZTSNR terminal).

ComfyUI is imported lazily inside functions, so this module imports (and is tested) without it.

Exact terminal (``terminal: exact``, abar_T = 0, sigma_T = inf) as ComfyUI sees it:
- the sigma table (``model_sampling.sigmas``) ends in +inf, so table-based schedulers (``simple``, ``beta``,
  ``vpred_trailing``, the Trailing Schedule node) start at sigma = inf;
- ``sigma_max`` reports the largest finite sigma, sigma_{T-1} (2254.24 for SD betas), which is what parametric
  schedulers (``karras``, ``exponential``, ``kl_optimal``, ``linear_quadratic``) and ``normal`` / ``sgm_uniform``
  (through ``timestep(sigma_max)``) start from: a finite start at SNR ~2e-7, never NaN;
- at sigma = inf the VE sample x holds the VP sample z itself (the core's convention,
  :func:`vpred_core.sampling.prediction.vp_sample`): ``noise_scaling`` returns the noise, ``calculate_input`` returns
  x, ``timestep`` is T - 1, ``calculate_denoised`` is x0 = -v (Lin et al. 2023 sec. 3.2), ``percent_to_sigma(0)`` is
  inf (so timestep ranges starting at 0 % include the first step); at every finite sigma the object computes exactly
  what ComfyUI's ``ModelSamplingDiscrete`` + ``V_PREDICTION`` compute;
- no sampler can step from sigma = inf: the first step is the core's DDIM step (:mod:`.first_step`), installed with
  the exact terminal whatever ``first_step`` says.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from ..vpred_core.sampling.denoiser import ZTSNR_SIGMA_THRESHOLD
from ..vpred_core.sampling.prediction import append_dims
from ..vpred_core.sampling.schedules import (
    NUM_TRAIN_TIMESTEPS,
    SD_LINEAR_END,
    SD_LINEAR_START,
    ScheduleSpec,
    t_to_sigma,
)
from ..vpred_core.settings import AUTO, Detected, ModelSamplingSettings, SamplingPlan, resolve_model_sampling
from .common import DETECTED_SETTINGS_KEY
from .first_step import first_step_to_install, install_first_step

logger = logging.getLogger(__name__)

# ComfyUI's make_beta_schedule names -> core BETA_SCHEDULE_IDS (ComfyUI "linear" is the SD scaled-linear one).
COMFY_TO_CORE_BETA = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine"}
COMFY_DEFAULT_BETA = "linear"
# The comfy.model_sampling output classes of the discrete models the pack handles, by core prediction id.
COMFY_PREDICTION_CLASSES = {"v": "V_PREDICTION", "eps": "EPS"}
# Methods a plain EPS / V_PREDICTION output class defines; a subclass overriding one (EDM, X0, IMG_TO_IMG, LCM...)
# is another parameterisation.
OUTPUT_METHODS = ("calculate_input", "calculate_denoised", "noise_scaling", "inverse_noise_scaling")
# Methods of ModelSamplingDiscrete's sigma <-> timestep mapping; a subclass overriding one (ModelSamplingDiscreteEDM,
# LCM's ModelSamplingDiscreteDistilled) is not the 1000-step table the pack replaces.
DISCRETE_METHODS = ("timestep", "sigma")
# Class attribute naming the prediction of the pack's own model_sampling classes (the exact-terminal class overrides
# DISCRETE_METHODS and OUTPUT_METHODS but is still a discrete v schedule).
PACK_PREDICTION_ATTR = "vpred_ztsnr_prediction"
HOST_SOURCE = "ComfyUI model detection"
DEFAULT_TERMINAL = "host_clamp"


def _same_methods(obj, base, names) -> bool:
    return all(getattr(type(obj), name, None) is getattr(base, name) for name in names)


def host_prediction(model_sampling) -> str | None:
    """``"v"`` / ``"eps"`` when ComfyUI samples the model as a discrete-timestep v / eps model (ModelSamplingDiscrete
    with its own sigma <-> timestep mapping and the plain V_PREDICTION / EPS output), else None: continuous EDM v
    (``V_PREDICTION_EDM``, CosXL), continuous v, EDM, flow (CONST), x0, LCM... (some subclass V_PREDICTION or EPS,
    none is a discrete schedule the pack could replace)."""
    own = getattr(type(model_sampling), PACK_PREDICTION_ATTR, None)
    if own is not None:
        return own
    import comfy.model_sampling as cms

    if not isinstance(model_sampling, cms.ModelSamplingDiscrete):
        return None
    if not _same_methods(model_sampling, cms.ModelSamplingDiscrete, DISCRETE_METHODS):
        return None
    for prediction, class_name in COMFY_PREDICTION_CLASSES.items():
        output_class = getattr(cms, class_name)
        if isinstance(model_sampling, output_class) and _same_methods(model_sampling, output_class, OUTPUT_METHODS):
            return prediction
    return None


def host_sampling_name(model_sampling) -> str:
    """"ModelSamplingContinuousEDM + V_PREDICTION": the classes ComfyUI combined for this model (for reports)."""
    bases = type(model_sampling).__bases__
    return " + ".join(base.__name__ for base in bases) if bases != (object,) else type(model_sampling).__name__


def left_alone_line(model_sampling) -> str:
    """The report line for a model the pack does not patch."""
    return (f"not applied: ComfyUI samples this model with {host_sampling_name(model_sampling)}, not a discrete "
            "eps/v schedule; kept ComfyUI's model sampling")


def host_detected(model) -> Detected:
    """Settings of a MODEL as ComfyUI loaded it (its model_sampling object and model_config)."""
    ms = model.get_model_object("model_sampling")
    config = getattr(getattr(model, "model", None), "model_config", None)
    sampling_settings = dict(getattr(config, "sampling_settings", None) or {})
    beta = COMFY_TO_CORE_BETA.get(sampling_settings.get("beta_schedule", COMFY_DEFAULT_BETA))
    sigmas = getattr(ms, "sigmas", None)
    ztsnr = getattr(ms, "zsnr", None)
    if ztsnr is None and sigmas is not None:
        ztsnr = float(sigmas[-1]) >= ZTSNR_SIGMA_THRESHOLD
    return Detected(
        prediction=host_prediction(ms),
        ztsnr=None if ztsnr is None else bool(ztsnr),
        beta_schedule=beta,
        linear_start=getattr(ms, "linear_start", None),
        linear_end=getattr(ms, "linear_end", None),
        timesteps=getattr(ms, "num_timesteps", None),
        source=HOST_SOURCE,
    )


def stated_settings(model) -> Detected:
    """What the pack's checkpoint loader found the file (or the probe) to state, recorded on the model; else nothing."""
    recorded = getattr(model, "model_options", {}).get(DETECTED_SETTINGS_KEY)
    return recorded if isinstance(recorded, Detected) else Detected()


def resolve_plan(model, settings: ModelSamplingSettings, beta_auto: bool) -> SamplingPlan:
    """The core's resolution (forced > stated > ComfyUI's own) for a MODEL; ValueError when no prediction is known."""
    plan = resolve_model_sampling(settings, stated_settings(model), host_detected(model), beta_auto)
    if plan.prediction is None:
        raise ValueError("prediction is 'auto' but the model's prediction type is unknown; choose 'v' or 'eps'")
    if plan.prediction not in COMFY_PREDICTION_CLASSES:
        raise ValueError(f"prediction {plan.prediction!r} is not supported by this node; choose 'v' or 'eps'")
    return plan


@functools.cache
def model_sampling_class(prediction: str):
    """ModelSamplingDiscrete combined with ComfyUI's V_PREDICTION or EPS, as the built-in node does."""
    import comfy.model_sampling as cms

    output_class = getattr(cms, COMFY_PREDICTION_CLASSES[prediction])
    return type(f"VPredZTSNRModelSampling_{prediction}", (cms.ModelSamplingDiscrete, output_class),
                {"__module__": __name__, PACK_PREDICTION_ATTR: prediction})


@functools.cache
def exact_terminal_class():
    """Discrete v model_sampling whose table ends at sigma = inf (see the module docstring); finite sigmas go through
    ComfyUI's own ModelSamplingDiscrete + V_PREDICTION code unchanged."""
    import comfy.model_sampling as cms

    def at_inf(sigma, like: torch.Tensor):
        """(mask of sigma = inf shaped for ``like``, sigma with inf replaced by 1 for the host's finite formulas)."""
        infinite = torch.isposinf(append_dims(sigma, like.ndim))
        return infinite, torch.where(torch.isposinf(sigma), torch.ones_like(sigma), sigma)

    class VPredZTSNRModelSampling_v_exact(cms.ModelSamplingDiscrete, cms.V_PREDICTION):
        @property
        def sigma_max(self):
            """Largest finite sigma (sigma_{T-1}): what parametric schedulers and max_denoise compare against."""
            return self.sigmas[-2]

        def timestep(self, sigma):
            """T - 1 at inf; the host's nearest-timestep lookup elsewhere (fed a finite sigma, so no inf - inf)."""
            infinite = torch.isposinf(sigma)
            t = super().timestep(torch.where(infinite, self.sigmas[-2].to(sigma), sigma))
            return torch.where(infinite, torch.full_like(t, self.sigmas.shape[0] - 1), t)

        def sigma(self, timestep):
            """Log-sigma interpolation (the host's) that takes whole timesteps from the table: inf at t = T - 1,
            never 0 * inf."""
            t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=self.sigmas.shape[0] - 1)
            return t_to_sigma(t, self.log_sigmas).to(timestep.device)

        def percent_to_sigma(self, percent):
            return math.inf if percent <= 0.0 else super().percent_to_sigma(percent)

        def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
            infinite, finite_sigma = at_inf(sigma, noise)
            return torch.where(infinite, noise, super().noise_scaling(finite_sigma, noise, latent_image, max_denoise))

        def calculate_input(self, sigma, noise):
            infinite, finite_sigma = at_inf(sigma, noise)
            return torch.where(infinite, noise, super().calculate_input(finite_sigma, noise))

        def calculate_denoised(self, sigma, model_output, model_input):
            infinite, finite_sigma = at_inf(sigma, model_output)
            finite = super().calculate_denoised(finite_sigma, model_output, model_input)
            return torch.where(infinite, -model_output, finite)  # x0 = alpha z - s v = -v at alpha = 0, s = 1

    VPredZTSNRModelSampling_v_exact.__module__ = __name__
    setattr(VPredZTSNRModelSampling_v_exact, PACK_PREDICTION_ATTR, "v")
    return VPredZTSNRModelSampling_v_exact


def build_model_sampling(prediction: str, spec: ScheduleSpec):
    """A ComfyUI model_sampling object whose sigmas are ``spec.sigmas()`` (core float64, stored as float32)."""
    exact = spec.ztsnr and spec.terminal == "exact"
    if exact and prediction != "v":
        raise ValueError("terminal 'exact' (abar_T = 0) needs v-prediction: an eps model has no x0 at SNR 0 "
                         "(x0 = (z - s*eps)/alpha divides by alpha = 0); use 'host_clamp'")
    sampling = (exact_terminal_class() if exact else model_sampling_class(prediction))(None)
    sampling.set_sigmas(spec.sigmas())
    sampling.num_timesteps = spec.timesteps
    sampling.linear_start, sampling.linear_end, sampling.zsnr = spec.linear_start, spec.linear_end, spec.ztsnr
    return sampling


def apply_model_sampling(model, settings: ModelSamplingSettings, beta_auto: bool = True, first_step: str = AUTO):
    """Patch a clone of ``model`` (object patch "model_sampling", plus the first-step sampler wrapper where
    :func:`first_step_to_install` says so); returns (model, plan or None, one-line summary). A model ComfyUI does not
    sample as a discrete eps/v schedule is returned unchanged (plan None)."""
    ms = model.get_model_object("model_sampling")
    if host_prediction(ms) is None:
        line = left_alone_line(ms)
        logger.warning("V-Pred ZTSNR model sampling %s", line)
        return model, None, line
    plan = resolve_plan(model, settings, beta_auto)
    patched = model.clone()
    patched.add_object_patch("model_sampling", build_model_sampling(plan.prediction, plan.spec))
    mode = first_step_to_install(plan.ztsnr, plan.ztsnr and plan.spec.terminal == "exact", first_step)
    install_first_step(patched, mode)
    line = f"applied: {describe(plan)}; first step: {mode or 'the sampler'} ({plan.describe_sources()})"
    logger.debug("model sampling %s", line)
    return patched, plan, line


def settings_from_inputs(prediction, ztsnr, beta_schedule=AUTO, linear_start=SD_LINEAR_START,
                         linear_end=SD_LINEAR_END, timesteps=NUM_TRAIN_TIMESTEPS, terminal=DEFAULT_TERMINAL):
    """(ModelSamplingSettings, beta_auto) from node inputs (validated by the core); beta_schedule 'auto' keeps the
    detected betas and ignores linear_start / linear_end / timesteps."""
    beta_auto = beta_schedule == AUTO
    settings = ModelSamplingSettings(
        prediction=prediction,
        ztsnr=ztsnr,
        beta_schedule=ModelSamplingSettings.beta_schedule if beta_auto else beta_schedule,
        linear_start=float(linear_start),
        linear_end=float(linear_end),
        timesteps=int(timesteps),
        terminal=terminal,
    )
    return settings, beta_auto


def describe(plan: SamplingPlan) -> str:
    """One line describing an applied model sampling."""
    prediction, spec = plan.prediction, plan.spec
    ztsnr = f"ZTSNR on ({spec.terminal}, sigma_max {spec.sigma_max:.2f})" if spec.ztsnr else "ZTSNR off"
    return (f"prediction={prediction}, {ztsnr}, betas={spec.beta_schedule} "
            f"{spec.linear_start:g}..{spec.linear_end:g} over {spec.timesteps} steps")
