"""``python -m vpred_core stamp``: every flag, the printed diff and hashes, exit codes, and ``inspect`` afterwards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckpt_factory import build_checkpoint
from stamp_support import data_sha256, file_sha256, fill_random, marker_names

from vpred_core.cli.main import EXIT_ERRORS, EXIT_NOTHING_TO_DO, EXIT_OK, main

REPO = Path(__file__).resolve().parent.parent
USAGE_ERROR = 2
V_ON = ("--prediction", "v", "--ztsnr", "on")
EPS_OFF = ("--prediction", "eps", "--ztsnr", "off")


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return fill_random(build_checkpoint(tmp_path / "m.safetensors", "sdxl", unet_only=True))


def run(capsys, *argv):
    code = main(["stamp", *map(str, argv)])
    return code, capsys.readouterr().out


def inspect_json(capsys, path) -> dict:
    assert main(["inspect", "--json", str(path)]) == EXIT_OK
    return json.loads(capsys.readouterr().out)["results"][0]


def printed_hashes(out: str) -> tuple[str, str]:
    before = next(line for line in out.splitlines() if "sha256 before:" in line).split("before:")[1].split()[0]
    after = next(line for line in out.splitlines() if "sha256 after:" in line).split("after:")[1].split()[0]
    return before, after


def test_stamp_then_inspect_reports_the_new_state(ckpt, capsys):
    data = data_sha256(ckpt)
    code, out = run(capsys, ckpt, *V_ON)
    assert code == EXIT_OK and out.startswith(f"stamped      {ckpt} (file rewritten")
    assert "+ tensor v_pred: F32 [0]" in out and "+ __metadata__ modelspec.prediction_type: 'v-zsnr'" in out
    assert printed_hashes(out) == (data, data) and "(copy read back, equal byte for byte)" in out
    assert "whole-file sha256" in out and "AutoV2" in out
    result = inspect_json(capsys, ckpt)
    assert (result["prediction"], result["ztsnr"], result["conflicts"]) == ("v", True, [])
    assert result["sources"]["prediction"]["source"] == "state_dict_keys"


def test_second_run_is_in_place_then_nothing_to_do(ckpt, capsys):
    run(capsys, ckpt, *V_ON)
    code, out = run(capsys, ckpt, *EPS_OFF)
    assert code == EXIT_OK and "(in place: only the" in out and "- tensor ztsnr: F32 [0]" in out
    assert inspect_json(capsys, ckpt)["prediction"] == "eps"
    code, out = run(capsys, ckpt, *EPS_OFF)
    assert code == EXIT_NOTHING_TO_DO and out.startswith("unchanged") and "whole-file" not in out


def test_ztsnr_off_keeps_v(ckpt, capsys):
    code, _ = run(capsys, ckpt, "--prediction", "v", "--ztsnr", "off")
    assert code == EXIT_OK and marker_names(ckpt) == {"v_pred"}
    result = inspect_json(capsys, ckpt)
    assert (result["prediction"], result["ztsnr"]) == ("v", False)


def test_dry_run_prints_the_diff_and_writes_nothing(ckpt, capsys):
    before = file_sha256(ckpt)
    code, out = run(capsys, ckpt, *V_ON, "--dry-run")
    assert code == EXIT_OK and out.startswith("would stamp")
    assert "+ tensor ztsnr: F32 [0]" in out and "sha256" not in out
    assert file_sha256(ckpt) == before and os.listdir(ckpt.parent) == ["m.safetensors"]


def test_beta_end(ckpt, capsys):
    code, out = run(capsys, ckpt, *V_ON, "--beta-end", "0.024")
    assert code == EXIT_OK and "+ __metadata__ vpred_toolkit.linear_end: '0.024'" in out
    assert inspect_json(capsys, ckpt)["linear_end"] == 0.024


def test_backup(ckpt, capsys):
    original = file_sha256(ckpt)
    code, out = run(capsys, ckpt, *V_ON, "--backup")
    assert code == EXIT_OK and f"backup: {ckpt}.bak" in out
    assert file_sha256(f"{ckpt}.bak") == original


def test_out_writes_a_new_file_and_never_overwrites(ckpt, capsys, tmp_path):
    original, out_path = file_sha256(ckpt), tmp_path / "stamped.safetensors"
    code, out = run(capsys, ckpt, *V_ON, "--out", out_path)
    assert code == EXIT_OK and f"new file {out_path}" in out
    assert file_sha256(ckpt) == original and marker_names(out_path) == {"v_pred", "ztsnr"}
    code, out = run(capsys, ckpt, *EPS_OFF, "--out", out_path)
    assert code == EXIT_ERRORS and f"error: {out_path}: already exists" in out
    assert marker_names(out_path) == {"v_pred", "ztsnr"}


@pytest.mark.parametrize("argv, message", [
    (("--prediction", "eps", "--ztsnr", "on"), "ZTSNR needs v-prediction"),
    ((*V_ON, "--beta-end", "2"), "beta_end must be in"),
    ((*V_ON, "--out", "x.safetensors", "--backup"), "--backup does nothing with --out"),
    (("--prediction", "v"), "the following arguments are required: --ztsnr"),
    (("--prediction", "x0", "--ztsnr", "on"), "invalid choice"),
])
def test_usage_errors(ckpt, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(["stamp", str(ckpt), *argv])
    assert stop.value.code == USAGE_ERROR and message in capsys.readouterr().err


def test_out_takes_one_path(ckpt, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["stamp", str(ckpt), str(ckpt), *V_ON, "--out", "x.safetensors"])
    assert stop.value.code == USAGE_ERROR and "--out takes exactly one PATH" in capsys.readouterr().err


def test_errors_name_the_file_and_do_not_stop_the_run(ckpt, capsys, tmp_path):
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"PK\x03\x04")
    code, out = run(capsys, pickle, tmp_path / "missing.safetensors", ckpt, *V_ON)
    assert code == EXIT_ERRORS
    assert f"error: {pickle}: pickle checkpoints are never stamped" in out and "convert it to .safetensors" in out
    assert f"error: {tmp_path / 'missing.safetensors'}: cannot read file" in out
    assert marker_names(ckpt) == {"v_pred", "ztsnr"}, "the good file after the bad ones is still stamped"


def test_contradicting_sidecar_yaml_is_reported(tmp_path, capsys):
    ckpt = build_checkpoint(tmp_path / "m.safetensors", "sdxl")  # a full checkpoint: write-yaml skips UNet-only files
    assert main(["write-yaml", "--override", str(_override(tmp_path)), str(ckpt)]) == EXIT_OK
    capsys.readouterr()
    code, out = run(capsys, ckpt, *EPS_OFF)
    assert code == EXIT_OK and "m.yaml states prediction v and the webuis use it" in out and "write-yaml --force" in out


def _override(folder: Path) -> Path:
    override = folder / "override.json"
    override.write_text('{"prediction": "v"}')
    return override


def test_sd1_v_warns_that_hosts_need_the_yaml(tmp_path, capsys):
    path = build_checkpoint(tmp_path / "sd1.safetensors", "sd1", unet_only=True)
    code, out = run(capsys, path, *V_ON, "--dry-run")
    assert code == EXIT_OK and "warning: sd1 checkpoint: the hosts read v_pred for SDXL base only" in out


TORCH_FREE_SCRIPT = """
import runpy, sys
sys.argv = ["vpred_core", "stamp", sys.argv[1], "--prediction", "v", "--ztsnr", "on"]
try:
    runpy.run_module("vpred_core", run_name="__main__")
except SystemExit as stop:
    assert stop.code == 0, stop.code
assert "torch" not in sys.modules, "torch was imported"
assert "yaml" not in sys.modules, "yaml was imported"
"""


def test_module_entry_point_stays_torch_free(ckpt):
    """``stamp`` must not import torch (it would cost ~200 MB of RSS); checked in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE_SCRIPT, str(ckpt)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert marker_names(ckpt) == {"v_pred", "ztsnr"}
