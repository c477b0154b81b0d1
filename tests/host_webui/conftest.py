"""Webui host-test setup (``WEBUI_PATH``): one throw-away data dir per session whose ``extensions/`` links to this
repository, so that the webui's own extension list and script loader see it; nothing is written into the host tree
or the repository. Everything here is inert (and every host test skips) when ``WEBUI_PATH`` is unset."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
import threading

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from webui_host_env import CPU_ARGS, EXTENSION_DIRNAME, ROOT, WEBUI_PATH  # noqa: E402

HOST_CACHE_THREAD = "cache-writer"
CACHE_JOIN_TIMEOUT_S = 15


def _make_data_dir() -> str:
    data_dir = tempfile.mkdtemp(prefix="vpred-webui-data-")
    os.makedirs(os.path.join(data_dir, "extensions"))
    os.symlink(ROOT, os.path.join(data_dir, "extensions", EXTENSION_DIRNAME), target_is_directory=True)
    return data_dir


@pytest.fixture(scope="session", autouse=True)
def webui_session():
    """argv / sys.path / cwd / env as ``webui.py`` has them (data dir = a temp dir); restored at the end."""
    if not WEBUI_PATH:
        yield None
        return
    data_dir = _make_data_dir()
    saved_argv, saved_path, saved_cwd = sys.argv, list(sys.path), os.getcwd()
    os.environ.setdefault("IGNORE_CMD_ARGS_ERRORS", "1")
    sys.argv = ["webui.py", "--data-dir", data_dir, *CPU_ARGS]
    sys.path.insert(0, WEBUI_PATH)
    os.chdir(WEBUI_PATH)
    yield data_dir
    for thread in threading.enumerate():
        if thread.name == HOST_CACHE_THREAD:
            thread.join(CACHE_JOIN_TIMEOUT_S)  # the host writes cache.json into the data dir a few seconds later
    os.chdir(saved_cwd)
    sys.argv, sys.path[:] = saved_argv, saved_path
    shutil.rmtree(data_dir, ignore_errors=True)
