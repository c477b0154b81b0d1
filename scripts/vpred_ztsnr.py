"""Webui entry point: the webui loads only ``<extension>/scripts/*.py`` (with the extension root on sys.path while
loading). This registers the repository under ONE private package name, ``vpred_ztsnr_toolkit`` (its folders become
``vpred_ztsnr_toolkit.vpred_core`` and ``vpred_ztsnr_toolkit.a1111_extension``; the ComfyUI entry ``__init__.py`` is
not run), so no generic top-level name (``nodes``, ``tests``, ``vpred_core``...) is exposed to other extensions and
sys.path is left as the webui set it. Outside a webui it defines nothing and logs why."""

import importlib.machinery
import importlib.util
import logging
import os
import sys

logger = logging.getLogger(__name__)
EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_NAME = "vpred_ztsnr_toolkit"


def load_package(name: str = PACKAGE_NAME, root: str = EXTENSION_ROOT):
    """The repository as package ``name`` (a namespace package over ``root``; loaded once per process)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [root]
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    return package


def in_webui() -> bool:
    """True when the webui's script API imports (a source tree whose UI cannot start counts as no webui)."""
    try:
        import modules.scripts  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure of the host import means "not inside a webui"
        logger.debug("V-Pred: modules.scripts not importable: %s", exc)
        return False
    return True


if in_webui():
    from modules import scripts

    load_package()
    _request = importlib.import_module(f"{PACKAGE_NAME}.a1111_extension.request")
    _request.register_callbacks()

    class VPredScript(_request.VPredHooks, scripts.Script):
        """The always-visible Script (found by the webui's script loader); the hooks live in the request module."""

else:
    logger.info("V-Pred: not running inside a webui (no modules.scripts); the webui extension is inactive")
