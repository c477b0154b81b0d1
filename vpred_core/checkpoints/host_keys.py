"""The tensor names and metadata keys a checkpoint states its prediction type and ZTSNR with, and the values the
tools that write them use. Read by :mod:`.inspection`, written by :mod:`.stamp` (no torch import here).

Who reads what (ComfyUI v0.8.0, A1111 dev 1937682a, reForge 3b56b268, Forge dfdcbab6):

- ``v_pred`` / ``ztsnr`` tensors, by presence only: ComfyUI ``comfy/supported_models.py`` ``SDXL.model_type``
  (SDXL base only); A1111 dev ``modules/sd_models_config.py`` (``v_pred``, SDXL) and ``modules/sd_models.py``
  (``ztsnr``, any model); reForge ``ldm_patched/modules/supported_models.py`` and
  ``modules_forge/forge_loader.py``; Forge ``huggingface_guess`` ``SDXL.model_type`` and ``backend/loader.py``.
  ComfyUI's CheckpointSave writes them as ``torch.tensor([])``: dtype F32, shape [0], no data bytes
  (``comfy_extras/nodes_model_merging.py`` ``save_checkpoint``).
- ``modelspec.predict_key``: written by ComfyUI's CheckpointSave (``"v"`` or ``"epsilon"``); ComfyUI does not read it.
- ``modelspec.prediction_type``: SwarmUI (``"epsilon"``, ``"v"``, ``"v-zsnr"``).
- ``ss_v_parameterization`` / ``ss_zero_terminal_snr``: kohya sd-scripts, ``str(bool)``: ``"True"`` / ``"False"``.
- ``vpred_toolkit.linear_end``: this toolkit's own record of a non-default beta_end; no host reads it (the webuis
  take betas from the YAML beside the checkpoint, which ``write-yaml`` generates from it).
- ``<checkpoint>.yaml`` beside the file: the webuis' model config (A1111 ``find_checkpoint_config_near_filename``).
"""

from __future__ import annotations

import os

MARKER_V_PRED = "v_pred"
MARKER_ZTSNR = "ztsnr"
MARKER_DTYPE = "F32"
MARKER_SHAPE = (0,)

MODELSPEC_PREDICTION_TYPE = "modelspec.prediction_type"
MODELSPEC_PREDICT_KEY = "modelspec.predict_key"
KOHYA_V_PARAM = "ss_v_parameterization"
KOHYA_ZTSNR = "ss_zero_terminal_snr"
TOOLKIT_LINEAR_END = "vpred_toolkit.linear_end"

PREDICTION_TYPE_EPS = "epsilon"
PREDICTION_TYPE_V = "v"
PREDICTION_TYPE_V_ZSNR = "v-zsnr"
PREDICT_KEY_EPS = "epsilon"
PREDICT_KEY_V = "v"
KOHYA_TRUE = "True"
KOHYA_FALSE = "False"

# Tensors that make ComfyUI / Forge pick another model type before they look at ``v_pred`` (SDXL.model_type).
MODEL_TYPE_OVERRIDING_TENSORS = ("edm_mean", "edm_vpred.sigma_max")

SIDECAR_SUFFIX = ".yaml"


def sidecar_yaml_path(checkpoint_path: str | os.PathLike) -> str:
    """``model.safetensors`` -> ``model.yaml`` (the file the webuis look for beside a checkpoint)."""
    return os.path.splitext(os.fspath(checkpoint_path))[0] + SIDECAR_SUFFIX
