"""Shared helpers of the webui host tests (``WEBUI_PATH``); imported by conftest.py and the test modules."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import pathlib
import sys
import types

import pytest

WEBUI_PATH = os.environ.get("WEBUI_PATH")
ROOT = pathlib.Path(__file__).resolve().parents[2]
EXTENSION_DIRNAME = "vpred-ztsnr-toolkit"
PACKAGE_NAME = "vpred_ztsnr_toolkit"  # scripts/vpred_ztsnr.py registers the repository under this name
# Shared by the host tests: the ZTSNR / SD sigma_max the hosts report, and the accordion's argument tuples.
ZTSNR_SIGMA_MAX = 4518.76
HOST_SIGMA_MAX = 14.6146
SIGMA_MAX_RTOL = 1e-3
PHI = 0.7
# enabled, prediction, ztsnr, beta_end, trailing, phi, space, sigma_high, sigma_low, uncond
ENABLED_ARGS = (True, "auto", "auto", 0, True, PHI, "v", 0, 0, "zero")
FORCED_ZTSNR_ARGS = (True, "auto", "on", 0, True, PHI, "v", 0, 0, "zero")
CPU_ARGS = [
    "--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--no-download-sd-model", "--skip-install",
    "--always-cpu",  # reForge / Forge backend
]
TINY_UNET = {"model_channels": 32, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [],
             "num_heads": 1, "num_head_channels": -1}
TINY_VAE = {"ch": 32, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": []}


def host_import(name: str):
    """Import a host module or skip the test with the reason."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any host import failure means "not importable here"
        pytest.skip(f"{name} not importable without launching the webui: {type(exc).__name__}: {exc}")


def initialize_forge_backend() -> None:
    """reForge / Forge: ``webui.py`` parses the backend arguments (``--always-cpu``) before anything else."""
    if not is_forge_family():
        return
    forge_init = host_import("modules_forge.initialization")
    if not getattr(forge_init, "vpred_test_initialized", False):
        forge_init.initialize_forge()
        forge_init.vpred_test_initialized = True


def is_forge_family() -> bool:
    """reForge / Forge trees ship ``modules_forge`` (their backend is initialised before anything else)."""
    return importlib.util.find_spec("modules_forge") is not None


def initialized_shared():
    """``modules.shared`` with ``opts`` / ``state`` set up as ``webui.py`` does: A1111 ``shared_init``; reForge /
    Forge ``initialize_forge()`` then ``initialize.imports()`` (imported in any other order, their ``sd_models``
    hits a circular import through ``sd_samplers_common``)."""
    initialize_forge_backend()
    shared = host_import("modules.shared")
    if getattr(shared, "opts", None) is None:
        if is_forge_family():
            host_import("modules.initialize").imports()
        else:
            host_import("modules.shared_init").initialize()
    return shared


def load_vpred_script():
    """(modules.scripts, ScriptClassData) after ``extensions.list_extensions`` + ``scripts.load_scripts``, as
    ``webui.py``'s initialize does; asserts the webui's own loader found the extension's Script class."""
    initialized_shared()
    extensions = host_import("modules.extensions")
    scripts = host_import("modules.scripts")
    extensions.list_extensions()
    assert EXTENSION_DIRNAME in [ext.name for ext in extensions.active()]
    scripts.load_scripts()
    ours = [d for d in scripts.scripts_data if d.script_class.__name__ == "VPredScript"]
    assert len(ours) == 1, "the webui's loader did not find the extension's Script class"
    return scripts, ours[0]


def tiny_ldm_model(tmp_path, name: str = "tiny_v", markers=("v_pred", "ztsnr")):
    """A tiny ldm LatentDiffusion from the crafted YAML of a v-pred checkpoint, set as ``shared.sd_model`` with the
    attributes ``sd_models.load_model`` adds (A1111 layout)."""
    ckpt_factory = pytest.importorskip("ckpt_factory")
    omegaconf = host_import("omegaconf")
    ldm_util = host_import("ldm.util")
    sd_models = host_import("modules.sd_models")
    from vpred_ztsnr_toolkit.a1111_extension.checkpoints import write_yaml_if_needed

    checkpoint = str(tmp_path / f"{name}.safetensors")
    ckpt_factory.build_checkpoint(checkpoint, "sd1", markers=markers)
    config = omegaconf.OmegaConf.load(write_yaml_if_needed(checkpoint))
    config.model.params.unet_config.params.update(TINY_UNET)
    config.model.params.first_stage_config.params.ddconfig.update(TINY_VAE)
    config.model.params.cond_stage_config = "__is_unconditional__"
    model = ldm_util.instantiate_from_config(config.model)
    model.alphas_cumprod_original = model.alphas_cumprod
    model.is_sdxl, model.is_sd2, model.is_sd1, model.is_ssd = False, False, True, False  # set by load_model
    model.is_sd3 = model.is_sdxl_inpaint = False  # A1111 1.9+ load_model
    model.sd_checkpoint_info = types.SimpleNamespace(filename=checkpoint)
    sd_models.model_data.set_sd_model(model)
    return model


def pack(name: str):
    """``vpred_ztsnr_toolkit.<name>``: the module objects the webui-loaded Script uses (the package is registered as
    ``scripts/vpred_ztsnr.py`` does when the script loader has not run, e.g. for Forge's backend in a gradio-3 venv)."""
    if PACKAGE_NAME not in sys.modules:
        spec = importlib.machinery.ModuleSpec(PACKAGE_NAME, None, is_package=True)
        spec.submodule_search_locations = [str(ROOT)]
        sys.modules[PACKAGE_NAME] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{PACKAGE_NAME}.{name}")


def script_args(**values) -> tuple:
    """The accordion's values in ``ARG_NAMES`` order (what the webui passes to the Script): defaults + ``values``."""
    ui = pack("a1111_extension.ui")
    unknown = set(values) - set(ui.ARG_NAMES)
    assert not unknown, f"unknown accordion argument(s) {unknown}"
    merged = {**ui.ARG_DEFAULTS, **values}
    return tuple(merged[name] for name in ui.ARG_NAMES)
