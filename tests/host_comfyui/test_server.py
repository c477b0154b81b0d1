"""Start the real ComfyUI server with the pack in custom_nodes, check /object_info, queue every example workflow, the
pre-V3 example workflows and API prompts (tests/data/comfy_v1) through POST /prompt until they finish, and check that
the loader re-executes when a YAML is added or edited beside its checkpoint."""

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

V1_DATA = REPO_ROOT / "tests" / "data" / "comfy_v1"
START_TIMEOUT_S = 240
PROMPT_TIMEOUT_S = 300
POLL_S = 0.5
HOST = "127.0.0.1"
TEST_SIZE = 64
TEST_STEPS = 3
PACK_NODE_COUNT = 8  # tests/test_comfy_nodes_contract.py EXPECTED_IDS


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
    ckpt_spec = info["VPredZTSNR_CheckpointLoader"]["input"]["required"]["ckpt_name"]
    assert ckpt_spec[0] == "COMBO" and server[1] in ckpt_spec[1]["options"]  # V3 sends combos as COMBO + options
    assert "vpred_trailing" in info["KSampler"]["input"]["required"]["scheduler"][0]


def test_example_workflows_are_served(server):
    import requests

    url = server[0]
    served = requests.get(url + "/workflow_templates", timeout=30).json()
    assert sorted(served[PACK_DIR_NAME]) == sorted(p.stem for p in example_workflows())
    for name in served[PACK_DIR_NAME]:  # the frontend fetches <name>.json and the thumbnail <name>.jpg
        for suffix in (".json", ".jpg"):
            reply = requests.get(f"{url}/api/workflow_templates/{PACK_DIR_NAME}/{name}{suffix}", timeout=30)
            assert reply.ok and reply.content == (REPO_ROOT / "example_workflows" / (name + suffix)).read_bytes()


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


def queue(url: str, prompt: dict) -> dict:
    """POST /prompt and poll /history until it is done; returns the history entry (status must be success)."""
    import requests

    reply = requests.post(url + "/prompt", json={"prompt": prompt}, timeout=30)
    assert reply.ok, reply.text
    prompt_id = reply.json()["prompt_id"]
    deadline = time.monotonic() + PROMPT_TIMEOUT_S
    while time.monotonic() < deadline:
        history = requests.get(f"{url}/history/{prompt_id}", timeout=30).json()
        if prompt_id in history:
            status = history[prompt_id]["status"]
            assert status["status_str"] == "success", json.dumps(status)[-3000:]
            return history[prompt_id]
        time.sleep(POLL_S)
    pytest.fail(f"prompt {prompt_id} did not finish in {PROMPT_TIMEOUT_S}s")


def check_images(entry: dict, base: Path) -> None:
    images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
    assert images and all((base / "output" / i["subfolder"] / i["filename"]).is_file() for i in images)


def example_workflows() -> list[Path]:
    return sorted((REPO_ROOT / "example_workflows").glob("*.json"))


@pytest.mark.parametrize("workflow", example_workflows(), ids=lambda p: p.stem)
def test_example_workflow_runs(server, workflow):
    import requests
    from workflow_api import to_api_prompt

    url, ckpt_name, base = server
    info = requests.get(url + "/object_info", timeout=30).json()
    try:
        entry = queue(url, shrink(to_api_prompt(json.loads(workflow.read_text()), info), ckpt_name))
    except BaseException:
        shutil.copy(base / "server.log", Path("/tmp") / "vpred_server_fail.log")
        raise
    check_images(entry, base)


@pytest.mark.parametrize("workflow", sorted(V1_DATA.glob("*.workflow.json")), ids=lambda p: p.name.split(".")[0])
def test_pre_v3_example_workflows_run_on_the_v3_nodes(server, workflow):
    """The example workflows as saved with the V1 nodes (UI format: widget values by position) load and run."""
    import requests
    from workflow_api import to_api_prompt

    url, ckpt_name, base = server
    info = requests.get(url + "/object_info", timeout=30).json()
    check_images(queue(url, shrink(to_api_prompt(json.loads(workflow.read_text()), info), ckpt_name)), base)


@pytest.mark.parametrize("prompt", sorted(V1_DATA.glob("*.api.json")), ids=lambda p: p.name.split(".")[0])
def test_pre_v3_api_prompts_run_on_the_v3_nodes(server, prompt):
    """API-format prompts written for the V1 nodes (inputs by name, without the inputs added since) run unchanged."""
    url, ckpt_name, base = server
    check_images(queue(url, shrink(json.loads(prompt.read_text()), ckpt_name)), base)


def executed_loader(entry: dict, loader_id: str) -> bool:
    """Whether the loader node ran in this prompt (it is listed in execution_cached when it did not)."""
    cached = [data["nodes"] for event, data in entry["status"]["messages"] if event == "execution_cached"]
    return loader_id not in (cached[0] if cached else [])


def test_loader_reexecutes_when_its_yaml_changes(server):
    """fingerprint_inputs keys the loader on the checkpoint and the YAML beside it: the same prompt is served from
    ComfyUI's cache until a YAML is added, and again until it is edited; each change re-runs the loader, whose
    report then names the YAML's value."""
    url, ckpt_name, base = server
    prompt = {"1": {"class_type": "VPredZTSNR_CheckpointLoader", "inputs": {"ckpt_name": ckpt_name}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 3]}}}
    yaml_path = (base / "models" / "checkpoints" / ckpt_name).with_suffix(".yaml")
    yaml_path.unlink(missing_ok=True)

    def report(entry) -> str:
        return "".join(entry["outputs"]["2"]["text"])

    first = queue(url, prompt)
    assert "linear_end" not in report(first).split("inspection:")[0]
    assert not executed_loader(queue(url, prompt), "1")
    yaml_path.write_text("model:\n  params:\n    parameterization: v\n    linear_end: 0.024\n")
    added = queue(url, prompt)
    assert executed_loader(added, "1") and "linear_end: 0.024 (from sidecar_yaml" in report(added)
    assert not executed_loader(queue(url, prompt), "1")
    yaml_path.write_text("model:\n  params:\n    parameterization: v\n    linear_end: 0.0125\n")
    stat = yaml_path.stat()
    os.utime(yaml_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    edited = queue(url, prompt)
    assert executed_loader(edited, "1") and "linear_end: 0.0125 (from sidecar_yaml" in report(edited)
    yaml_path.unlink()
