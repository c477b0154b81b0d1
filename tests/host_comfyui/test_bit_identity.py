"""Invisible until applied: with the pack loaded but none of its nodes in the graph, a plain eps model samples bit for
bit as in ComfyUI alone (another process that never loads the pack), for every sampler x scheduler ComfyUI lists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comfy_host_env import COMFYUI_PATH

pytestmark = pytest.mark.host

RUN_TIMEOUT_S = 1200


def test_pack_loaded_but_not_applied_is_bit_identical(comfy_nodes, tmp_path):
    import comfy.samplers
    import host_alone_run

    assert "vpred_trailing" in comfy.samplers.KSampler.SCHEDULERS  # the pack is loaded in this process
    out = tmp_path / "alone.pt"
    env = {**os.environ, "COMFYUI_PATH": COMFYUI_PATH, "PYTHONDONTWRITEBYTECODE": "1"}
    script = Path(host_alone_run.__file__).resolve()
    done = subprocess.run([sys.executable, str(script), str(out)], cwd=COMFYUI_PATH, env=env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    alone = torch.load(out)
    schedulers = sorted({key.split("/")[1] for key in alone})
    assert "vpred_trailing" not in schedulers
    assert len(alone) == len(comfy.samplers.KSampler.SAMPLERS) * len(schedulers)  # 44 x 9 in v0.8.0
    threads = torch.get_num_threads()
    try:
        here = host_alone_run.sample_all(comfy_nodes, schedulers)
    finally:
        torch.set_num_threads(threads)
    assert set(here) == set(alone)
    different = [key for key in alone if not torch.equal(here[key], alone[key])]
    print(f"{len(alone)} sampler x scheduler runs compared, {len(different)} differ")
    assert not different, different[:20]
