"""YAML generation: structure against the hosts' own configs (tests/data/host_configs), record, safe writing."""

import json
import os
from pathlib import Path

import pytest
import yaml
from ckpt_factory import build_checkpoint
from omegaconf import OmegaConf

from vpred_core.checkpoints.inspection import inspect_checkpoint, read_record, read_ztsnr_from_yaml
from vpred_core.checkpoints.sidecar_yaml import TEMPLATES, render_yaml, write_yaml_for_checkpoint

HOST_DIR = Path(__file__).parent / "data" / "host_configs"
# template -> (checkpoint family, variant, captured host config it must match)
HOST_MATCH = {
    "sd1_v.yaml": ("sd1", "base", "a1111_v1-inference"),
    "sd1_inpaint_v.yaml": ("sd1", "inpaint", "a1111_v1-inpainting-inference"),
    "sd2_v.yaml": ("sd2", "base", "sd2_v2-inference-v"),
    "sd2_inpaint_v.yaml": ("sd2", "inpaint", "sd2_v2-inpainting-inference"),
    "sdxl_v.yaml": ("sdxl", "base", "a1111dev_sd_xl_v"),
    "sdxl_inpaint_v.yaml": ("sdxl", "inpaint", "a1111_sd_xl_inpaint"),
    "sdxl_refiner_v.yaml": ("sdxl_refiner", "base", "sgm_sd_xl_refiner"),
}
# Training-only host keys we leave out, and the keys we add (all accepted by the host constructors).
HOST_ONLY_OK = ("model.base_learning_rate", "model.params.scheduler_config")
OURS_ONLY_OK = ("model.params.parameterization", "model.params.use_ema",
                "model.params.denoiser_config.params.discretization_config.params")
SGM_SCALING = "sgm.modules.diffusionmodules.denoiser_scaling."
SGM_WEIGHTING = "sgm.modules.diffusionmodules.denoiser_weighting."


def _paths(node, prefix=""):
    out = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out |= {path} | _paths(value, path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, (dict, list)):
                out |= _paths(value, f"{prefix}.{index}")
    return out


def _targets(node, prefix=""):
    out = {}
    if isinstance(node, dict):
        if "target" in node:
            out[prefix] = node["target"]
        for key, value in node.items():
            out.update(_targets(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.update(_targets(value, f"{prefix}.{index}"))
    return out


def _generate(tmp_path, family, variant, markers=("v_pred", "ztsnr"), **kwargs):
    path = build_checkpoint(tmp_path / f"{family}_{variant}.safetensors", family, variant, markers=markers, **kwargs)
    outcome = write_yaml_for_checkpoint(path)
    assert outcome.status == "written", outcome
    return path, Path(outcome.yaml_path)


def test_every_template_has_a_host_reference():
    assert {name for name, _ in TEMPLATES.values()} == set(HOST_MATCH)
    for name in HOST_MATCH.values():
        provenance = json.loads((HOST_DIR / f"{name[2]}.json").read_text())["provenance"]
        assert provenance["repository"] and len(provenance["commit"]) == 40 and provenance["path"].endswith(".yaml")


@pytest.mark.parametrize("template", list(HOST_MATCH))
def test_structure_matches_host_config(tmp_path, template):
    family, variant, host_name = HOST_MATCH[template]
    host = json.loads((HOST_DIR / f"{host_name}.json").read_text())["structure"]
    _, yaml_path = _generate(tmp_path, family, variant)
    ours = yaml.safe_load(yaml_path.read_text())
    paths = _paths({"model": ours["model"]})
    host_paths = set(host["key_paths"])
    assert {p for p in host_paths - paths if not p.startswith(HOST_ONLY_OK)} == set()
    assert {p for p in paths - host_paths if not p.startswith(OURS_ONLY_OK)} == set()
    ours_targets, host_targets = _targets({"model": ours["model"]}), dict(host["targets"])
    for kind in ("scaling_config", "weighting_config"):
        key = f"model.params.denoiser_config.params.{kind}"
        if key in host_targets:
            host_targets[key] = ours_targets[key]
    assert ours_targets == {k: v for k, v in host_targets.items() if not k.startswith(HOST_ONLY_OK)}
    unet = ours["model"]["params"].get("unet_config") or ours["model"]["params"]["network_config"]
    assert (unet["params"]["in_channels"], unet["params"]["context_dim"]) == (host["in_channels"], host["context_dim"])


@pytest.mark.parametrize("template", list(HOST_MATCH))
def test_v_prediction_and_schedule_fields(tmp_path, template):
    family, variant, _ = HOST_MATCH[template]
    _, yaml_path = _generate(tmp_path, family, variant)
    config = OmegaConf.load(yaml_path)  # what A1111 / reForge do
    params = config.model.params
    if "denoiser_config" in params:
        denoiser = params.denoiser_config.params
        assert denoiser.scaling_config.target == SGM_SCALING + "VScaling"
        assert denoiser.weighting_config.target == SGM_WEIGHTING + "VWeighting"
        assert denoiser.discretization_config.params.linear_end == pytest.approx(0.012)
    else:
        assert params.parameterization == "v" and params.linear_start == pytest.approx(0.00085)
    OmegaConf.to_container(config, resolve=True)
    assert read_ztsnr_from_yaml(yaml_path) is True and read_ztsnr_from_yaml(OmegaConf.to_container(config)) is True


def test_forge_reader_sees_v(tmp_path):
    """Forge reads the YAML with yaml.safe_load and checks parameterization or the scaling target."""
    for family in ("sd1", "sdxl"):
        _, yaml_path = _generate(tmp_path, family, "base")
        params = yaml.safe_load(yaml_path.read_text())["model"]["params"]
        found = params.get("parameterization") or params["denoiser_config"]["params"]["scaling_config"]["target"]
        assert found == "v" or found.endswith(".VScaling")


def test_record_contents_and_custom_betas(tmp_path):
    path = build_checkpoint(tmp_path / "m.safetensors", "sdxl", metadata={"modelspec.prediction_type": "v"})
    override = tmp_path / "o.yaml"
    override.write_text("linear_end: 0.024\nztsnr: true\n")
    assert write_yaml_for_checkpoint(path, override_path=override).status == "written"
    record = read_record(str(tmp_path / "m.yaml"))
    assert record["ztsnr"] is True and record["linear_end"] == 0.024 and record["architecture"] == "sdxl"
    assert record["sources"]["prediction"].startswith("modelspec.prediction_type")
    assert record["template"] == "sdxl_v.yaml" and record["format"] == 1
    assert inspect_checkpoint(path).linear_end == 0.024, "the written YAML is read back as a source"


def test_eps_checkpoint_gets_eps_config_unless_only_vpred(tmp_path):
    path = build_checkpoint(tmp_path / "e.safetensors", "sdxl", metadata={"ss_zero_terminal_snr": "false"})
    assert write_yaml_for_checkpoint(path, only_vpred=True).status == "skipped"
    assert write_yaml_for_checkpoint(path).status == "written"
    denoiser = yaml.safe_load((tmp_path / "e.yaml").read_text())["model"]["params"]["denoiser_config"]["params"]
    assert denoiser["scaling_config"]["target"].endswith(".EpsScaling")
    path = build_checkpoint(tmp_path / "e1.safetensors", "sd1")
    write_yaml_for_checkpoint(path)
    assert "parameterization" not in yaml.safe_load((tmp_path / "e1.yaml").read_text())["model"]["params"]


def test_non_default_beta_schedule(tmp_path):
    override = tmp_path / "o.yaml"
    override.write_text("beta_schedule: cosine\nprediction: v\n")
    path = build_checkpoint(tmp_path / "c.safetensors", "sd1")
    write_yaml_for_checkpoint(path, override_path=override)
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["model"]["params"]["beta_schedule"] == "cosine"
    path = build_checkpoint(tmp_path / "x.safetensors", "sdxl")
    outcome = write_yaml_for_checkpoint(path, override_path=override)
    assert outcome.status == "skipped" and "cannot be expressed" in outcome.reason


@pytest.mark.parametrize("kwargs, reason", [
    (dict(family="sd1", variant="instruct_pix2pix"), "eps/x0"),
    (dict(family="sdxl", unet_only=True), "UNet-only"),
    (dict(family="sd2"), "prediction type unknown"),
])
def test_skipped_with_reason(tmp_path, kwargs, reason):
    path = build_checkpoint(tmp_path / "s.safetensors", **kwargs)
    outcome = write_yaml_for_checkpoint(path)
    assert outcome.status == "skipped" and reason in outcome.reason and not (tmp_path / "s.yaml").exists()


def test_never_overwrites_without_force_and_keeps_backup(tmp_path):
    path = build_checkpoint(tmp_path / "m.safetensors", "sd1", markers=("v_pred",))
    (tmp_path / "m.yaml").write_text("mine: true\n")
    outcome = write_yaml_for_checkpoint(path)
    assert outcome.status == "exists" and (tmp_path / "m.yaml").read_text() == "mine: true\n"
    assert write_yaml_for_checkpoint(path, force=True, dry_run=True).status == "would_write"
    assert (tmp_path / "m.yaml").read_text() == "mine: true\n"
    outcome = write_yaml_for_checkpoint(path, force=True)
    assert outcome.status == "written" and Path(outcome.backup_path).read_text() == "mine: true\n"
    assert write_yaml_for_checkpoint(path, force=True).backup_path.endswith(".yaml.bak1")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "m.yaml", "m.yaml.bak", "m.yaml.bak1"]


def test_dry_run_writes_nothing(tmp_path):
    path = build_checkpoint(tmp_path / "m.safetensors", "sd1", markers=("v_pred",))
    assert write_yaml_for_checkpoint(path, dry_run=True).status == "would_write"
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_write_error_is_reported_per_file(tmp_path):
    path = build_checkpoint(tmp_path / "m.safetensors", "sd1", markers=("v_pred",))
    (tmp_path / "m.yaml").mkdir()  # a folder where the YAML should go: replacing it must fail cleanly
    outcome = write_yaml_for_checkpoint(path, force=True)
    assert outcome.status == "error" and "m.yaml" in outcome.reason


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = build_checkpoint(folder / "m.safetensors", "sd1", markers=("v_pred",))
    folder.chmod(0o555)
    try:
        outcome = write_yaml_for_checkpoint(path)
    finally:
        folder.chmod(0o755)
    assert outcome.status == "error" and "Permission denied" in outcome.reason


def test_hostile_names_do_not_break_the_yaml(tmp_path):
    path = build_checkpoint(tmp_path / "a\nb ${oc.env:HOME}.safetensors", "sd1",
                            metadata={"modelspec.prediction_type": "v", "ss_zero_terminal_snr": "true"})
    outcome = write_yaml_for_checkpoint(path)
    config = OmegaConf.load(outcome.yaml_path)
    container = OmegaConf.to_container(config, resolve=True)
    assert "${" not in container["vpred_toolkit"]["checkpoint"] and container["vpred_toolkit"]["ztsnr"] is True


def test_render_is_deterministic(tmp_path):
    path = build_checkpoint(tmp_path / "m.safetensors", "sdxl", markers=("v_pred",))
    result = inspect_checkpoint(path)
    assert render_yaml(result) == render_yaml(result)


def test_unstated_ztsnr_is_recorded_as_null_and_stays_unknown(tmp_path):
    """A YAML we wrote must not turn "no source states ZTSNR" into "ZTSNR off" when read back as a source."""
    ckpt = build_checkpoint(tmp_path / "plain_v.safetensors", "sdxl", markers=("v_pred",))
    assert write_yaml_for_checkpoint(ckpt).status == "written"
    yaml_path = ckpt.with_suffix(".yaml")
    assert read_record(str(yaml_path))["ztsnr"] is None
    assert read_ztsnr_from_yaml(str(yaml_path)) is None
    again = inspect_checkpoint(ckpt)
    assert again.sources["ztsnr"].source == "default" and "ztsnr" not in again.stated_fields()


def test_stated_ztsnr_round_trips_through_the_record(tmp_path):
    ckpt = build_checkpoint(tmp_path / "z.safetensors", "sd1", metadata={"modelspec.prediction_type": "v-zsnr"})
    write_yaml_for_checkpoint(ckpt)
    assert read_ztsnr_from_yaml(str(ckpt.with_suffix(".yaml"))) is True
