"""inspect_checkpoint: every source, the precedence between them, conflicts, and files it must refuse."""

import json
import tracemalloc

import pytest
from ckpt_factory import build_checkpoint, write_safetensors

from vpred_core.checkpoints.inspection import MAX_YAML_BYTES, SOURCE_PRECEDENCE, inspect_checkpoint, sources_state
from vpred_core.sampling.schedules import SD_LINEAR_END, SD_LINEAR_START


def _ckpt(tmp_path, family="sdxl", name="m", **kwargs):
    return build_checkpoint(tmp_path / f"{name}.safetensors", family, **kwargs)


def test_plain_sdxl_defaults(tmp_path):
    r = inspect_checkpoint(_ckpt(tmp_path))
    assert (r.ok, r.prediction, r.ztsnr, r.beta_schedule) == (True, "eps", False, "scaled_linear")
    assert (r.linear_start, r.linear_end) == (SD_LINEAR_START, SD_LINEAR_END)
    assert r.sources["prediction"].source == "default" and r.conflicts == [] and r.warnings == []


def test_marker_keys(tmp_path):
    r = inspect_checkpoint(_ckpt(tmp_path, markers=("v_pred", "ztsnr")))
    assert r.is_vpred and r.ztsnr and r.sources["ztsnr"].source == "state_dict_keys"


@pytest.mark.parametrize("value, prediction, ztsnr", [
    ("epsilon", "eps", False), ("v", "v", False), ("v-zsnr", "v", True), ("V_Prediction", "v", False)])
def test_modelspec_prediction_type(tmp_path, value, prediction, ztsnr):
    r = inspect_checkpoint(_ckpt(tmp_path, "sd1", metadata={"modelspec.prediction_type": value}))
    assert (r.prediction, r.ztsnr) == (prediction, ztsnr)
    assert r.sources["prediction"].source == "modelspec.prediction_type"


def test_kohya_and_comfy_metadata(tmp_path):
    meta = {"ss_v_parameterization": "True", "ss_zero_terminal_snr": "true", "ss_v2": "False"}
    r = inspect_checkpoint(_ckpt(tmp_path, "sd1", metadata=meta))
    assert (r.prediction, r.ztsnr, r.sources["ztsnr"].source) == ("v", True, "kohya_metadata")
    r = inspect_checkpoint(_ckpt(tmp_path, "sd1", name="c", metadata={"modelspec.predict_key": "v"}))
    assert (r.prediction, r.sources["prediction"].source) == ("v", "modelspec.predict_key")


def test_unparseable_metadata_is_a_warning(tmp_path):
    meta = {"modelspec.prediction_type": "flow", "ss_zero_terminal_snr": "maybe"}
    r = inspect_checkpoint(_ckpt(tmp_path, metadata=meta))
    assert r.ok and r.prediction == "eps" and len(r.warnings) == 2 and "unknown prediction type" in r.warnings[0]


def test_conflict_reported_and_precedence_applied(tmp_path):
    meta = {"modelspec.predict_key": "epsilon", "ss_v_parameterization": "false", "modelspec.prediction_type": "v"}
    r = inspect_checkpoint(_ckpt(tmp_path, markers=("v_pred",), metadata=meta))
    assert r.prediction == "v" and r.sources["prediction"].source == "state_dict_keys"
    ignored = {c["ignored_source"] for c in r.conflicts}
    assert ignored == {"kohya_metadata", "modelspec.predict_key"}
    assert all("using 'v'" in w for w in r.warnings)


def test_sidecar_yaml_ldm(tmp_path):
    path = _ckpt(tmp_path, "sd2")
    (tmp_path / "m.yaml").write_text("model:\n  params:\n    parameterization: v\n    linear_start: 0.001\n"
                                     "    linear_end: 0.02\n    beta_schedule: cosine\n    unet_config: {}\n")
    r = inspect_checkpoint(path)
    assert (r.prediction, r.linear_start, r.linear_end, r.beta_schedule) == ("v", 0.001, 0.02, "cosine")
    assert r.sidecar_yaml.endswith("m.yaml") and r.sources["linear_end"].source == "sidecar_yaml"
    assert inspect_checkpoint(path, use_sidecar_yaml=False).prediction == "unknown"


def test_sidecar_yaml_sgm_and_record(tmp_path):
    path = _ckpt(tmp_path, metadata={"modelspec.predict_key": "epsilon"})
    (tmp_path / "m.yaml").write_text(
        "model:\n  params:\n    denoiser_config:\n      params:\n        scaling_config:\n"
        "          target: sgm.modules.diffusionmodules.denoiser_scaling.VScaling\n"
        "vpred_toolkit:\n  ztsnr: true\n")
    r = inspect_checkpoint(path)
    assert r.prediction == "eps", "metadata outranks the sidecar YAML"
    assert r.ztsnr and r.sources["ztsnr"].source == "sidecar_yaml"
    assert r.conflicts[0]["ignored_source"] == "sidecar_yaml"


def test_broken_sidecar_yaml_is_a_warning(tmp_path):
    path = _ckpt(tmp_path)
    (tmp_path / "m.yaml").write_bytes(b"model: [unclosed\n")
    r = inspect_checkpoint(path)
    assert r.ok and any("sidecar YAML ignored" in w for w in r.warnings)


@pytest.mark.parametrize("content, warning", [
    (b"model:\n  params:\n    linear_start: " + b"9" * 400 + b"\n", None),  # an int no float can hold: ignored
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "sidecar YAML ignored"),
    (b"a: [" + b"[]," * (MAX_YAML_BYTES // 3) + b"]\n", "MAX_YAML_BYTES"),
    (b"model: \xff\n", "not valid UTF-8"),
])
def test_hostile_sidecar_yaml_is_at_most_a_warning(tmp_path, content, warning):
    path = _ckpt(tmp_path)
    (tmp_path / "m.yaml").write_bytes(content)
    r = inspect_checkpoint(path)
    assert r.ok and r.linear_start == SD_LINEAR_START
    assert warning is None or any(warning in w for w in r.warnings), r.warnings


def test_worst_sidecar_yaml_within_the_limit_costs_a_fraction_of_the_budget(tmp_path):
    """A flow list of empty lists, the most expensive YAML per byte, right at MAX_YAML_BYTES: <= 16 MiB (a quarter
    of the 64 MiB per inspected file, the rest being the checkpoint's)."""
    path = _ckpt(tmp_path, "sd1")
    (tmp_path / "m.yaml").write_bytes(b"a: [" + b"[]," * ((MAX_YAML_BYTES - 8) // 3) + b"]\n")
    tracemalloc.start()
    result = inspect_checkpoint(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.ok and result.sidecar_yaml and peak <= 16 * 2**20


def test_override_wins_over_everything(tmp_path):
    path = _ckpt(tmp_path, markers=("v_pred", "ztsnr"), metadata={"modelspec.prediction_type": "v-zsnr"})
    override = tmp_path / "o.json"
    override.write_text(json.dumps({"prediction": "eps", "ztsnr": False, "linear_end": 0.024}))
    r = inspect_checkpoint(path, override_path=override)
    assert (r.prediction, r.ztsnr, r.linear_end) == ("eps", False, 0.024)
    assert {r.sources[f].source for f in ("prediction", "ztsnr", "linear_end")} == {"override"}
    assert len(r.conflicts) == 4


@pytest.mark.parametrize("content, fragment", [
    ("prediction: x0\n", "prediction must be"), ("ztsnr: perhaps\n", "ztsnr must be"),
    ("linear_end: 2\n", "number in (0, 1)"), ("colour: red\n", "unknown override keys"),
    ("- a\n", "not a mapping"), ("beta_schedule: karras\n", "beta_schedule must be"),
    ("linear_end: " + "9" * 400 + "\n", "number in (0, 1)"),
])
def test_bad_override_raises_with_file_name(tmp_path, content, fragment):
    override = tmp_path / "bad.yaml"
    override.write_text(content)
    with pytest.raises(ValueError, match="bad.yaml") as info:
        inspect_checkpoint(_ckpt(tmp_path), override_path=override)
    assert fragment in str(info.value)


def test_sd2_prediction_unknown_without_sources(tmp_path):
    r = inspect_checkpoint(_ckpt(tmp_path, "sd2"))
    assert r.prediction == "unknown" and any("768-v" in w for w in r.warnings)


def test_ztsnr_with_eps_warns(tmp_path):
    r = inspect_checkpoint(_ckpt(tmp_path, markers=("ztsnr",)))
    assert r.ztsnr and r.prediction == "eps" and any("cannot be sampled" in w for w in r.warnings)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".PTH"])
def test_pickles_are_never_opened(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"\x80\x04cos\nsystem\n(S'echo unsafe'\ntR.")  # would run a command if unpickled
    r = inspect_checkpoint(path)
    assert r.status == "unsupported" and "cannot inspect safely" in r.error and r.file_format == "pickle"


def test_corrupt_and_missing_files_are_results(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 20)
    for path in (bad, tmp_path / "missing.safetensors"):
        r = inspect_checkpoint(path)
        assert r.status == "error" and str(path) in r.error


def test_unknown_architecture(tmp_path):
    r = inspect_checkpoint(write_safetensors(tmp_path / "lora.safetensors", {"lora.alpha": ("F32", [1])}))
    assert r.ok and r.architecture.id == "unknown" and r.prediction == "unknown"
    assert any("architecture unknown" in w for w in r.warnings)


def test_json_round_trip(tmp_path):
    r = inspect_checkpoint(_ckpt(tmp_path, markers=("v_pred",)))
    data = json.loads(r.to_json())
    assert data["prediction"] == "v" and data["architecture"]["id"] == "sdxl"
    assert data["sources"]["prediction"] == {"source": "state_dict_keys", "detail": "tensor 'v_pred' present"}


def test_precedence_order_is_documented():
    assert SOURCE_PRECEDENCE[0] == "override" and SOURCE_PRECEDENCE[-1] == "default"


def test_stated_fields_leave_out_defaults(tmp_path):
    build = build_checkpoint
    stated = inspect_checkpoint(build(tmp_path / "a.safetensors", "sd1", markers=("v_pred",))).stated_fields()
    assert stated == {"prediction": "v"}
    assert inspect_checkpoint(build(tmp_path / "b.safetensors", "sd2")).stated_fields() == {}
    both = inspect_checkpoint(build(tmp_path / "c.safetensors", "sdxl", markers=("v_pred", "ztsnr"))).stated_fields()
    assert both == {"prediction": "v", "ztsnr": True}
    assert inspect_checkpoint(tmp_path / "missing.safetensors").stated_fields() == {}


def test_sources_state_changes_with_the_yaml_beside_the_checkpoint(tmp_path):
    """The key both hosts cache inspection and probe results under: a YAML added, edited or removed changes it."""
    import os

    ckpt = tmp_path / "m.safetensors"
    build_checkpoint(str(ckpt), "sd1")
    alone = sources_state(ckpt)
    assert alone[0] == (os.stat(ckpt).st_size, os.stat(ckpt).st_mtime_ns) and alone[1] is None
    yaml_path = tmp_path / "m.yaml"
    yaml_path.write_text("model: {}\n")
    added = sources_state(ckpt)
    assert added[1] is not None and added != alone
    yaml_path.write_text("model: {params: {}}\n")
    assert sources_state(ckpt) != added
    yaml_path.unlink()
    assert sources_state(ckpt) == alone
    assert sources_state(tmp_path / "missing.safetensors") == (None, None)
