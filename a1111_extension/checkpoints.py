"""What the webui's checkpoint files state (through the core's header inspection), what their weights say when the
file states nothing (the core's probe), and the crafted YAML beside them.

Inspection is cached per checkpoint and keyed on every source it reads: the checkpoint's size and mtime and the
``<checkpoint>.yaml`` beside it (present or not, size, mtime), so a YAML added or edited later is seen at once.
When a loaded checkpoint states no prediction type, its UNet is probed once on load (``vpred_probe``, default on;
a few forward passes, :mod:`vpred_core.sampling.probe`); the result is cached under the same key and, for a v model,
written into the crafted YAML (its record names the probe), so the next load needs no probe.
The crafted YAML (``vpred_auto_yaml``, default on) is written for v-pred checkpoints without one, never
overwriting: once at startup over the checkpoint list (background thread), on every model load, and from the
accordion's button.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import threading
from dataclasses import replace

from ..vpred_core.checkpoints.inspection import SourceRef, inspect_checkpoint, sidecar_yaml_path, sources_state
from ..vpred_core.checkpoints.sidecar_yaml import WRITTEN, write_yaml_for_checkpoint
from ..vpred_core.sampling.probe import ProbeResultCache
from ..vpred_core.settings import PROBE_SOURCE, Detected, detected_from_probe
from .ui import OPTION_PREFIX, get_option

logger = logging.getLogger(__name__)
INSPECTION_CACHE_SIZE = 64
AUTO_YAML_OPTION = OPTION_PREFIX + "auto_yaml"
PROBE_OPTION = OPTION_PREFIX + "probe"
PROBE_CACHE_SIZE = 64
_probe_results = ProbeResultCache(PROBE_CACHE_SIZE)  # (path, sources state) -> ProbeResult


@functools.lru_cache(maxsize=INSPECTION_CACHE_SIZE)
def _inspect_cached(path: str, _sources: tuple):
    return inspect_checkpoint(path)


def inspect_path(path: str | None):
    """The core's InspectionResult for ``path`` (None when the file is missing or cannot be read)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        return _inspect_cached(path, sources_state(path))
    except (OSError, ValueError) as exc:
        logger.warning("V-Pred: cannot inspect %s: %s", path, exc)
        return None


def stated(path: str | None) -> Detected:
    """What the checkpoint file itself (or the YAML beside it) states, else what the probe of its weights found (a
    probe only stands in for a prediction the file does not state); fields nobody states are None."""
    found = Detected.from_inspection(inspect_path(path))
    if found.prediction is not None:
        return found
    return found.over(detected_from_probe(cached_probe(path)))


# ---- the weight probe


class ProbeFailure:
    """Cached in place of a result when a checkpoint's network could not be probed (not retried until it changes)."""

    prediction, ztsnr = "unknown", None

    def __init__(self, problem: str):
        self.problem = problem

    def summary(self) -> str:
        return f"probe failed: {self.problem}"


def probe_enabled() -> bool:
    return bool(get_option(PROBE_OPTION, True))


def cached_probe(path: str | None):
    """The probe result for the checkpoint as its sources are now (None when never probed or changed since)."""
    if not path:
        return None
    return _probe_results.get((path, sources_state(path)))


def remember_probe(path: str, result) -> None:
    _probe_results.put((path, sources_state(path)), result)


def needs_probe(path: str | None) -> bool:
    """True for a readable checkpoint that states no prediction type and has no probe result yet."""
    result = inspect_path(path)
    return (result is not None and probe_enabled() and "prediction" not in result.stated_fields()
            and cached_probe(path) is None)


def probe_loaded_model(path: str, unet, channels: int, dtype, device):
    """Probe the loaded model's raw UNet callable ``unet(x_in, t)`` once and cache the result (see module docstring);
    a v result is written into the crafted YAML when auto-YAML is on."""
    from ..vpred_core.sampling.probe import probe_prediction_type

    result = probe_prediction_type(unet, channels, dtype=dtype, device=device)
    remember_probe(path, result)
    logger.info("V-Pred: %s states no prediction type; weight probe: %s", os.path.basename(path), result.summary())
    if result.prediction == "v" and auto_yaml_enabled():
        write_yaml_if_needed(path)
    return result


def checkpoint_filename(sd_model) -> str | None:
    return getattr(getattr(sd_model, "sd_checkpoint_info", None), "filename", None)


# ---- crafted YAML


def auto_yaml_enabled() -> bool:
    return bool(get_option(AUTO_YAML_OPTION, True))


def should_write_yaml(checkpoint: str, result) -> bool:
    """True for a checkpoint detected as v-pred that has no YAML (nor a link named like it) beside it."""
    return result is not None and getattr(result, "prediction", None) == "v" and not os.path.lexists(
        sidecar_yaml_path(checkpoint)
    )


def inspection_with_probe(path: str | None):
    """The InspectionResult, with the probe's prediction (and ZTSNR hint) where the file states none, so that the
    crafted YAML records it (its ``sources`` name the probe)."""
    result = inspect_path(path)
    probed = detected_from_probe(cached_probe(path))
    if result is None or probed.prediction is None or "prediction" in result.stated_fields():
        return result
    sources = {**result.sources, "prediction": SourceRef(PROBE_SOURCE, probed.source)}
    changes = {"prediction": probed.prediction}
    if probed.ztsnr is not None and "ztsnr" not in result.stated_fields():
        changes["ztsnr"] = probed.ztsnr
        sources["ztsnr"] = SourceRef(PROBE_SOURCE, probed.source)
    return replace(result, **changes, sources=sources)


def write_yaml_if_needed(checkpoint: str | None) -> str | None:
    """Write the crafted YAML for a v-pred checkpoint without one; return its path (None when nothing written)."""
    result = inspection_with_probe(checkpoint)
    if not should_write_yaml(checkpoint, result):
        return None
    outcome = write_yaml_for_checkpoint(checkpoint, result, force=False, only_vpred=True)
    if outcome.status != WRITTEN:
        logger.debug("V-Pred: no YAML for %s: %s %s", checkpoint, outcome.status, outcome.reason)
        return None
    logger.info("V-Pred: wrote %s (v-pred config for a stock webui)", outcome.yaml_path)
    return outcome.yaml_path


def write_yamls(checkpoints) -> list[str]:
    """Write YAMLs for every v-pred checkpoint in ``checkpoints`` lacking one; return the written paths."""
    return [path for path in (write_yaml_if_needed(c) for c in checkpoints) if path]


def all_checkpoints() -> list[str]:
    from modules import sd_models

    return sorted({info.filename for info in sd_models.checkpoints_list.values()})


def on_model_loaded(sd_model) -> None:
    if auto_yaml_enabled():
        write_yaml_if_needed(checkpoint_filename(sd_model))


def _scan() -> None:
    written = write_yamls(all_checkpoints())
    if written:
        logger.info("V-Pred: wrote %d crafted YAML(s); disable in Settings > V-Pred / ZTSNR", len(written))


def on_app_started(*_args) -> None:
    """Scan the checkpoint list once in the background (auto-generation is on by default; logged as a notice)."""
    if not auto_yaml_enabled():
        return
    logger.info("V-Pred: crafted YAML auto-generation is on (Settings > V-Pred / ZTSNR); existing files are kept")
    threading.Thread(target=_scan, name="vpred-yaml-scan", daemon=True).start()


def write_all_status() -> str:
    """Button handler: write YAMLs for every checkpoint and report as HTML."""
    written = write_yamls(all_checkpoints())
    if not written:
        return "No YAML written (no v-pred checkpoint without a YAML)."
    items = "".join(f"<li>{html.escape(path)}</li>" for path in written)
    return f"Wrote {len(written)} YAML(s):<ul>{items}</ul>"


def detection_status() -> str:
    """Button handler: what the loaded checkpoint states, with the source of each value, as HTML."""
    from modules import shared

    path = checkpoint_filename(getattr(shared, "sd_model", None))
    found = stated(path)
    if path is None:
        return "No checkpoint loaded."
    rows = [f"<li>{name}: {html.escape(str(getattr(found, name)))} ({html.escape(found.source_of(name))})</li>"
            for name in ("prediction", "ztsnr", "beta_schedule", "linear_start", "linear_end") if found.states(name)]
    probe = cached_probe(path)
    if probe is not None and probe.prediction not in ("eps", "v"):
        rows.append(f"<li>weight probe: {html.escape(probe.summary())} (not applied)</li>")
    if not rows:
        return (f"{html.escape(os.path.basename(path))} states nothing: the pack leaves it to the webui "
                "(force values above to act).")
    return f"{html.escape(os.path.basename(path))}:<ul>{''.join(rows)}</ul>"
