"""Start the real ComfyUI server with the pack in custom_nodes, check /object_info and queue every example
workflow through POST /prompt until it finishes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from comfy_host_env import COMFYUI_PATH, PACK_DIR_NAME, REPO_ROOT

pytestmark = pytest.mark.host

START_TIMEOUT_S = 240
PROMPT_TIMEOUT_S = 300
POLL_S = 0.5
HOST = "127.0.0.1"
TEST_SIZE = 64
TEST_STEPS = 3
PACK_NODE_COUNT = 7


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    import requests

    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    (base / "models" / "checkpoints").mkdir(parents=True)
    os.link(tiny_checkpoint, base / "models" / "checkpoints" / tiny_checkpoint.name)
    port = free_port()
    log = open(base / "server.log", "w")
    cmd = [sys.executable, "main.py", "--cpu", "--listen", HOST, "--port", str(port), "--base-directory", str(base),
           "--disable-auto-launch"]
    proc = subprocess.Popen(cmd, cwd=COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, (base / "server.log").read_text()[-4000:]
            try:
                if requests.get(url + "/object_info", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(POLL_S)
        else:
            pytest.fail("ComfyUI server did not start")
        yield url, tiny_checkpoint.name, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_object_info_lists_every_node(server):
    import requests

    url = server[0]
    info = requests.get(url + "/object_info", timeout=30).json()
    ours = sorted(k for k in info if k.startswith("VPredZTSNR_"))
    assert len(ours) == PACK_NODE_COUNT, ours
    for key in ours:
        assert info[key]["category"] == "sampling/v-pred ztsnr" and info[key]["description"]
    assert server[1] in info["VPredZTSNR_CheckpointLoader"]["input"]["required"]["ckpt_name"][0]
    assert "vpred_trailing" in info["KSampler"]["input"]["required"]["scheduler"][0]


def test_example_workflows_are_served(server):
    import requests

    served = requests.get(server[0] + "/workflow_templates", timeout=30).json()
    assert sorted(served[PACK_DIR_NAME]) == sorted(p.stem for p in (REPO_ROOT / "example_workflows").glob("*.json"))


def shrink(prompt: dict, ckpt_name: str) -> dict:
    """Tiny checkpoint, 64x64 and 3 steps so the CPU run is quick."""
    for node in prompt.values():
        inputs = node["inputs"]
        if "ckpt_name" in inputs:
            inputs["ckpt_name"] = ckpt_name
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = TEST_SIZE
        if "steps" in inputs:
            inputs["steps"] = TEST_STEPS
    return prompt


@pytest.mark.parametrize("workflow", sorted(p.name for p in (REPO_ROOT / "example_workflows").glob("*.json")))
def test_example_workflow_runs(server, workflow):
    import requests
    from workflow_api import to_api_prompt

    url, ckpt_name, base = server
    info = requests.get(url + "/object_info", timeout=30).json()
    prompt = shrink(to_api_prompt(json.loads((REPO_ROOT / "example_workflows" / workflow).read_text()), info),
                    ckpt_name)
    reply = requests.post(url + "/prompt", json={"prompt": prompt}, timeout=30)
    assert reply.ok, reply.text
    prompt_id = reply.json()["prompt_id"]
    deadline = time.monotonic() + PROMPT_TIMEOUT_S
    while time.monotonic() < deadline:
        history = requests.get(f"{url}/history/{prompt_id}", timeout=30).json()
        if prompt_id in history:
            status = history[prompt_id]["status"]
            assert status["status_str"] == "success", json.dumps(status)[-3000:]
            images = [i for out in history[prompt_id]["outputs"].values() for i in out.get("images", [])]
            assert images and all((base / "output" / i["subfolder"] / i["filename"]).is_file() for i in images)
            return
        time.sleep(POLL_S)
    shutil.copy(base / "server.log", Path("/tmp") / "vpred_server_fail.log")
    pytest.fail(f"{workflow} did not finish in {PROMPT_TIMEOUT_S}s")
