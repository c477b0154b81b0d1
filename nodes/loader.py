"""Checkpoint loader that inspects the file with the core (marker keys, metadata, YAML beside it) and applies the
detected model sampling, including SD1.5 v-pred/ZTSNR which ComfyUI itself never detects."""

from __future__ import annotations

import json
import logging

from ..vpred_core.checkpoints.inspection import inspect_checkpoint
from ..vpred_core.settings import AUTO, Detected, ModelSamplingSettings
from .common import CATEGORY, DETECTED_SETTINGS_KEY, display_name, node_id
from .model_sampling_glue import describe, host_detected, patch_model_sampling

logger = logging.getLogger(__name__)

INSPECTION_SOURCE = "checkpoint inspection"
CHECKPOINTS_FOLDER = "checkpoints"
EMBEDDINGS_FOLDER = "embeddings"


def auto_configure(model, inspection):
    """Apply what the file states to ``model`` (clone) through the core's resolver; returns (model, one-line summary).
    Fields the file does not state keep ComfyUI's own detection."""
    host = host_detected(model)
    if host.prediction is None:
        return model, "not applied: the model is not a discrete eps/v model; kept ComfyUI's sampling"
    stated = Detected.from_inspection(inspection)
    if not stated.states_anything:
        return model, "nothing detected in the file; kept ComfyUI's own detection (" + describe_host(host) + ")"
    model = model.clone()
    model.model_options[DETECTED_SETTINGS_KEY] = stated
    patched, plan = patch_model_sampling(model, ModelSamplingSettings(AUTO, AUTO), beta_auto=True)
    return patched, f"applied: {describe(plan)} ({plan.describe_sources()})"


def source_text(inspection, name: str) -> str:
    ref = inspection.sources[name]
    return f"{ref.source}: {ref.detail}" if getattr(ref, "detail", "") else str(ref.source)


def describe_host(host: Detected) -> str:
    return f"prediction={host.prediction}, ZTSNR {'on' if host.ztsnr else 'off'}"


def inspection_json(inspection) -> str:
    """The inspection's own JSON (pretty), or a note when it has none."""
    try:
        return json.dumps(inspection.to_dict(), indent=2, sort_keys=True)
    except (AttributeError, TypeError, ValueError):
        return "{}"


def build_report(ckpt_name: str, inspection, summary: str) -> str:
    """Text report: what was detected, from where, and what was applied."""
    lines = [f"checkpoint: {ckpt_name}", f"model sampling {summary}"]
    stated = inspection.stated_fields()
    lines += [f"{name}: {value} (from {source_text(inspection, name)})" for name, value in stated.items()]
    if getattr(inspection, "error", None):
        lines.append(f"inspection error: {inspection.error}")
    lines += [f"warning: {w}" for w in getattr(inspection, "warnings", ()) or ()]
    lines += ["inspection:", inspection_json(inspection)]
    return "\n".join(lines)


class CheckpointLoader:
    """Load Checkpoint + header inspection + automatic model sampling."""

    NODE_ID = node_id("CheckpointLoader")
    DISPLAY_NAME = display_name("Load Checkpoint (auto-configure)")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "STRING")
    RETURN_NAMES = ("model", "clip", "vae", "report")
    OUTPUT_TOOLTIPS = (
        "The diffusion model, with the detected prediction type / ZTSNR / betas applied.",
        "The CLIP model used for encoding text prompts.",
        "The VAE model used for encoding and decoding images to and from latent space.",
        "What was detected (state-dict markers, safetensors metadata, YAML beside the file) and what was applied.",
    )
    FUNCTION = "load_checkpoint"
    DESCRIPTION = ("Like Load Checkpoint, but reads the file header (v_pred/ztsnr marker keys, modelspec/kohya "
                   "metadata, a <name>.yaml beside the checkpoint) without loading tensors, and applies the detected "
                   "v-prediction, zero terminal SNR and beta schedule, for SD1.x too. Outputs a report string.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (checkpoint_names(), {"tooltip": "The checkpoint (model) to load and inspect."}),
        }}

    def load_checkpoint(self, ckpt_name):
        import comfy.sd
        import folder_paths

        path = folder_paths.get_full_path_or_raise(CHECKPOINTS_FOLDER, ckpt_name)
        inspection = inspect_checkpoint(path)
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            path, output_vae=True, output_clip=True,
            embedding_directory=folder_paths.get_folder_paths(EMBEDDINGS_FOLDER))[:3]
        model, summary = auto_configure(model, inspection)
        logger.info("%s: model sampling %s", ckpt_name, summary)
        return (model, clip, vae, build_report(ckpt_name, inspection, summary))


def checkpoint_names() -> list:
    """ComfyUI's checkpoint list (empty outside ComfyUI)."""
    try:
        import folder_paths
    except ImportError:
        return []
    return folder_paths.get_filename_list(CHECKPOINTS_FOLDER)
