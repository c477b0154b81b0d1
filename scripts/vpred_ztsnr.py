"""Webui entry point: the webui loads only ``<extension>/scripts/*.py`` (with the extension root on sys.path while
loading). This loads ``a1111_extension`` under a private package name (``a1111_extension`` is a generic name other
extensions could use too) and exposes the Script class. Outside a webui it defines nothing and logs why."""

import importlib.util
import logging
import os
import sys

logger = logging.getLogger(__name__)
EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(EXTENSION_ROOT, "a1111_extension")
PACKAGE_NAME = "vpred_ztsnr_webui"


def load_package():
    """The ``a1111_extension`` package as ``vpred_ztsnr_webui`` (loaded once per process)."""
    if PACKAGE_NAME in sys.modules:
        return sys.modules[PACKAGE_NAME]
    if EXTENSION_ROOT not in sys.path:
        sys.path.append(EXTENSION_ROOT)  # vpred_core must stay importable after the loader restores sys.path
    spec = importlib.util.spec_from_file_location(
        PACKAGE_NAME, os.path.join(PACKAGE_DIR, "__init__.py"), submodule_search_locations=[PACKAGE_DIR]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE_NAME] = package
    spec.loader.exec_module(package)
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
    load_package()
    from vpred_ztsnr_webui.entry import register
    from vpred_ztsnr_webui.script import VPredScript  # noqa: F401  (found by the webui's script loader)

    register()
else:
    logger.info("V-Pred: not running inside a webui (no modules.scripts); the webui extension is inactive")
