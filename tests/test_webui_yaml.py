"""YAML auto-generation glue (host-free part): writes once for a v-pred checkpoint, never overwrites."""

import os

import pytest
import yaml

from a1111_extension import model_files
from vpred_core.checkpoints.inspection import sidecar_yaml_path
from vpred_core.settings import Detected, ModelSamplingSettings, resolve_model_sampling

ckpt_factory = pytest.importorskip("ckpt_factory")
FAMILY = "sd1"


def test_write_once_and_detect(tmp_path):
    path = str(tmp_path / "model.safetensors")
    ckpt_factory.build_checkpoint(path, FAMILY, markers=("v_pred", "ztsnr"))
    detected = model_files.detect(path)
    assert detected.prediction == "v" and detected.ztsnr is True
    written = model_files.write_yaml_if_needed(path)
    assert written == sidecar_yaml_path(path) and os.path.isfile(written)
    with open(written, encoding="utf8") as handle:
        config = yaml.safe_load(handle)
    assert config["model"]["params"]["parameterization"] == "v"
    assert model_files.write_yaml_if_needed(path) is None
    plan = resolve_model_sampling(ModelSamplingSettings(), detected, Detected(prediction="eps", ztsnr=False))
    assert plan.prediction == "v" and plan.ztsnr
