"""ComfyUI nodes of the v-pred / ZTSNR pack (V1 node API).

Every node class carries its stable, prefixed ``NODE_ID`` and ``DISPLAY_NAME``; importing this package never
imports ComfyUI (node code imports ``comfy`` lazily when it runs), so schemas can be inspected without a host.
"""

from .cfg_rescale import CfgRescale
from .loader import CheckpointLoader
from .model_sampling import ModelSampling
from .setup import VPredSetup
from .trailing_schedule import TrailingSchedule, register_trailing_scheduler
from .uncond import NegativePrompt, UncondMode

NODE_CLASSES = (CheckpointLoader, ModelSampling, TrailingSchedule, CfgRescale, NegativePrompt, UncondMode, VPredSetup)
NODE_CLASS_MAPPINGS = {cls.NODE_ID: cls for cls in NODE_CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.NODE_ID: cls.DISPLAY_NAME for cls in NODE_CLASSES}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_CLASSES", "register_trailing_scheduler"]
