"""One-node V-Pred setup: model sampling (v-prediction + ZTSNR) and CFG rescale with NoobAI-style defaults."""

from __future__ import annotations

from ..vpred_core.sampling.cfg import DEFAULT_RESCALE_PHI
from ..vpred_core.settings import AUTO
from .cfg_rescale import PHI_STEP, make_post_cfg_function
from .common import CATEGORY, PATCHED_MODEL_TOOLTIP, display_name, float_input, node_id
from .model_sampling import model_sampling_inputs, settings_from_inputs
from .model_sampling_glue import patch_model_sampling

SETUP_RESCALE_SPACE = "v"


class VPredSetup:
    """Model sampling + CFG rescale in one node."""

    NODE_ID = node_id("Setup")
    DISPLAY_NAME = display_name("Setup (sampling + CFG rescale)")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (PATCHED_MODEL_TOOLTIP,)
    FUNCTION = "patch"
    DESCRIPTION = ("Sensible defaults for NoobAI-style v-pred models: v-prediction, zero terminal SNR, the detected "
                   "beta schedule, and CFG rescale phi 0.7 in v-space. Pair it with the trailing schedule "
                   "(or KSampler scheduler 'vpred_trailing') and a zero or ',' negative.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = model_sampling_inputs(include_schedule=False)
        inputs["rescale_phi"] = float_input(DEFAULT_RESCALE_PHI, 0.0, 1.0, PHI_STEP,
                                            "CFG rescale strength in v-space (0 disables it).")
        return {"required": inputs}

    def patch(self, model, prediction, ztsnr, rescale_phi):
        settings, _ = settings_from_inputs(prediction, ztsnr, AUTO)
        patched, _ = patch_model_sampling(model, settings, beta_auto=True)
        if rescale_phi > 0.0:
            patched.set_model_sampler_post_cfg_function(make_post_cfg_function(rescale_phi, SETUP_RESCALE_SPACE))
        return (patched,)
