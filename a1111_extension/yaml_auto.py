"""Crafted-YAML auto-generation: on startup (model list), on model load and from the accordion's button."""

from __future__ import annotations

import html
import logging
import threading

from .a1111_model import checkpoint_filename
from .logic_ui import OPTION_PREFIX
from .model_files import write_yaml_if_needed, write_yamls

logger = logging.getLogger(__name__)
AUTO_YAML_OPTION = OPTION_PREFIX + "auto_yaml"


def auto_enabled() -> bool:
    from .options import get_option

    return bool(get_option(AUTO_YAML_OPTION, True))


def all_checkpoints() -> list[str]:
    from modules import sd_models

    return sorted({info.filename for info in sd_models.checkpoints_list.values()})


def on_model_loaded(sd_model) -> None:
    if auto_enabled():
        write_yaml_if_needed(checkpoint_filename(sd_model))


def _scan() -> None:
    written = write_yamls(all_checkpoints())
    if written:
        logger.info("V-Pred: wrote %d crafted YAML(s); disable in Settings > V-Pred / ZTSNR", len(written))


def on_app_started(*_args) -> None:
    """Scan the checkpoint list once in the background (auto-generation is on by default; logged as a notice)."""
    if not auto_enabled():
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
