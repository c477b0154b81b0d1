"""V-Pred Model Sampling node: prediction type, ZTSNR and the beta schedule of a MODEL."""

from __future__ import annotations

from ..vpred_core.sampling.schedules import (
    BETA_SCHEDULE_IDS,
    NUM_TRAIN_TIMESTEPS,
    SD_LINEAR_END,
    SD_LINEAR_START,
    TERMINAL_IDS,
)
from ..vpred_core.settings import AUTO, PREDICTION_SETTING_IDS, ZTSNR_SETTING_IDS, ModelSamplingSettings
from .common import (
    BETA_ROUND,
    BETA_STEP,
    CATEGORY,
    MAX_TIMESTEPS,
    PATCHED_MODEL_TOOLTIP,
    combo,
    display_name,
    float_input,
    int_input,
    model_input,
    node_id,
)
from .model_sampling_glue import patch_model_sampling

# ComfyUI samplers need a finite sigma_max, so the exact (abar_T = 0) terminal is not offered here.
COMFY_TERMINAL_IDS = tuple(t for t in TERMINAL_IDS if t != "exact")
BETA_SCHEDULE_CHOICES = (AUTO,) + BETA_SCHEDULE_IDS
DEFAULT_BETA_SCHEDULE = BETA_SCHEDULE_IDS[0]
MIN_TIMESTEPS = 2
MIN_BETA = 0.00001
MAX_BETA = 0.5

PREDICTION_TOOLTIP = ("What the UNet predicts: 'v' (v-prediction), 'eps' (noise), or 'auto' = the checkpoint's "
                      "detected type (this pack's loader, else ComfyUI's own detection).")
ZTSNR_TOOLTIP = ("Zero terminal SNR (Lin et al. 2023, Alg. 1): 'on' rescales the schedule so the last step is pure "
                 "noise (sigma_max 4518.76 with the host clamp); 'auto' uses the detected flag.")
BETA_TOOLTIP = ("Training beta schedule. 'auto' keeps the detected one (loader inspection or the model config); "
                "otherwise linear_start/linear_end/timesteps below are used. SD uses scaled_linear 0.00085..0.012.")
TERMINAL_TOOLTIP = ("What the ZTSNR terminal step stores: host_clamp abar_T = 4.897e-8 (sigma_max 4518.76, as "
                    "ComfyUI/A1111) or diffusers abar_T = 2^-24 (sigma_max 4096).")


def model_sampling_inputs(include_schedule: bool = True) -> dict:
    """Input specs shared by the Model Sampling and Setup nodes."""
    inputs = {
        "model": model_input(),
        "prediction": combo(PREDICTION_SETTING_IDS, "v", PREDICTION_TOOLTIP),
        "ztsnr": combo(ZTSNR_SETTING_IDS, "on", ZTSNR_TOOLTIP),
    }
    if include_schedule:
        inputs.update({
            "beta_schedule": combo(BETA_SCHEDULE_CHOICES, AUTO, BETA_TOOLTIP),
            "linear_start": float_input(SD_LINEAR_START, MIN_BETA, MAX_BETA, BETA_STEP,
                                        "First beta (used unless beta_schedule is 'auto').", round=BETA_ROUND),
            "linear_end": float_input(SD_LINEAR_END, MIN_BETA, MAX_BETA, BETA_STEP,
                                      "Last beta; some v-pred finetunes use 0.024 (used unless 'auto').",
                                      round=BETA_ROUND),
            "timesteps": int_input(NUM_TRAIN_TIMESTEPS, MIN_TIMESTEPS, MAX_TIMESTEPS,
                                   "Number of training timesteps T (used unless beta_schedule is 'auto')."),
            "terminal": combo(COMFY_TERMINAL_IDS, "host_clamp", TERMINAL_TOOLTIP),
        })
    return inputs


def settings_from_inputs(prediction, ztsnr, beta_schedule=AUTO, linear_start=SD_LINEAR_START,
                         linear_end=SD_LINEAR_END, timesteps=NUM_TRAIN_TIMESTEPS, terminal="host_clamp"):
    """(ModelSamplingSettings, beta_auto) from node inputs (validated by the core)."""
    beta_auto = beta_schedule == AUTO
    settings = ModelSamplingSettings(
        prediction=prediction,
        ztsnr=ztsnr,
        beta_schedule=DEFAULT_BETA_SCHEDULE if beta_auto else beta_schedule,
        linear_start=float(linear_start),
        linear_end=float(linear_end),
        timesteps=int(timesteps),
        terminal=terminal,
    )
    return settings, beta_auto


class ModelSampling:
    """Patch a MODEL's sampling: prediction type, ZTSNR, beta schedule and terminal handling."""

    NODE_ID = node_id("ModelSampling")
    DISPLAY_NAME = display_name("Model Sampling")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (PATCHED_MODEL_TOOLTIP,)
    FUNCTION = "patch"
    DESCRIPTION = ("Sets how ComfyUI samples this model: v-prediction or eps, zero terminal SNR on/off/auto and the "
                   "beta schedule (unlike the built-in ModelSamplingDiscrete it controls linear_end, e.g. 0.024). "
                   "Works for SD1.x, SD2.x and SDXL UNets. Sigmas come from the core's float64 schedule.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": model_sampling_inputs()}

    def patch(self, model, prediction, ztsnr, beta_schedule, linear_start, linear_end, timesteps, terminal):
        settings, beta_auto = settings_from_inputs(
            prediction, ztsnr, beta_schedule, linear_start, linear_end, timesteps, terminal)
        patched, _ = patch_model_sampling(model, settings, beta_auto)
        return (patched,)
