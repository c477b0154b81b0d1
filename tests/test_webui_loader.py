"""The webui entry script must not break pytest collection or import outside a webui."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_loader_is_inert_without_webui():
    spec = importlib.util.spec_from_file_location("vpred_ztsnr_loader_test", ROOT / "scripts" / "vpred_ztsnr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.in_webui()
    assert not hasattr(module, "VPredScript")


def test_package_imports_without_host():
    import a1111_extension.logic_cfg  # noqa: F401
    import a1111_extension.state  # noqa: F401

    assert importlib.util.find_spec("modules") is None
