"""Checkpoint loading with the core's header inspection (marker keys, metadata, the YAML beside the file) and the
detected model sampling applied, including SD1.5 v-pred/ZTSNR which ComfyUI itself never detects.

ComfyUI's node cache re-runs a node only when its inputs change; the file name does not change when a YAML is added
or edited beside the checkpoint (the README's fix for SD1.5 v-pred files), so :func:`source_fingerprint` (the
node's ``fingerprint_inputs``) keys the loader on every file the inspection reads.
"""

from __future__ import annotations

import json
import logging

from ..vpred_core.checkpoints.inspection import inspect_checkpoint, sources_state
from ..vpred_core.settings import AUTO, Detected, ModelSamplingSettings, detected_from_probe
from .common import DETECTED_SETTINGS_KEY
from .model_sampling import apply_model_sampling, host_detected, host_prediction, left_alone_line
from .probe import DEFAULT_PROBE_MODE, combine, probe_model, report_lines, wants_probe

logger = logging.getLogger(__name__)

CHECKPOINTS_FOLDER = "checkpoints"
EMBEDDINGS_FOLDER = "embeddings"


def auto_configure(model, stated: Detected, first_step: str = AUTO):
    """Apply what the file (or the probe) states to ``model`` (clone) through the core's resolver; returns (model,
    one-line summary). Fields nothing states keep ComfyUI's own detection; a model that is not a discrete eps/v
    schedule (EDM, flow...) is left alone."""
    ms = model.get_model_object("model_sampling")
    if host_prediction(ms) is None:
        return model, left_alone_line(ms)
    if not stated.states_anything:
        return model, "nothing detected in the file; kept ComfyUI's own detection (" + describe_host(model) + ")"
    model = model.clone()
    model.model_options[DETECTED_SETTINGS_KEY] = stated
    patched, _, line = apply_model_sampling(model, ModelSamplingSettings(AUTO, AUTO), True, first_step)
    return patched, line


def describe_host(model) -> str:
    host = host_detected(model)
    return f"prediction={host.prediction}, ZTSNR {'on' if host.ztsnr else 'off'}"


def source_text(inspection, name: str) -> str:
    ref = inspection.sources[name]
    return f"{ref.source}: {ref.detail}" if getattr(ref, "detail", "") else str(ref.source)


def inspection_json(inspection) -> str:
    """The inspection's own JSON (pretty), or a note when it has none."""
    try:
        return json.dumps(inspection.to_dict(), indent=2, sort_keys=True)
    except (AttributeError, TypeError, ValueError):
        return "{}"


def build_report(ckpt_name: str, inspection, summary: str, probe_lines: list[str] = ()) -> str:
    """Text report: what was detected, from where, what the probe measured, and what was applied."""
    lines = [f"checkpoint: {ckpt_name}", f"model sampling {summary}"]
    stated = inspection.stated_fields()
    lines += [f"{name}: {value} (from {source_text(inspection, name)})" for name, value in stated.items()]
    lines += list(probe_lines)
    if getattr(inspection, "error", None):
        lines.append(f"inspection error: {inspection.error}")
    lines += [f"warning: {w}" for w in getattr(inspection, "warnings", ()) or ()]
    lines += ["inspection:", inspection_json(inspection)]
    return "\n".join(lines)


def source_fingerprint(checkpoint_path: str | None) -> tuple:
    """Everything the loader reads besides its inputs: the checkpoint and the YAML beside it (present or not)."""
    if checkpoint_path is None:
        return (None,)
    return (checkpoint_path, *sources_state(checkpoint_path))


def checkpoint_path(ckpt_name: str) -> str | None:
    """ComfyUI's full path of a checkpoint name, None when it is not found."""
    import folder_paths

    return folder_paths.get_full_path(CHECKPOINTS_FOLDER, ckpt_name)


def load_checkpoint(ckpt_name: str, first_step: str = AUTO, probe: str = DEFAULT_PROBE_MODE):
    """(model, clip, vae, report): ComfyUI's own loader, then the inspection's settings (and, per ``probe``, the
    weight probe's verdict: cached per file state) applied."""
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path_or_raise(CHECKPOINTS_FOLDER, ckpt_name)
    inspection = inspect_checkpoint(path)
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(
        path, output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths(EMBEDDINGS_FOLDER))[:3]
    stated, probe_result = Detected.from_inspection(inspection), None
    if wants_probe(probe, stated) and host_prediction(model.get_model_object("model_sampling")) is not None:
        probe_result = probe_model(model, clip, key=source_fingerprint(path))
        probed = detected_from_probe(probe_result)
        stated = combine(stated, probed, probe)
    used = probe_result is not None and stated.source_of("prediction") == detected_from_probe(probe_result).source
    model, summary = auto_configure(model, stated, first_step)
    logger.info("%s: model sampling %s", ckpt_name, summary)
    return model, clip, vae, build_report(ckpt_name, inspection, summary, report_lines(probe_result, used))


def detect_prediction_type(model, clip=None, first_step: str = AUTO):
    """(model, report) for a MODEL from anywhere (merges, other loaders): the probe's verdict applied over whatever
    the pack's loader recorded; an unknown verdict (or a non-discrete model) leaves the model as it is."""
    ms = model.get_model_object("model_sampling")
    if host_prediction(ms) is None:
        return model, left_alone_line(ms)
    result = probe_model(model, clip)
    probed = detected_from_probe(result)
    if probed.prediction is None:
        return model, "\n".join(["model sampling not changed", *report_lines(result, False)])
    recorded = model.model_options.get(DETECTED_SETTINGS_KEY)
    stated = probed.over(recorded if isinstance(recorded, Detected) else Detected())
    patched, summary = auto_configure(model, stated, first_step)
    return patched, "\n".join([f"model sampling {summary}", *report_lines(result, True)])


def checkpoint_names() -> list:
    """ComfyUI's checkpoint list (empty outside ComfyUI)."""
    try:
        import folder_paths
    except ImportError:
        return []
    return folder_paths.get_filename_list(CHECKPOINTS_FOLDER)
