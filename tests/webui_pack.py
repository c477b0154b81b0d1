"""Test support: the webui extension's modules imported the way the webui loads them (``scripts/vpred_ztsnr.py``
registers the repository as the package ``vpred_ztsnr_toolkit``), without a webui."""

import importlib
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOADER = ROOT / "scripts" / "vpred_ztsnr.py"


def loader_module(name: str = "vpred_ztsnr_loader_under_test"):
    """Execute scripts/vpred_ztsnr.py as the webui would (outside a webui it only defines its helpers)."""
    spec = importlib.util.spec_from_file_location(name, LOADER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pack(name: str):
    """``vpred_ztsnr_toolkit.<name>``, e.g. ``pack("a1111_extension.ui")`` or ``pack("vpred_core.settings")``."""
    loader = loader_module()
    loader.load_package()
    return importlib.import_module(f"{loader.PACKAGE_NAME}.{name}")
