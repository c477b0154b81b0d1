"""Shared helpers of the webui host tests (``WEBUI_PATH``); imported by conftest.py and the test modules."""

from __future__ import annotations

import importlib
import os
import pathlib

import pytest

WEBUI_PATH = os.environ.get("WEBUI_PATH")
ROOT = pathlib.Path(__file__).resolve().parents[2]
EXTENSION_DIRNAME = "vpred-ztsnr-toolkit"
CPU_ARGS = ["--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--no-download-sd-model", "--skip-install"]


def host_import(name: str):
    """Import a host module or skip the test with the reason."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any host import failure means "not importable here"
        pytest.skip(f"{name} not importable without launching the webui: {type(exc).__name__}: {exc}")


def initialized_shared():
    """``modules.shared`` with ``opts`` / ``state`` set up as ``webui.py`` does (A1111 ``shared_init``)."""
    shared = host_import("modules.shared")
    if getattr(shared, "opts", None) is None:
        host_import("modules.shared_init").initialize()
    return shared
