"""The ``<checkpoint>.yaml`` sidecar: locating, reading safely, and the toolkit's own ``vpred_toolkit`` record.

No webui YAML field expresses zero terminal SNR, so generated files carry a top-level ``vpred_toolkit:``
mapping (see ``yaml_configs/README.md``). The webuis only use the ``model`` mapping
(``instantiate_from_config(config.model)``), so the extra top-level key is ignored by them and read back here.
"""

from __future__ import annotations

import os

import yaml

RECORD_KEY = "vpred_toolkit"
RECORD_FORMAT = 1
SIDECAR_SUFFIX = ".yaml"
MAX_YAML_BYTES = 1_000_000
PREDICTION_ALIASES = {
    "eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v", "v-prediction": "v", "vpred": "v",
    "v-zsnr": "v", "v_zsnr": "v",
}
ZTSNR_PREDICTIONS = frozenset({"v-zsnr", "v_zsnr"})
TRUE_STRINGS = frozenset({"true", "1", "yes", "on"})
FALSE_STRINGS = frozenset({"false", "0", "no", "off"})
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader when available (10x faster)


class YamlReadError(ValueError):
    """A YAML file could not be read or is not a mapping."""


def sidecar_yaml_path(checkpoint_path: str | os.PathLike) -> str:
    """``model.safetensors`` -> ``model.yaml`` (the file the webuis look for beside a checkpoint)."""
    return os.path.splitext(os.fspath(checkpoint_path))[0] + SIDECAR_SUFFIX


def load_yaml_mapping(path: str | os.PathLike, max_bytes: int = MAX_YAML_BYTES) -> dict:
    """``yaml.safe_load`` a bounded-size file that must hold a mapping; YamlReadError names file and problem."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise YamlReadError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise YamlReadError(f"{path}: larger than {max_bytes} bytes, not read")
    try:
        doc = yaml.load(data.decode("utf-8"), Loader=_Loader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise YamlReadError(f"{path}: not valid UTF-8 YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise YamlReadError(f"{path}: top level is not a mapping")
    return doc


def read_record(config: dict | str | os.PathLike) -> dict | None:
    """The ``vpred_toolkit`` mapping of a loaded config or YAML path, or None when absent/invalid."""
    if not isinstance(config, dict):
        try:
            config = load_yaml_mapping(config)
        except YamlReadError:
            return None
    record = config.get(RECORD_KEY)
    return record if isinstance(record, dict) else None


def read_ztsnr_from_yaml(config: dict | str | os.PathLike) -> bool | None:
    """ZTSNR flag recorded by this toolkit in a YAML (path or loaded mapping); None when not recorded."""
    record = read_record(config)
    return None if record is None else parse_bool(record.get("ztsnr"))


def parse_bool(value: object) -> bool | None:
    """Lenient bool from YAML/metadata values (``True``, ``"true"``, ``"1"``...); None when not a bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in TRUE_STRINGS:
            return True
        if lowered in FALSE_STRINGS:
            return False
    return None


def parse_prediction(value: object) -> tuple[str, bool | None] | None:
    """``"v-zsnr"`` -> ("v", True); ``"epsilon"`` -> ("eps", None); unknown -> None."""
    if not isinstance(value, str):
        return None
    lowered = value.strip().lower()
    if lowered not in PREDICTION_ALIASES:
        return None
    return PREDICTION_ALIASES[lowered], (True if lowered in ZTSNR_PREDICTIONS else None)
