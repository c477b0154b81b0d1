"""The pack's ComfyUI nodes on the V3 schema: each ``define_schema`` is data (ids, inputs with tooltips and ranges,
description), each ``execute`` a few lines of glue calling the host-free functions of the sibling modules.

Imported only inside ComfyUI (the root ``comfy_entrypoint``). The API is pinned to ``comfy_api.v0_0_2``, as ComfyUI's
V3 migration guide advises for packs (``latest`` moves without warning); ComfyUI v0.3.48 is the first release
that exports ``io`` and ``ComfyExtension`` there. Node ids and input names, order and defaults are those of the
pack's V1 nodes, so saved workflows and API prompts keep loading; inputs added since come last and are optional.
"""

from __future__ import annotations

import dataclasses

from comfy_api.v0_0_2 import ComfyExtension, io

from ..vpred_core.sampling.cfg import DEFAULT_RESCALE_PHI, RESCALE_SPACE_IDS
from ..vpred_core.sampling.denoiser import FIRST_STEP_IDS
from ..vpred_core.sampling.schedules import (
    BETA_SCHEDULE_IDS,
    NUM_TRAIN_TIMESTEPS,
    SD_LINEAR_END,
    SD_LINEAR_START,
    SPACING_IDS,
    TERMINAL_IDS,
)
from ..vpred_core.sampling.uncond import UNCOND_MODE_IDS
from ..vpred_core.settings import AUTO, PREDICTION_SETTING_IDS, ZTSNR_SETTING_IDS
from .cfg_rescale import SIGMA_UNBOUNDED, make_post_cfg_function
from .common import CATEGORY, display_name, node_id
from .loader import checkpoint_names, checkpoint_path, detect_prediction_type, load_checkpoint, source_fingerprint
from .model_sampling import DEFAULT_TERMINAL, apply_model_sampling, settings_from_inputs
from .probe import DEFAULT_PROBE_MODE, PROBE_MODES
from .trailing_schedule import SCHEDULER_NAME, register_trailing_scheduler, schedule_sigmas
from .uncond import apply_uncond_mode, negative_conditioning

# Outputs carry only a display name (the V1 RETURN_NAMES): ComfyUI before v0.4 rejects an output id equal to an input
# id ("model" in, "model" out). Widget ranges are the V1 nodes' values.
MIN_TIMESTEPS = 2
MAX_TIMESTEPS = 10000
MIN_BETA = 0.00001
MAX_BETA = 0.5
BETA_STEP = 0.00001
BETA_ROUND = 0.000001
MAX_STEPS = 10000  # as ComfyUI's BasicScheduler; more steps than timesteps continue like its normal scheduler
DEFAULT_STEPS = 20
DENOISE_STEP = 0.01
PHI_STEP = 0.01
PERCENT_STEP = 0.001
SIGMA_STEP = 0.01
# The V1 terminal choices first (saved workflows keep their index), the exact terminal added after them.
COMFY_TERMINAL_IDS = tuple(t for t in TERMINAL_IDS if t != "exact") + ("exact",)
SETUP_RESCALE_SPACE = "v"
# Schema fields newer ComfyUI releases add (v0.8.0's io.Schema has no search_aliases): passed only where they exist.
SCHEMA_FIELDS = frozenset(f.name for f in dataclasses.fields(io.Schema))
COMMON_ALIASES = ("vpred", "v-pred", "v prediction", "zsnr", "ztsnr", "zero terminal snr")

PATCHED_MODEL_TOOLTIP = "A patched clone of the input model."
MODEL_TOOLTIP = "The diffusion model to patch (it is cloned, never changed in place)."
PREDICTION_TOOLTIP = ("What the UNet predicts: 'v' (v-prediction), 'eps' (noise), or 'auto' = the checkpoint's "
                      "detected type (this pack's loader, else ComfyUI's own detection).")
ZTSNR_TOOLTIP = ("Zero terminal SNR (Lin et al. 2023, Alg. 1): 'on' rescales the schedule so the last step is pure "
                 "noise (sigma_max 4518.76 with the host clamp); 'auto' uses the detected flag.")
BETA_TOOLTIP = ("Training beta schedule. 'auto' keeps the detected one (loader inspection or the model config); "
                "otherwise linear_start/linear_end/timesteps below are used. SD uses scaled_linear 0.00085..0.012.")
TERMINAL_TOOLTIP = ("What the ZTSNR terminal step stores: host_clamp abar_T = 4.897e-8 (sigma_max 4518.76, as "
                    "ComfyUI/A1111) or diffusers abar_T = 2^-24 (sigma_max 4096); exact abar_T = 0 (sigma = inf, "
                    "Lin et al.'s true ZTSNR; v only): the first step is then x0 = -v(noise, T), and schedulers that "
                    "take a sigma_max (karras, exponential, normal...) start at the last finite sigma.")
FIRST_STEP_TOOLTIP = ("How the step from SNR ~0 (a schedule starting at sigma_max with ZTSNR) is taken: 'auto' = a "
                      "first-order DDIM step, then the chosen sampler on the rest (second-order and ancestral "
                      "samplers such as heun or dpm_2_ancestral diverge otherwise); 'ddim' = always, whatever the "
                      "start; 'sampler' = the sampler's own step (the exact terminal still takes the DDIM step).")
MODE_TOOLTIP = ("What an EMPTY negative becomes: zero = zeroed conditioning (ConditioningZeroOut), comma = encode "
                "',', host_default = encode '' as ComfyUI does. A non-empty negative is always encoded as written.")
CONDITIONING_TOOLTIP = "The negative (unconditional) conditioning for the sampler."
PROBE_TOOLTIP = ("Weight probe (a few UNet calls, cached per file): when_unstated = only when the file states no "
                 "prediction type (merges, conversions); always = its eps / v verdict overrides the file's "
                 "statement; off = never. x0 / flow / unknown verdicts are reported, never applied.")
LOADER_OUTPUT_TOOLTIPS = (
    "The diffusion model, with the detected prediction type / ZTSNR / betas applied.",
    "The CLIP model used for encoding text prompts.",
    "The VAE model used for encoding and decoding images to and from latent space.",
    "What was detected (state-dict markers, safetensors metadata, YAML beside the file) and what was applied.",
)
SIGMAS_TOOLTIP = ("steps + 1 sigmas ending in 0; with trailing/linspace and denoise 1 the first is exactly the model's "
                  "sigma_max, so the initial noise is scaled by sqrt(1 + sigma_max^2).")


def schema(name: str, display: str, description: str, inputs: list, outputs: list, aliases: tuple = (),
           **extra) -> io.Schema:
    """A Schema with the pack's id prefix, display prefix and category; search aliases where ComfyUI supports them."""
    if "search_aliases" in SCHEMA_FIELDS:
        extra["search_aliases"] = list(COMMON_ALIASES + aliases)
    return io.Schema(node_id=node_id(name), display_name=display_name(display), category=CATEGORY,
                     description=description, inputs=inputs, outputs=outputs, **extra)


def model_output() -> io.Model.Output:
    return io.Model.Output(display_name="model", tooltip=PATCHED_MODEL_TOOLTIP)


def first_step_input() -> io.Combo.Input:
    return io.Combo.Input("first_step", options=list(FIRST_STEP_IDS), default=AUTO, optional=True,
                          tooltip=FIRST_STEP_TOOLTIP)


def prediction_inputs() -> list:
    """Inputs shared by the Model Sampling and Setup nodes."""
    return [
        io.Model.Input("model", tooltip=MODEL_TOOLTIP),
        io.Combo.Input("prediction", options=list(PREDICTION_SETTING_IDS), default="v", tooltip=PREDICTION_TOOLTIP),
        io.Combo.Input("ztsnr", options=list(ZTSNR_SETTING_IDS), default="on", tooltip=ZTSNR_TOOLTIP),
    ]


class CheckpointLoader(io.ComfyNode):
    """Load Checkpoint + header inspection + automatic model sampling."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "CheckpointLoader", "Load Checkpoint (auto-configure)",
            "Like Load Checkpoint, but reads the file header (v_pred/ztsnr marker keys, modelspec/kohya metadata, a "
            "<name>.yaml beside the checkpoint) without loading tensors, and applies the detected v-prediction, zero "
            "terminal SNR and beta schedule, for SD1.x too. Outputs a report string.",
            inputs=[
                io.Combo.Input("ckpt_name", options=checkpoint_names(),
                               tooltip="The checkpoint (model) to load and inspect."),
                first_step_input(),
                io.Combo.Input("probe", options=list(PROBE_MODES), default=DEFAULT_PROBE_MODE, optional=True,
                               tooltip=PROBE_TOOLTIP),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip=LOADER_OUTPUT_TOOLTIPS[0]),
                io.Clip.Output(display_name="clip", tooltip=LOADER_OUTPUT_TOOLTIPS[1]),
                io.Vae.Output(display_name="vae", tooltip=LOADER_OUTPUT_TOOLTIPS[2]),
                io.String.Output(display_name="report", tooltip=LOADER_OUTPUT_TOOLTIPS[3]),
            ],
            aliases=("load checkpoint", "checkpoint loader", "auto configure", "noobai"),
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name, first_step=AUTO, probe=DEFAULT_PROBE_MODE):
        return source_fingerprint(checkpoint_path(ckpt_name)), first_step, probe

    @classmethod
    def execute(cls, ckpt_name, first_step=AUTO, probe=DEFAULT_PROBE_MODE) -> io.NodeOutput:
        return io.NodeOutput(*load_checkpoint(ckpt_name, first_step, probe))


class DetectPredictionType(io.ComfyNode):
    """The weight probe for a MODEL from anywhere: MODEL -> MODEL (the verdict applied) + report."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "DetectPredictionType", "Detect Prediction Type",
            "Tells eps from v-prediction (and flags x0 and rectified-flow models) from a few UNet calls on a known "
            "latent and noise, for models whose file states nothing (merges, other loaders, conversions). An eps or "
            "v verdict is applied as model sampling (ZTSNR from the probe's hint when decisive); the report says "
            "what was measured and the margin. Connect the checkpoint's CLIP for the most reliable reading.",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                io.Clip.Input("clip", optional=True, tooltip="Text encoder (the probe uses the empty prompt's "
                              "encoding; zeros without it)."),
                first_step_input(),
            ],
            outputs=[model_output(), io.String.Output(display_name="report",
                                                      tooltip="What the probe measured, its verdict and margin.")],
            aliases=("probe", "detect v-pred", "prediction type", "is this v-pred"),
        )

    @classmethod
    def execute(cls, model, clip=None, first_step=AUTO) -> io.NodeOutput:
        return io.NodeOutput(*detect_prediction_type(model, clip, first_step))


class ModelSampling(io.ComfyNode):
    """Patch a MODEL's sampling: prediction type, ZTSNR, beta schedule, terminal handling and the first step."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "ModelSampling", "Model Sampling",
            "Sets how ComfyUI samples this model: v-prediction or eps, zero terminal SNR on/off/auto and the beta "
            "schedule (unlike the built-in ModelSamplingDiscrete it controls linear_end, e.g. 0.024). Works for SD1.x, "
            "SD2.x and SDXL UNets. Sigmas come from the core's float64 schedule.",
            inputs=prediction_inputs() + [
                io.Combo.Input("beta_schedule", options=[AUTO, *BETA_SCHEDULE_IDS], default=AUTO,
                               tooltip=BETA_TOOLTIP),
                io.Float.Input("linear_start", default=SD_LINEAR_START, min=MIN_BETA, max=MAX_BETA, step=BETA_STEP,
                               round=BETA_ROUND, tooltip="First beta (used unless beta_schedule is 'auto')."),
                io.Float.Input("linear_end", default=SD_LINEAR_END, min=MIN_BETA, max=MAX_BETA, step=BETA_STEP,
                               round=BETA_ROUND,
                               tooltip="Last beta; some v-pred finetunes use 0.024 (used unless 'auto')."),
                io.Int.Input("timesteps", default=NUM_TRAIN_TIMESTEPS, min=MIN_TIMESTEPS, max=MAX_TIMESTEPS,
                             tooltip="Number of training timesteps T (used unless beta_schedule is 'auto')."),
                io.Combo.Input("terminal", options=list(COMFY_TERMINAL_IDS), default=DEFAULT_TERMINAL,
                               tooltip=TERMINAL_TOOLTIP),
                first_step_input(),
            ],
            outputs=[model_output()],
            aliases=("model sampling discrete", "v_prediction", "exact terminal", "beta schedule"),
        )

    @classmethod
    def execute(cls, model, prediction, ztsnr, beta_schedule, linear_start, linear_end, timesteps, terminal,
                first_step=AUTO) -> io.NodeOutput:
        settings, beta_auto = settings_from_inputs(prediction, ztsnr, beta_schedule, linear_start, linear_end,
                                                   timesteps, terminal)
        return io.NodeOutput(apply_model_sampling(model, settings, beta_auto, first_step)[0])


class TrailingSchedule(io.ComfyNode):
    """SIGMAS with trailing (or linspace/leading) timestep spacing from the model's own sigma table."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "TrailingSchedule", "Trailing Schedule",
            "Sigmas for SamplerCustom with diffusers-style timestep spacing (Lin et al. 2023 sec. 3.3). 'trailing' "
            "starts at t = 999, where a ZTSNR model has SNR 0. Also available in KSampler as the scheduler "
            f"'{SCHEDULER_NAME}'.",
            inputs=[
                io.Model.Input("model", tooltip="Model whose (patched) sigma table the schedule is taken from."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS, tooltip="Number of sampling steps."),
                io.Combo.Input("spacing", options=list(SPACING_IDS), default="trailing",
                               tooltip="Timestep spacing: trailing [999, 949, ...], linspace [999, ..., 0], leading "
                               "[950, ..., 0], leading_plus_one [951, ..., 1] (webui DDIM)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=DENOISE_STEP,
                               tooltip="Fraction of the schedule to run (img2img); keeps the last steps of "
                               "int(steps / denoise) steps, as BasicScheduler does."),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas", tooltip=SIGMAS_TOOLTIP)],
            aliases=("trailing", SCHEDULER_NAME, "timestep spacing", "scheduler", "sigmas"),
        )

    @classmethod
    def execute(cls, model, steps, spacing, denoise) -> io.NodeOutput:
        return io.NodeOutput(schedule_sigmas(model.get_model_object("model_sampling"), steps, spacing, denoise))


class CfgRescale(io.ComfyNode):
    """Rescale classifier-free guidance (phi, space, optional window) without using the single cfg-function slot."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "CFGRescale", "CFG Rescale",
            "CFG rescale (Lin et al. 2023, Algorithm 2): x = phi * x_cfg * std(x_cond) / std(x_cfg) + (1 - phi) * "
            "x_cfg, std per sample over all non-batch dims, in the chosen space (v by default, as ComfyUI's "
            "RescaleCFG). Runs as a post-CFG function on denoised values in float64, so it composes with other CFG "
            "patches and stays exact at sigma 4518; a no-op at cfg 1.",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                io.Float.Input("phi", default=DEFAULT_RESCALE_PHI, min=0.0, max=1.0, step=PHI_STEP,
                               tooltip="Rescale strength: 0 = plain CFG, 1 = full rescale; 0.7 is the paper's value."),
                io.Combo.Input("space", options=list(RESCALE_SPACE_IDS), default="v",
                               tooltip="Space whose std is matched: v (v-prediction output, as ComfyUI RescaleCFG), "
                               "x0 (denoised) or eps (noise, as diffusers on eps models)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=PERCENT_STEP, optional=True,
                               tooltip="Apply from this fraction of the schedule (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=PERCENT_STEP, optional=True,
                               tooltip="Apply up to this fraction of the schedule (1 = last step)."),
                io.Float.Input("sigma_high", default=SIGMA_UNBOUNDED, min=0.0, max=SIGMA_UNBOUNDED, step=SIGMA_STEP,
                               optional=True, tooltip=f"Apply only at sigma <= this (>= {SIGMA_UNBOUNDED:g} = no "
                               "bound)."),
                io.Float.Input("sigma_low", default=0.0, min=0.0, max=SIGMA_UNBOUNDED, step=SIGMA_STEP, optional=True,
                               tooltip="Apply only at sigma >= this."),
            ],
            outputs=[model_output()],
            aliases=("rescale cfg", "cfg rescale", "rescalecfg", "guidance rescale", "rescale guidance"),
        )

    @classmethod
    def execute(cls, model, phi, space, start_percent=0.0, end_percent=1.0, sigma_high=SIGMA_UNBOUNDED,
                sigma_low=0.0) -> io.NodeOutput:
        patched = model.clone()
        patched.set_model_sampler_post_cfg_function(
            make_post_cfg_function(phi, space, start_percent, end_percent, sigma_high, sigma_low))
        return io.NodeOutput(patched)


class NegativePrompt(io.ComfyNode):
    """CLIP Text Encode for the negative prompt, with an explicit empty-negative mode."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "NegativePrompt", "Negative Prompt (uncond mode)",
            "Encodes a negative prompt. When it is empty, 'mode' picks the unconditional input many v-pred/ZTSNR "
            "models are sensitive to: zeroed conditioning, ',' or ComfyUI's encoded ''.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP text encoder."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="",
                                tooltip="Negative prompt; leave empty to use the mode."),
                io.Combo.Input("mode", options=list(UNCOND_MODE_IDS), default="zero", tooltip=MODE_TOOLTIP),
            ],
            outputs=[io.Conditioning.Output(display_name="negative", tooltip=CONDITIONING_TOOLTIP)],
            aliases=("negative prompt", "uncond", "empty negative", "conditioning zero out", "clip text encode"),
        )

    @classmethod
    def execute(cls, clip, text, mode) -> io.NodeOutput:
        return io.NodeOutput(negative_conditioning(clip, text, mode))


class UncondMode(io.ComfyNode):
    """Apply an uncond mode to an existing (empty-prompt) negative CONDITIONING."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "UncondMode", "Uncond Mode (conditioning)",
            "Treats the incoming CONDITIONING as the encoding of an empty negative and replaces it per mode: zero = "
            "ConditioningZeroOut, comma = re-encode ',' with the CLIP input (required for comma), host_default = "
            "pass through unchanged.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="Negative conditioning of an empty prompt."),
                io.Combo.Input("mode", options=list(UNCOND_MODE_IDS), default="zero", tooltip=MODE_TOOLTIP),
                io.Clip.Input("clip", optional=True, tooltip="Text encoder, needed only for mode 'comma'."),
            ],
            outputs=[io.Conditioning.Output(display_name="negative", tooltip=CONDITIONING_TOOLTIP)],
            aliases=("uncond", "empty negative", "conditioning zero out", "negative"),
        )

    @classmethod
    def execute(cls, conditioning, mode, clip=None) -> io.NodeOutput:
        return io.NodeOutput(apply_uncond_mode(conditioning, mode, clip))


class Setup(io.ComfyNode):
    """Model sampling + CFG rescale in one node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            "Setup", "Setup (sampling + CFG rescale)",
            "Sensible defaults for NoobAI-style v-pred models: v-prediction, zero terminal SNR, the detected beta "
            "schedule, and CFG rescale phi 0.7 in v-space. Pair it with the trailing schedule (or KSampler scheduler "
            f"'{SCHEDULER_NAME}') and a zero or ',' negative.",
            inputs=prediction_inputs() + [
                io.Float.Input("rescale_phi", default=DEFAULT_RESCALE_PHI, min=0.0, max=1.0, step=PHI_STEP,
                               tooltip="CFG rescale strength in v-space (0 disables it)."),
                first_step_input(),
            ],
            outputs=[model_output()],
            aliases=("rescale cfg", "noobai", "setup"),
        )

    @classmethod
    def execute(cls, model, prediction, ztsnr, rescale_phi, first_step=AUTO) -> io.NodeOutput:
        settings, beta_auto = settings_from_inputs(prediction, ztsnr)
        patched = apply_model_sampling(model, settings, beta_auto, first_step)[0]
        if rescale_phi > 0.0:
            patched = patched.clone() if patched is model else patched
            patched.set_model_sampler_post_cfg_function(make_post_cfg_function(rescale_phi, SETUP_RESCALE_SPACE))
        return io.NodeOutput(patched)


NODES = [CheckpointLoader, ModelSampling, TrailingSchedule, CfgRescale, NegativePrompt, UncondMode, Setup,
         DetectPredictionType]


class VPredZTSNRExtension(ComfyExtension):
    """The pack's V3 extension: its node list (ComfyUI v0.8.0 never calls ``on_load``, so the scheduler registry
    entry is added by the entry point that builds this object)."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


def extension() -> VPredZTSNRExtension:
    """Register ``vpred_trailing`` in ComfyUI's scheduler registry and return the extension."""
    register_trailing_scheduler()
    return VPredZTSNRExtension()
