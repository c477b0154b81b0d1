"""Host tests inside a real ComfyUI checkout: set COMFYUI_PATH (see docs/HOST_TESTING.md); skipped otherwise.

The pack is loaded through ComfyUI's own ``nodes.load_custom_node`` from a temporary custom_nodes folder that
links to this repository, exactly as ComfyUI loads ``custom_nodes/<dir>``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_host_env import CHECKPOINT_METADATA, CHECKPOINT_NAME, COMFYUI_PATH, PACK_DIR_NAME, REPO_ROOT  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH:
        return
    skip = pytest.mark.skip(reason="COMFYUI_PATH is not set (host test)")
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(Path(__file__).resolve().parent):
            item.add_marker(skip)


def _use_comfyui_modules() -> None:
    """Put ComfyUI first on sys.path; the repo's own ``nodes`` package must not shadow ComfyUI's nodes.py."""
    root = str(Path(COMFYUI_PATH).resolve())
    if sys.path[0] != root:
        sys.path.insert(0, root)
    loaded = sys.modules.get("nodes")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(root):
        del sys.modules["nodes"]
    import torch
    from comfy.cli_args import args

    args.cpu = args.cpu or not torch.cuda.is_available()


@pytest.fixture(scope="session")
def comfy_nodes(tmp_path_factory):
    """ComfyUI's ``nodes`` module with the pack loaded through ``load_custom_node``."""
    if not COMFYUI_PATH:
        pytest.skip("COMFYUI_PATH is not set")
    _use_comfyui_modules()
    import nodes

    assert Path(nodes.__file__).resolve().parent == Path(COMFYUI_PATH).resolve()
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    custom = tmp_path_factory.mktemp("custom_nodes")
    (custom / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    loaded = asyncio.run(nodes.load_custom_node(str(custom / PACK_DIR_NAME), ignore=set(nodes.NODE_CLASS_MAPPINGS)))
    assert loaded, "ComfyUI failed to load the pack"
    return nodes


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A loadable SD1.5-shaped checkpoint (tiny UNet, TAESD VAE, CLIP-L) with v-pred + ZTSNR metadata."""
    if not COMFYUI_PATH:
        pytest.skip("COMFYUI_PATH is not set")
    _use_comfyui_modules()
    import safetensors.torch
    import tiny_model

    path = tmp_path_factory.mktemp("checkpoints") / CHECKPOINT_NAME
    safetensors.torch.save_file(tiny_model.checkpoint_state_dict(), str(path), metadata=CHECKPOINT_METADATA)
    return path
