"""Load k-diffusion's real ``sampling`` and ``external`` modules without running its package ``__init__``.

``import k_diffusion`` executes ``k_diffusion/__init__.py``, which imports every submodule, including the
evaluation/augmentation code that needs clean-fid, CLIP, scikit-image and torchvision's compiled ops; with a
CPU-only torch from PyPI, torchvision fails with "operator torchvision::nms does not exist". The samplers need
none of that. This loader registers an empty package object for ``k_diffusion`` whose ``__path__`` is the
installed package directory, so ``k_diffusion.sampling`` / ``k_diffusion.utils`` / ``k_diffusion.external``
are imported from the installed files unchanged. ``utils`` imports ``torchvision.transforms.functional``; if
torchvision's C++ ops are missing, the two operator schemas its Python side registers fake kernels for
(``torchvision::nms``, ``torchvision::qnms``) are declared first, which only defines their signatures.
Used by the demo and the tests; the core itself never needs k-diffusion.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types

import torch

logger = logging.getLogger(__name__)
PACKAGE = "k_diffusion"
TORCHVISION_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_torchvision_fragment = None


def _torchvision_ops_missing() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute access is the probe
    except (AttributeError, RuntimeError):
        return True
    return False


def declare_torchvision_op_schemas() -> None:
    """Declare torchvision::nms/qnms schemas when torchvision's compiled ops are unavailable (CPU torch)."""
    global _torchvision_fragment
    if "torchvision" in sys.modules or not _torchvision_ops_missing():
        return
    _torchvision_fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in TORCHVISION_OP_SCHEMAS:
        _torchvision_fragment.define(schema)
    logger.debug("declared torchvision op schemas for a CPU-only torch")


def _bare_package() -> types.ModuleType:
    existing = sys.modules.get(PACKAGE)
    if existing is not None:
        return existing
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    package = types.ModuleType(PACKAGE)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules[PACKAGE] = package
    return package


def load_kdiffusion():
    """Return k-diffusion's real (sampling, external) modules."""
    declare_torchvision_op_schemas()
    _bare_package()
    return importlib.import_module(f"{PACKAGE}.sampling"), importlib.import_module(f"{PACKAGE}.external")
