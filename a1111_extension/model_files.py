"""Checkpoint inspection (cached by path, size and mtime) and crafted-YAML writing through the core."""

from __future__ import annotations

import functools
import logging
import os

from vpred_core.checkpoints.inspection import sidecar_yaml_path
from vpred_core.settings import Detected

logger = logging.getLogger(__name__)
INSPECTION_CACHE_SIZE = 64


@functools.lru_cache(maxsize=INSPECTION_CACHE_SIZE)
def _inspect_cached(path: str, size: int, mtime: float):
    from vpred_core.checkpoints.inspection import inspect_checkpoint

    return inspect_checkpoint(path)


def inspect_path(path: str | None):
    """The core's InspectionResult for ``path`` (None when the file is missing or cannot be read)."""
    if not path or not os.path.isfile(path):
        return None
    stat = os.stat(path)
    try:
        return _inspect_cached(path, stat.st_size, stat.st_mtime)
    except (OSError, ValueError) as exc:
        logger.warning("V-Pred: cannot inspect %s: %s", path, exc)
        return None


def detect(path: str | None) -> Detected:
    return Detected.from_inspection(inspect_path(path))


def should_write_yaml(checkpoint: str, result) -> bool:
    """True for a checkpoint detected as v-pred that has no YAML beside it."""
    return result is not None and getattr(result, "prediction", None) == "v" and not os.path.exists(
        sidecar_yaml_path(checkpoint)
    )


def write_yaml_if_needed(checkpoint: str) -> str | None:
    """Write the crafted YAML for a v-pred checkpoint without one; return its path (None when nothing written)."""
    result = inspect_path(checkpoint)
    if not should_write_yaml(checkpoint, result):
        return None
    from vpred_core.checkpoints.sidecar_yaml import WRITTEN, write_yaml_for_checkpoint

    try:
        outcome = write_yaml_for_checkpoint(checkpoint, result, force=False, only_vpred=True)
    except (OSError, ValueError) as exc:
        logger.warning("V-Pred: could not write a YAML for %s: %s", checkpoint, exc)
        return None
    if outcome.status != WRITTEN:
        logger.debug("V-Pred: no YAML for %s: %s %s", checkpoint, outcome.status, outcome.reason)
        return None
    logger.info("V-Pred: wrote %s (v-pred config for a stock webui)", outcome.yaml_path)
    return outcome.yaml_path


def write_yamls(checkpoints) -> list[str]:
    """Write YAMLs for every v-pred checkpoint in ``checkpoints`` lacking one; return the written paths."""
    return [path for path in (write_yaml_if_needed(c) for c in checkpoints) if path]
