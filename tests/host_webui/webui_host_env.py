"""Shared helpers of the webui host tests (``WEBUI_PATH``); imported by conftest.py and the test modules."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib

import pytest

WEBUI_PATH = os.environ.get("WEBUI_PATH")
ROOT = pathlib.Path(__file__).resolve().parents[2]
EXTENSION_DIRNAME = "vpred-ztsnr-toolkit"
CPU_ARGS = [
    "--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--no-download-sd-model", "--skip-install",
    "--always-cpu",  # reForge / Forge backend
]


def host_import(name: str):
    """Import a host module or skip the test with the reason."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any host import failure means "not importable here"
        pytest.skip(f"{name} not importable without launching the webui: {type(exc).__name__}: {exc}")


def _initialize_forge() -> None:
    """reForge / Forge: ``webui.py`` parses the backend arguments (``--always-cpu``) before anything else."""
    if importlib.util.find_spec("modules_forge") is None:
        return
    forge_init = host_import("modules_forge.initialization")
    if not getattr(forge_init, "vpred_test_initialized", False):
        forge_init.initialize_forge()
        forge_init.vpred_test_initialized = True


def initialized_shared():
    """``modules.shared`` with ``opts`` / ``state`` set up as ``webui.py`` does (A1111 ``shared_init``)."""
    _initialize_forge()
    shared = host_import("modules.shared")
    if getattr(shared, "opts", None) is None:
        host_import("modules.shared_init").initialize()
    return shared
